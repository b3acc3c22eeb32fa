"""The ml_collections config resolved once, at the entry points, into typed pieces that validate themselves.

Each piece is a frozen dataclass for one block of the config; its ``__post_init__`` checks its own
fields and raises :class:`ConfigError` naming the field (``config.optimizer.b1: ...``). Functions take
the piece they use (the optimizer its :class:`OptimizerSettings`, the data pipeline a
:class:`DataSettings` and the :class:`~bsft_jax.behavior.spec.BehaviorSpec`), never the whole config.
:func:`bsft_jax.setup.config.resolve` builds them once per command and adds what spans blocks: the
cross-field rules, the file checks, the run directory and the mesh resolved for the run's devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bsft_jax.behavior import taxonomy
from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.errors import UserError
from bsft_jax.models.config import ATTENTION_IMPLS, REMAT_MODES, canonical_dtype, cudnn_attention_fits
from bsft_jax.models.lora_config import TARGETS as LORA_TARGETS
from bsft_jax.models.lora_config import LoraConfig

# bsft_jax.train.chunked_loss.LOSS_IMPLS, repeated so this module stays free of JAX (a test checks both agree).
LOSS_IMPLS = ("full", "chunked")
MODEL_SOURCES = ("hf", "scratch")
DIST_INIT = ("auto", "always", "never")
DATA_SOURCES = ("demo", "jsonl", "tfds", "synthetic")
# bsft_jax.data.balance.BALANCE_MODES, repeated so this module stays free of JAX and grain (a test checks both agree).
BALANCE_MODES = ("", "decision")
# Training styles of bsft_jax.data.format ("few_shot" is a prompting baseline of the evaluator only).
TRAIN_STYLES = ("behavior_sft", "general_sft", "explicit_instruction")
BEHAVIOR_INITS = ("mean_cov", "mean_std")


class ConfigError(UserError, ValueError):
    """A config field has a bad value; the message names the field."""


def fail(field: str, msg: str) -> ConfigError:
    """The error for ``config.<field>``."""
    return ConfigError(f"config.{field}: {msg}")


def one_of(block: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raises :class:`ConfigError` for ``config.<block>.<name>`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise fail(f"{block}.{name}", f"{value!r} is not one of {list(choices)}")


def positive(block: str, values: Any, *names: str, allow_zero: bool = False) -> None:
    """Raises :class:`ConfigError` for the first ``config.<block>.<name>`` that is not > 0 (or >= 0).

    ``values``: a settings piece (attributes) or a mapping (a free-form block such as ``model.arch``)."""
    for name in names:
        v = values[name] if isinstance(values, Mapping) else getattr(values, name)
        if v < 0 or (v == 0 and not allow_zero):
            raise fail(f"{block}.{name}", f"must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


@dataclasses.dataclass(frozen=True)
class ModelRuntime:
    """The decoder's runtime fields (``config.model``): numerics and how the step is compiled."""

    dtype: str
    param_dtype: str
    logits_dtype: str
    remat: str
    scan_unroll: int
    attention_impl: str

    def __post_init__(self) -> None:
        for name in ("dtype", "param_dtype", "logits_dtype"):
            try:
                object.__setattr__(self, name, canonical_dtype(getattr(self, name), field=f"config.model.{name}"))
            except ValueError as e:
                raise ConfigError(str(e)) from None
        one_of("model", "remat", self.remat, REMAT_MODES)
        one_of("model", "attention_impl", self.attention_impl, ATTENTION_IMPLS)
        positive("model", self, "scan_unroll")
        # head_dim is checked by DecoderConfig once the architecture is known (it may come from an HF folder)
        if self.attention_impl == "cudnn" and not cudnn_attention_fits(self.dtype):
            raise fail("model.attention_impl", f"is 'cudnn' but model.dtype={self.dtype!r}; cuDNN flash attention "
                       "needs bfloat16 or float16 (use 'auto' to fall back to 'einsum')")

    def fields(self) -> dict[str, Any]:
        """As DecoderConfig keyword arguments."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """``config.model.lora``: LoRA adapters on the block projections (rank 0: off, full fine-tuning).

    ``targets`` are the projections' logical names (q, k, v, o, gate, up, down); ``base_dtype`` holds
    the frozen base in another dtype ("" = ``model.param_dtype``; e.g. "bfloat16", the compute dtype).
    """

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS
    base_dtype: str = ""

    @classmethod
    def from_block(cls, block: Any) -> LoraSettings:
        """From the ``model.lora`` block (``targets`` a comma-separated string or a sequence)."""
        targets = block.targets
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        return cls(rank=block.rank, alpha=block.alpha, dropout=block.dropout, targets=tuple(targets),
                   base_dtype=block.base_dtype)

    def __post_init__(self) -> None:
        positive("model.lora", self, "rank", "alpha", allow_zero=True)
        if not 0.0 <= self.dropout < 1.0:
            raise fail("model.lora.dropout", f"must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad:
            raise fail("model.lora.targets", f"unknown {bad}; use a comma-separated subset of {','.join(LORA_TARGETS)}")
        if self.base_dtype:
            try:
                object.__setattr__(self, "base_dtype", canonical_dtype(self.base_dtype,
                                                                       field="config.model.lora.base_dtype"))
            except ValueError as e:
                raise ConfigError(str(e)) from None

    @property
    def config(self) -> LoraConfig | None:
        """The decoder's :class:`LoraConfig`, or None when LoRA is off (rank 0 or no targets)."""
        lc = LoraConfig(rank=int(self.rank), alpha=float(self.alpha), dropout=float(self.dropout), targets=self.targets)
        return lc if lc.enabled else None


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """``config.model`` and ``config.tokenizer``: where the weights and the base tokenizer come from, and
    the decoder's runtime fields. Existence of folders is checked by ``resolve`` (a cross-field rule)."""

    source: str
    hf_path: str
    arch: Mapping[str, Any]
    vocab_pad_multiple: int
    tokenizer_path: str  # "" = the HF folder's; "demo" = the demo set's BPE
    runtime: ModelRuntime
    lora: LoraSettings = LoraSettings()

    @classmethod
    def from_config(cls, cfg: Any) -> ModelSettings:
        """From the ``model`` and ``tokenizer`` blocks."""
        m = cfg.model
        runtime = ModelRuntime(dtype=m.dtype, param_dtype=m.param_dtype, logits_dtype=m.logits_dtype, remat=m.remat,
                               scan_unroll=m.scan_unroll, attention_impl=m.attention_impl)
        settings = cls(source=m.source, hf_path=m.hf_path, arch=_plain(m.arch), vocab_pad_multiple=m.vocab_pad_multiple,
                       tokenizer_path=cfg.tokenizer.path, runtime=runtime, lora=LoraSettings.from_block(m.lora))
        one_of("model", "source", settings.source, MODEL_SOURCES)
        positive("model", settings, "vocab_pad_multiple")
        return settings

    @property
    def base_tokenizer(self) -> str:
        """The base tokenizer folder as configured ("" when the run has none; "demo" is resolved by the caller)."""
        return self.tokenizer_path or (self.hf_path if self.source == "hf" else "")


