"""LoRA training: a frozen base, trainable adapters and behavior-token rows, optimizer state for those only.

The split (all arrays sharded by the one rules table):

* **frozen**: every base parameter (``nnx.Param`` that is not a :class:`~bsft_jax.models.lora.LoraParam`),
  optionally cast once to a narrower ``base_dtype`` (the compute dtype). It is an argument of the
  jitted step (never closed over, never donated, never differentiated) and is not checkpointed:
  checkpoints carry a reference to the base instead (:mod:`bsft_jax.checkpoint.lora_base`).
* **trainable** (``TrainState.params``, a plain dict)::

      {"lora": {"layers": {"attn": {"q_lora_a": [L, D, r], "q_lora_b": [L, r, N, H], ...},
                           "mlp": {...}}},
       "rows": {"embed": [R, D], "lm_head": [D, R] (untied head only)}}

  where R are the behavior-token ids. The step runs the decoder with the rows as parameters of
  their own over the frozen table (:class:`~bsft_jax.models.rows.TrainableRows`: lookup and head
  columns replaced), so no gradient reaches the [V, D] table and every other row is the base's,
  bit for bit; :meth:`LoraTrainer.model_from_state` scatters them into the table instead (the
  merged model). The optimizer (plain optax, same AdamW as full fine-tuning) holds moments for
  these arrays only.

The frozen base is an argument the loss is not differentiated by, so the compiled step has the
activation gradient of every frozen matmul but no weight gradient (``tests/train/test_lora_hlo.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bsft_jax.checkpoint.lora_base import trainable_shapes
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import Decoder, abstract_decoder
from bsft_jax.models.lora import LoraConfig, LoraParam
from bsft_jax.models.sharding import batch_sharding, logical_to_spec, state_shardings
from bsft_jax.setup.settings import Settings, StepSettings
from bsft_jax.train.chunked_loss import model_loss_sums
from bsft_jax.train.step import Trainer, TrainState

log = logging.getLogger(__name__)

BASE_FILTER = nnx.All(nnx.Param, nnx.Not(LoraParam))


def _fill(template: nnx.State, pure: Any) -> nnx.State:
    state = jax.tree.map(lambda x: x, template)
    nnx.replace_by_pure_dict(state, pure)
    return state


class LoraTrainer(Trainer):
    """A :class:`Trainer` whose state holds only the adapters and behavior rows (see the module docstring).

    ``LoraTrainer(model.config, tx, schedule, mesh, lora=LoraConfig(...), behavior_ids=[...])``; then
    ``state = trainer.init_state(base_model, seed)`` (keeps the base as ``trainer.frozen``; on resume
    call ``trainer.set_base(base_model)`` and restore the state), ``compile``, ``step`` as for Trainer.
    """

    def __init__(self, config: DecoderConfig, tx: optax.GradientTransformation, schedule: optax.Schedule, mesh: Mesh,
                 *, lora: LoraConfig, behavior_ids: list[int] | tuple[int, ...], base_dtype: str | None = None,
                 step: StepSettings | None = None, **overrides: Any):
        self._take_step_settings(step, overrides)
        self.mesh, self.tx, self.schedule = mesh, tx, schedule
        self.config = config.replace(lora=lora)
        self.lora = lora
        self.row_ids = np.asarray(sorted(int(i) for i in behavior_ids), np.int32)
        self.base_dtype = jnp.dtype(base_dtype or self.config.param_dtype)
        self.model_graphdef, abstract_all = nnx.split(abstract_decoder(self.config))
        self.abstract_full = abstract_all
        # the model the step runs: the same decoder, with the rows as parameters over the frozen table
        self._train_graphdef, self._abstract_train = nnx.split(nnx.eval_shape(
            lambda: Decoder(self.config, rngs=nnx.Rngs(params=0), trainable_rows=self.row_ids)))
        abstract_base = nnx.state(abstract_decoder(self.config), BASE_FILTER)
        self.abstract_lora = nnx.state(abstract_decoder(self.config), LoraParam)
        replicated = NamedSharding(mesh, PartitionSpec())
        base_sh = state_shardings(abstract_base, mesh)
        self.frozen_shardings = nnx.to_pure_dict(base_sh)
        self.abstract_frozen = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, self._frozen_dtype(a.dtype)),
                                            nnx.to_pure_dict(abstract_base))
        abstract_params, param_sh = self._abstract_trainable()
        abstract_opt = jax.eval_shape(tx.init, abstract_params)
        opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh,
                                       transform_non_params=lambda _: replicated)
        self.state_shardings = TrainState(params=param_sh, opt_state=opt_sh, step=replicated, rng=replicated)
        self.abstract_state = TrainState(params=abstract_params, opt_state=abstract_opt,
                                         step=jax.ShapeDtypeStruct((), jnp.int32),
                                         rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
        self.batch_sharding = batch_sharding(mesh)
        self.replicated = replicated
        self.frozen: Any = None
        self._compiled: Any = None
        self._eval_step: Any = None
        self.compile_seconds = 0.0

    def _frozen_dtype(self, dtype: Any) -> Any:
        return self.base_dtype if jnp.issubdtype(dtype, jnp.floating) else dtype

    def _abstract_trainable(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Shapes and shardings of the trainable dict (adapters + behavior rows)."""
        params = trainable_shapes(self.config, self.lora, self.row_ids)  # what a checkpoint's params item holds
        lora_sh = nnx.to_pure_dict(state_shardings(self.abstract_lora, self.mesh))
        row_axes = {"embed": (None, "embed"), "lm_head": ("embed", None)}
        rows_sh = {name: NamedSharding(self.mesh, logical_to_spec(row_axes[name], mesh=self.mesh, shape=a.shape))
                   for name, a in params["rows"].items()}
        return params, {"lora": lora_sh, "rows": rows_sh}

    # ------------------------------------------------------------------ state
    def set_base(self, model: Decoder) -> None:
        """Keeps ``model``'s base parameters (in ``base_dtype``, sharded) as the frozen argument of the step."""
        base = nnx.to_pure_dict(nnx.state(model, BASE_FILTER))
        cast = jax.jit(lambda t: jax.tree.map(lambda x: x.astype(self._frozen_dtype(x.dtype)), t),
                       out_shardings=self.frozen_shardings)
        self.frozen = cast(base)

    def init_state(self, model: Decoder, seed: int) -> TrainState:
        """Fresh adapters (A random, B zero) and rows copied from the base table(s); AdamW state for those."""
        self.set_base(model)
        config, ids, tx = self.config, jnp.asarray(self.row_ids), self.tx
        embed = model.embed.value
        head = None if config.tie_word_embeddings else model.lm_head.value

        def make(lora_init: Any, embed: jax.Array, head: jax.Array | None, key_data: jax.Array) -> TrainState:
            rows = {"embed": embed[ids].astype(config.param_dtype)}
            if head is not None:
                rows["lm_head"] = head[:, ids].astype(config.param_dtype)
            params = {"lora": lora_init, "rows": rows}
            return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                              rng=key_data)

        key_data = jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)
        lora_init = _init_factors(self.abstract_state.params["lora"], self.state_shardings.params["lora"], seed)
        return jax.jit(make, out_shardings=self.state_shardings)(lora_init, embed, head, key_data)

    def train_model(self, params: dict[str, Any], frozen: dict[str, Any]) -> Decoder:
        """The decoder the step differentiates: the frozen base, the adapters and the rows on their own."""
        full = _merge_dicts(frozen, params["lora"]) | {"rows": params["rows"]}
        return nnx.merge(self._train_graphdef, _fill(self._abstract_train, full))

    def full_params(self, params: dict[str, Any], frozen: dict[str, Any]) -> nnx.State:
        """The merged decoder's whole parameter State: the frozen base with the rows scattered in, plus the adapters."""
        ids = jnp.asarray(self.row_ids)
        base = dict(frozen)
        table = base["embed"]
        base["embed"] = table.at[ids].set(params["rows"]["embed"].astype(table.dtype))
        if "lm_head" in params["rows"]:
            head = base["lm_head"]
            base["lm_head"] = head.at[:, ids].set(params["rows"]["lm_head"].astype(head.dtype))
        full = _merge_dicts(base, params["lora"])
        return _fill(self.abstract_full, full)

    def model_from_state(self, state: TrainState) -> Decoder:
        """The Decoder (base + adapters + rows) of a state; needs the base (``init_state`` / ``set_base``)."""
        return nnx.merge(self.model_graphdef, self.full_params(state.params, self.frozen))

    # ------------------------------------------------------------------ step
    def _train_step(self, state: TrainState, batch: dict[str, jax.Array],
                    frozen: dict[str, Any]) -> tuple[TrainState, dict[str, jax.Array]]:
        key, dropout_key = jax.random.split(jax.random.wrap_key_data(state.rng))

        def model_fn(params: dict[str, Any], mb: dict[str, jax.Array], index: jax.Array) -> tuple[Decoder, dict]:
            model = self.train_model(params, frozen)
            rng = jax.random.fold_in(dropout_key, index) if self.lora.dropout > 0 else None
            return model, {"dropout_rng": rng}

        grads, sums = self._grads(state.params, batch, model_fn)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        new_state = TrainState(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                               step=state.step + 1, rng=jax.random.key_data(key))
        return new_state, self._metrics(state, batch, grads, sums)

    def compile(self, global_batch: int, seq_len: int) -> Any:
        """Lowers and compiles the step ``(state, batch, frozen)`` once; ``state`` is donated, the base is not."""
        if global_batch % self.microbatches:
            raise ValueError(f"global batch {global_batch} is not divisible by microbatches={self.microbatches}")
        jitted = jax.jit(self._train_step,
                         in_shardings=(self.state_shardings, self.batch_sharding, self.frozen_shardings),
                         out_shardings=(self.state_shardings, self.replicated), donate_argnums=(0,))
        frozen = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              self.abstract_frozen, self.frozen_shardings)
        t0 = time.perf_counter()
        self._compiled = jitted.lower(self.abstract_state, self.abstract_batch(global_batch, seq_len),
                                      frozen).compile()
        self.compile_seconds = time.perf_counter() - t0
        return self._compiled

    def step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        """One update of the adapters and rows (``state`` is donated)."""
        if self._compiled is None or self.frozen is None:
            raise RuntimeError("call LoraTrainer.init_state/set_base and compile(global_batch, seq_len) first")
        return self._compiled(state, batch, self.frozen)

    def eval_step_fn(self) -> Any:
        """A ``(params, batch) -> LossSums`` for held-out batches (the base is passed to the jitted function)."""
        if self._eval_step is None:
            loss_options = self.loss_options

            def eval_step(params: dict[str, Any], batch: dict[str, jax.Array], frozen: dict[str, Any]) -> Any:
                return model_loss_sums(self.train_model(params, frozen), batch, **loss_options)

            self._eval_step = jax.jit(eval_step, in_shardings=(self.state_shardings.params, self.batch_sharding,
                                                               self.frozen_shardings), out_shardings=self.replicated)
        return lambda params, batch: self._eval_step(params, batch, self.frozen)

    def report(self, num_params: int) -> dict[str, Any]:
        """The Trainer's startup facts plus ``trainable_params`` (adapters + behavior rows)."""
        return super().report(num_params) | {"trainable_params": self.num_trainable()}

    def num_trainable(self) -> int:
        """Number of trained parameters (adapters + behavior rows)."""
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.abstract_state.params)))


