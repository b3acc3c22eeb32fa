"""The CLI boundary's one line: a failure while stopping after a user error names the first one first."""

from __future__ import annotations

import io

from bsft_jax.errors import UserError, first_failure, report


class _SaveFailed(UserError):
    pass


class _UploadFailed(UserError):
    pass


def _second_failure_while_stopping() -> _UploadFailed:
    try:
        try:
            raise ValueError("RESOURCE_EXHAUSTED: no space")
        except ValueError as e:
            raise _SaveFailed("saving step 4 failed; step 2 is intact") from e
    except _SaveFailed:
        try:
            try:
                raise ConnectionError("503")
            except ConnectionError as e:
                raise _UploadFailed("upload metrics.jsonl failed") from e
        except _UploadFailed as late:
            return late


def test_the_first_failure_leads_the_line():
    out = io.StringIO()
    assert report(_second_failure_while_stopping(), out) == 2
    assert out.getvalue() == ("error: saving step 4 failed; step 2 is intact "
                              "(then, while stopping: upload metrics.jsonl failed)\n")


def test_a_translated_or_replaced_error_is_reported_alone():
    try:
        try:
            raise _SaveFailed("raw")
        except _SaveFailed as e:
            raise _UploadFailed("translated") from e
    except _UploadFailed as e:
        assert first_failure(e) is None
    try:
        try:
            raise _SaveFailed("raw")
        except _SaveFailed:
            raise _UploadFailed("replaced") from None
    except _UploadFailed as e:
        assert first_failure(e) is None
    out = io.StringIO()
    report(_UploadFailed("plain\nsecond line"), out)
    assert out.getvalue() == "error: plain; second line\n"