@dataclasses.dataclass(frozen=True)
class BehaviorSettings:
    """``config.behavior``: whether behavior tokens are trained, which ones, and how their rows start."""

    enabled: bool
    spec: BehaviorSpec
    init: str

    @classmethod
    def from_block(cls, b: Any) -> BehaviorSettings:
        """From the ``behavior`` block; a bad token set is reported against its field."""
        try:
            spec = BehaviorSpec(names=tuple(b.names), token_format=b.token_format, category_map=dict(b.category_map),
                                scheme=b.scheme)
        except ValueError as e:
            field = ("token_format" if "token_format" in str(e) else
                     "category_map" if "category_map" in str(e) else
                     "scheme" if "must be one of" in str(e) else "names")
            raise fail(f"behavior.{field}", str(e)) from None
        settings = cls(enabled=bool(b.enabled), spec=spec, init=b.init)
        if settings.enabled:
            one_of("behavior", "init", settings.init, BEHAVIOR_INITS)
        return settings


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """``config.data``: where records come from and how they become rows."""

    source: str
    path: str
    field_map: Mapping[str, str]
    style: str
    seq_len: int
    packing: bool
    shuffle_seed: int
    train_split: str
    eval_split: str
    eval_batches: int
    demo: Mapping[str, int]
    synthetic_vocab: int
    balance: str = ""  # "decision": as many intervene as hold scenes in every training batch
    categories: tuple[str, ...] = ()  # only these categories' records, in every split (): all)

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", tuple(self.categories))
        one_of("data", "source", self.source, DATA_SOURCES)
        if self.categories and self.source not in ("demo", "jsonl"):
            raise fail("data.categories", f"selects records of demo or jsonl data, not of data.source={self.source!r}")
        one_of("data", "balance", self.balance, BALANCE_MODES)
        if self.balance and not self.packing:
            raise fail("data.balance", f"{self.balance!r} needs data.packing=true (a pair is packed as one element)")
        if self.balance and self.source == "synthetic":
            raise fail("data.balance", "synthetic data has no behavior to balance; set data.balance=''")
        one_of("data", "style", self.style, TRAIN_STYLES)
        positive("data", self, "seq_len")
        for name in ("num_train", "num_test", "tokenizer_vocab"):
            if self.demo[name] <= 0:
                raise fail(f"data.demo.{name}", f"must be > 0, got {self.demo[name]!r}")


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """How the train step computes one update (``config.train``'s step fields): the piece
    :class:`~bsft_jax.train.step.Trainer` and ``LoraTrainer`` take. Its defaults are the config's
    (:func:`bsft_jax.setup.config.default_config` reads them from here)."""

    microbatches: int = 1  # gradient-accumulation microbatches per update (divides the batch)
    z_loss: float = 0.0  # weight of the z-loss term (0 disables it)
    loss_impl: str = "chunked"  # "chunked" (never builds [B, T, V] logits) | "full"
    loss_chunk: int = 256  # chunked: rows of logits alive at a time ([chunk, V] fp32)
    loss_budget: float = 0.5  # chunked: fraction of positions gathered for the loss (more: exact fallback)
    first_token_loss_weight: float = 1.0  # x the loss of each reply's first token (the decision); 1.0: plain SFT

    def __post_init__(self) -> None:
        positive("train", self, "microbatches", "loss_chunk", "first_token_loss_weight")
        positive("train", self, "z_loss", allow_zero=True)
        one_of("train", "loss_impl", self.loss_impl, LOSS_IMPLS)
        if not 0.0 < self.loss_budget <= 1.0:
            raise fail("train.loss_budget", f"must be in (0, 1], got {self.loss_budget}")

    @property
    def loss_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`bsft_jax.train.chunked_loss.model_loss_sums` (the loss path)."""
        return dict(impl=self.loss_impl, chunk=int(self.loss_chunk), budget=float(self.loss_budget))


_STEP = StepSettings()


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """``config.train``: how long, how big, how often; :attr:`step` is how each update is computed."""

    steps: int
    global_batch_size: int
    microbatches: int
    z_loss: float
    log_every: int
    eval_every: int
    steer_eval_items: int = 0  # validation items decoded at each eval (0: no steering eval)
    steer_eval_split: str = "validation"
    steer_max_new_tokens: int = 24
    early_stop_patience: int = 0  # steering evals without a new best before stopping (0: never stop)
    loss_impl: str = _STEP.loss_impl
    loss_chunk: int = _STEP.loss_chunk
    loss_budget: float = _STEP.loss_budget
    first_token_loss_weight: float = _STEP.first_token_loss_weight

    def __post_init__(self) -> None:
        positive("train", self, "steps", "global_batch_size", "log_every")
        _ = self.step  # the step's fields check themselves
        positive("train", self, "steer_eval_items", "early_stop_patience", allow_zero=True)
        positive("train", self, "steer_max_new_tokens")
        if self.eval_every < -1:
            raise fail("train.eval_every", f"must be -1 (never), 0 (at the end) or a step interval, "
                                           f"got {self.eval_every}")

    @property
    def step(self) -> StepSettings:
        """The train step's piece (what :class:`~bsft_jax.train.step.Trainer` takes)."""
        return StepSettings(microbatches=self.microbatches, z_loss=self.z_loss, loss_impl=self.loss_impl,
                            loss_chunk=self.loss_chunk, loss_budget=self.loss_budget,
                            first_token_loss_weight=self.first_token_loss_weight)


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """``config.optimizer``: AdamW with warmup + cosine decay (see :mod:`bsft_jax.train.optim`)."""

    learning_rate: float
    warmup_steps: int
    min_lr_ratio: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    grad_clip_norm: float
    decay_embeddings: bool
    decay_start: int = 0  # > warmup_steps: hold the peak until this update, then decay (warmup-stable-decay)

    def __post_init__(self) -> None:
        positive("optimizer", self, "learning_rate", "eps")
        positive("optimizer", self, "warmup_steps", "weight_decay", "decay_start", allow_zero=True)
        for name in ("min_lr_ratio", "b1", "b2"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0 or (name != "min_lr_ratio" and v == 1.0):
                raise fail(f"optimizer.{name}", f"must be in [0, 1{']' if name == 'min_lr_ratio' else ')'}, got {v}")


# What ``checkpoint.keep_best_metric`` may name: metric -> True when higher is better. Steering metrics
# (bsft_jax.train.steer, logged as steer/<name>) need train.steer_eval_items > 0; held-out ones do not.
STEER_METRICS = {"overall_f1": True, "behavior_accuracy": True, "decision_accuracy": True, "over_intervention": False,
                 "missed_intervention": False, "unparsed": False,
                 **{f"{g}_f1": True for g in taxonomy.GROUPS}}
HELD_OUT_METRICS = {"loss": False, "first_token_accuracy": True}


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    """``config.checkpoint``: when and how steps are saved, and which one is kept as the best."""

    every_steps: int
    keep: int
    keep_best_metric: str = ""  # a held-out or steer/ metric; "" keeps no best step
    async_save: bool = True
    restore_data: bool = True  # on resume, restore the data-iterator position too

    def __post_init__(self) -> None:
        positive("checkpoint", self, "every_steps", "keep")


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    """``config.mesh``: device-axis sizes; one may be -1 (all remaining devices)."""

    data: int
    fsdp: int
    tensor: int

    def __post_init__(self) -> None:
        for name in ("data", "fsdp", "tensor"):
            v = getattr(self, name)
            if v == 0 or v < -1:
                raise fail(f"mesh.{name}", f"must be a positive size or -1 (all remaining devices), got {v}")

    def sizes(self) -> dict[str, int]:
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """``config.distributed``: multi-host start-up (:func:`bsft_jax.train.distributed.maybe_initialize`).

    ``peer_timeout_seconds``: a process that has sent ``jax.distributed`` no heartbeat for this long counts
    as dead, and every other process of the job then exits non-zero (measured: within about twice this,
    docs/clusters.md) instead of waiting in its next collective.
    """

    initialize: str = "auto"
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    peer_timeout_seconds: int = 60

    @classmethod
    def from_block(cls, block: Any) -> DistributedSettings:
        """From the ``distributed`` block (an ml_collections block or a mapping)."""
        return cls(**_plain(block))

    def __post_init__(self) -> None:
        one_of("distributed", "initialize", self.initialize, DIST_INIT)
        positive("distributed", self, "peer_timeout_seconds")


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    """``config.logging``: TensorBoard event files beside ``metrics.jsonl``."""

    tensorboard: bool = True


@dataclasses.dataclass(frozen=True)
class LeaseSettings:
    """``config.lease``: the trainer's exclusive lease on its run directory (:mod:`bsft_jax.checkpoint.lease`).

    ``expiry_seconds``: a holder that has not renewed its lease for this long counts as gone (it renews every
    ``expiry_seconds / 6``); ``force_takeover``: take the lease even from a holder that looks alive (logged).
    """

    expiry_seconds: float = 180.0
    force_takeover: bool = False

    def __post_init__(self) -> None:
        positive("lease", self, "expiry_seconds")

    @property
    def heartbeat_seconds(self) -> float:
        """How often the holder renews its lease."""
        return self.expiry_seconds / 6.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved config: one typed piece per block that functions take."""

    seed: int
    model: ModelSettings
    behavior: BehaviorSettings
    data: DataSettings
    train: TrainSettings
    optimizer: OptimizerSettings
    checkpoint: CheckpointSettings
    mesh: MeshSettings
    distributed: DistributedSettings
    logging: LoggingSettings
    lease: LeaseSettings = LeaseSettings()
    run_dir: str = ""  # checkpoints, metrics, the tokenizer and the config go here
    # Set by bsft_jax.setup.config.resolve (None / empty from from_config alone):
    mesh_shape: Mapping[str, int] | None = None  # config.mesh with the -1 resolved for the run's devices
    config_json: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # saved beside every checkpoint

    @classmethod
    def from_config(cls, cfg: Any) -> Settings:
        """Every piece of an ml_collections config, each validated on its own (no cross-field rules, no
        file checks, no mesh: :func:`bsft_jax.setup.config.resolve` adds those)."""
        return cls(
            run_dir=str(cfg.run_dir),
            seed=int(cfg.seed),
            model=ModelSettings.from_config(cfg),
            behavior=BehaviorSettings.from_block(cfg.behavior),
            data=DataSettings(**_plain(cfg.data)),
            train=TrainSettings(**_plain(cfg.train)),
            optimizer=OptimizerSettings(**_plain(cfg.optimizer)),
            checkpoint=CheckpointSettings(**_plain(cfg.checkpoint)),
            mesh=MeshSettings(**_plain(cfg.mesh)),
            distributed=DistributedSettings.from_block(cfg.distributed),
            logging=LoggingSettings(**_plain(cfg.logging)),
            lease=LeaseSettings(**_plain(cfg.lease)),
        )


def _plain(block: Any) -> dict[str, Any]:
    """An ml_collections block (or a mapping) as a plain dict, nested blocks included."""
    return block.to_dict() if hasattr(block, "to_dict") else dict(block)