def make_trainer(s: Settings, bundle: Any, tx: optax.GradientTransformation, schedule: optax.Schedule,
                 mesh: Mesh) -> Trainer:
    """A :class:`LoraTrainer` when ``model.lora`` is on, else the full-model :class:`Trainer`; ``bundle``: the
    run's ``ModelBundle`` (config, behavior token ids)."""
    step, lora = s.train.step, s.model.lora
    if lora.config is None:
        return Trainer(bundle.config, tx, schedule, mesh, step)
    return LoraTrainer(bundle.config, tx, schedule, mesh, lora=lora.config,
                       behavior_ids=list(bundle.behavior_ids.values()), base_dtype=lora.base_dtype or None, step=step)


def _init_factors(abstract: dict[str, Any], shardings: dict[str, Any], seed: int) -> dict[str, Any]:
    """Initial adapter factors: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PEFT's default bound), B = 0.

    Drawn on the host with numpy from ``seed`` (the same values on every process and mesh), then
    placed shard by shard; generating them under jit costs seconds of compile time for nothing.
    """
    rng = np.random.default_rng([int(seed), 0x10A])

    def one(path: Any, a: jax.ShapeDtypeStruct, sharding: Any) -> jax.Array:
        name = str(getattr(path[-1], "key", path[-1]))
        if name.endswith("_lora_b"):
            value = np.zeros(a.shape, a.dtype)
        else:  # [L, *in, r]
            bound = 1.0 / np.sqrt(np.prod(a.shape[1:-1]))
            value = rng.uniform(-bound, bound, a.shape).astype(a.dtype)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: value[idx])

    return jax.tree_util.tree_map_with_path(one, abstract, shardings)


def _merge_dicts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Recursive union of two nested dicts (``b`` adds keys; shared keys must be dicts)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_dicts(out[k], v) if k in out and isinstance(v, dict) else v
    return out
