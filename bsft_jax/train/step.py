"""The sharded train step: one jit, explicit shardings, donated state, gradient accumulation.

State is passed as an argument (never closed over): :class:`TrainState` holds the parameters
(``nnx.State`` of ``nnx.Param``), the ``nnx.Optimizer`` state, the step and the RNG. Inside the
step the model and optimizer are rebuilt with ``nnx.merge`` from their static graph defs.

Sharding: parameters and optimizer moments follow each parameter's ``logical_axes`` through the
rules table (:func:`bsft_jax.models.sharding.state_shardings`); the batch is split over
``data x fsdp`` (:func:`bsft_jax.models.sharding.batch_sharding`). Gradient accumulation splits the
global batch into ``microbatches`` interleaved slices (row ``i`` goes to microbatch
``i % M``), so that every device keeps its own rows and no data moves; a ``lax.scan`` adds the
per-microbatch gradients of the *summed* loss, and one division by the global loss-token count
makes the result equal to a single big batch.

Mixed precision: parameters and optimizer state in ``param_dtype`` (fp32), the forward pass in
``dtype`` (bf16): :class:`bsft_jax.models.Decoder` casts weights at each use, so gradients
arrive in fp32 for the fp32 master weights. The loss is computed in fp32.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bsft_jax.data.pipeline import BATCH_KEYS
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import Decoder, abstract_decoder
from bsft_jax.models.sharding import batch_sharding, state_shardings
from bsft_jax.setup.settings import StepSettings
from bsft_jax.train.chunked_loss import model_loss_sums
from bsft_jax.train.loss import LossSums, objective

log = logging.getLogger(__name__)



@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a step reads and writes (all arrays; donated to the step)."""

    params: nnx.State  # nnx.Param variables of the Decoder
    opt_state: nnx.State  # nnx.Optimizer state (AdamW moments, counts)
    step: jax.Array  # [] int32: completed updates
    rng: jax.Array  # [2] uint32 raw key data, split once per step


class Trainer:
    """Builds the train state and the compiled step for a model, optimizer and mesh.

    ``Trainer(model.config, tx, schedule, mesh, settings.train.step)`` (a :class:`StepSettings`: microbatches,
    z-loss, loss path, first-token weight; its defaults are the config's, and keyword overrides of its
    fields such as ``microbatches=M`` are applied on top); then
    ``state = trainer.init_state(model, seed)``, ``compiled = trainer.compile(global_batch, seq_len)``,
    ``state, metrics = trainer.step(state, batch)``.
    """

    def __init__(self, config: DecoderConfig, tx: optax.GradientTransformation, schedule: optax.Schedule, mesh: Mesh,
                 step: StepSettings | None = None, **overrides: Any):
        self.mesh = mesh
        self._take_step_settings(step, overrides)
        self.tx = tx
        self.schedule = schedule
        self.config = config
        # Only shapes are needed here: the parameters arrive in init_state / restore.
        abstract_model = abstract_decoder(config)
        self.model_graphdef, abstract_params = nnx.split(abstract_model)
        abstract_opt = nnx.eval_shape(lambda m: nnx.Optimizer(m, tx, wrt=nnx.Param), abstract_model)
        self.opt_graphdef, abstract_opt_state = nnx.split(abstract_opt)
        replicated = NamedSharding(mesh, PartitionSpec())
        self.state_shardings = TrainState(
            params=state_shardings(abstract_params, mesh),
            opt_state=state_shardings(abstract_opt_state, mesh),
            step=replicated,
            rng=replicated,
        )
        self.abstract_state = TrainState(
            params=abstract_params,
            opt_state=abstract_opt_state,
            step=jax.ShapeDtypeStruct((), jnp.int32),
            rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
        )
        self.batch_sharding = batch_sharding(mesh)
        self.replicated = replicated
        self._compiled: Any = None
        self._eval_step: Any = None
        self.compile_seconds = 0.0

    # ------------------------------------------------------------------ state
    def _take_step_settings(self, step: StepSettings | None, overrides: dict[str, Any]) -> None:
        """``step`` (default: the config's defaults) with ``overrides`` of its fields; checked by the piece."""
        self.step_settings = dataclasses.replace(step or StepSettings(), **overrides)
        self.microbatches = int(self.step_settings.microbatches)
        self.z_loss = float(self.step_settings.z_loss)
        self.first_token_weight = float(self.step_settings.first_token_loss_weight)
        # How the loss is computed (bsft_jax.train.chunked_loss): same sums, different memory and FLOPs.
        self.loss_options = self.step_settings.loss_options

    def init_state(self, model: Decoder, seed: int) -> TrainState:
        """Fresh state from ``model``'s parameters, the optimizer created inside jit (sharded)."""
        graphdef, tx = self.model_graphdef, self.tx
        # Already in place for models built on the mesh (a no-op then); moves an unsharded model.
        params = jax.device_put(nnx.state(model, nnx.Param), self.state_shardings.params)

        def make(params: nnx.State, key_data: jax.Array) -> TrainState:
            opt = nnx.Optimizer(nnx.merge(graphdef, params), tx, wrt=nnx.Param)
            return TrainState(params=params, opt_state=nnx.state(opt), step=jnp.zeros((), jnp.int32), rng=key_data)

        key_data = jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)
        # Donating the parameters lets the state reuse their buffers (no second copy of a 7B model).
        return jax.jit(make, out_shardings=self.state_shardings, donate_argnums=(0,))(params, key_data)

    def abstract_with_shardings(self) -> TrainState:
        """ShapeDtypeStructs carrying this mesh's shardings (restore targets)."""
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract_state, self.state_shardings)

    # ------------------------------------------------------------------ step
    def _train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        graphdef = self.model_graphdef

        def model_fn(params: nnx.State, mb: dict[str, jax.Array], _: jax.Array) -> tuple[Decoder, dict[str, Any]]:
            return nnx.merge(graphdef, params), {}

        grads, sums = self._grads(state.params, batch, model_fn)
        model = nnx.merge(graphdef, state.params)
        optimizer = nnx.merge(self.opt_graphdef, state.opt_state)
        optimizer.update(model, grads)
        key, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
        new_state = TrainState(
            params=nnx.state(model, nnx.Param),
            opt_state=nnx.state(optimizer),
            step=state.step + 1,
            rng=jax.random.key_data(key),
        )
        return new_state, self._metrics(state, batch, grads, sums)

    def _grads(self, params: Any, batch: dict[str, jax.Array], model_fn: Any) -> tuple[Any, LossSums]:
        """Gradient of the loss w.r.t. ``params`` and the loss sums, accumulated over the microbatches.

        ``model_fn(params, microbatch, index) -> (model, call_kwargs)``: the Decoder the loss runs
        (``bsft_jax.train.chunked_loss.model_loss_sums``, with the Trainer's loss path) and extra
        keyword arguments of its call (``index`` is the microbatch's number, e.g. to fold into a
        dropout key).
        """
        m = self.microbatches
        loss_options = self.loss_options
        param_shardings = self.state_shardings.params

        def split(x_bt: jax.Array) -> jax.Array:
            b = x_bt.shape[0]
            # Row i -> microbatch i % m: each device's contiguous rows feed every microbatch.
            x_mbt = x_bt.reshape(b // m, m, *x_bt.shape[1:]).swapaxes(0, 1)
            return jax.lax.with_sharding_constraint(x_mbt, NamedSharding(self.mesh, PartitionSpec(
                None, *self.batch_sharding.spec)))

        micro = {k: split(batch[k]) for k in BATCH_KEYS}
        total_tokens = jnp.sum(batch["loss_mask"].astype(jnp.float32))

        def loss_fn(params: Any, mb: dict[str, jax.Array], index: jax.Array) -> tuple[jax.Array, LossSums]:
            model, call_kwargs = model_fn(params, mb, index)
            sums = model_loss_sums(model, mb, **loss_options, **call_kwargs)
            return objective(sums, total_tokens, self.z_loss, self.first_token_weight), sums

        grad_fn = jax.grad(loss_fn, has_aux=True)

        def body(carry: tuple[Any, LossSums], xs: tuple[dict[str, jax.Array], jax.Array]):
            grads_acc, sums_acc = carry
            grads, sums = grad_fn(params, *xs)
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            return (jax.lax.with_sharding_constraint(grads_acc, param_shardings), sums_acc + sums), None

        zeros = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, params), param_shardings)
        (grads, sums), _ = jax.lax.scan(body, (zeros, LossSums.zeros()), (micro, jnp.arange(m)))
        return grads, sums

    def _metrics(self, state: TrainState, batch: dict[str, jax.Array], grads: Any,
                 sums: LossSums) -> dict[str, jax.Array]:
        """The step's logged metrics (loss, accuracy, gradient norm, learning rate, token counts)."""
        denom = jnp.maximum(sums.tokens, 1.0)
        metrics = {
            "loss": sums.ce / denom,
            "z_loss": sums.z / denom,
            "grad_norm": optax.global_norm(grads),
            "learning_rate": self.schedule(state.step),
            "loss_tokens": sums.tokens,
            "input_tokens": jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32)),
            "accuracy": sums.correct / denom,
            "first_token_accuracy": sums.first_correct / jnp.maximum(sums.first_tokens, 1.0),
            # the decision's own loss (behavior token / first reply word), unweighted
            "first_token_loss": sums.first_ce / jnp.maximum(sums.first_tokens, 1.0),
        }
        return metrics

    def abstract_batch(self, global_batch: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and shardings of one global batch."""
        return {k: jax.ShapeDtypeStruct((global_batch, seq_len), jnp.int32, sharding=self.batch_sharding)
                for k in BATCH_KEYS}

    def compile(self, global_batch: int, seq_len: int) -> Any:
        """Lowers and compiles the step once (ahead of time); returns the compiled executable."""
        if global_batch % self.microbatches:
            raise ValueError(f"global batch {global_batch} is not divisible by microbatches={self.microbatches}")
        jitted = jax.jit(
            self._train_step,
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=(0,),
        )
        t0 = time.perf_counter()
        self._compiled = jitted.lower(self.abstract_state, self.abstract_batch(global_batch, seq_len)).compile()
        self.compile_seconds = time.perf_counter() - t0
        return self._compiled

    def step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        """One update (``state`` is donated: do not use it afterwards)."""
        if self._compiled is None:
            raise RuntimeError("call Trainer.compile(global_batch, seq_len) first")
        return self._compiled(state, batch)

    # ------------------------------------------------------------------ eval
    def eval_step_fn(self) -> Any:
        """A jitted ``(params, batch) -> LossSums`` for held-out batches (no gradient); built once."""
        if self._eval_step is not None:
            return self._eval_step
        graphdef, loss_options = self.model_graphdef, self.loss_options

        def eval_step(params: nnx.State, batch: dict[str, jax.Array]) -> LossSums:
            return model_loss_sums(nnx.merge(graphdef, params), batch, **loss_options)

        self._eval_step = jax.jit(eval_step, in_shardings=(self.state_shardings.params, self.batch_sharding),
                                  out_shardings=self.replicated)
        return self._eval_step

    # ------------------------------------------------------------------ report
    def report(self, num_params: int) -> dict[str, Any]:
        """Startup facts: parameter count, mesh, compile time, per-device memory of the compiled step."""
        out: dict[str, Any] = {
            "num_params": int(num_params),
            "mesh": {k: int(v) for k, v in self.mesh.shape.items()},
            "num_devices": int(self.mesh.size),
            "compile_seconds": round(self.compile_seconds, 3),
        }
        stats = None
        try:
            stats = self._compiled.memory_analysis() if self._compiled is not None else None
        except Exception as e:  # some backends do not implement it
            log.warning("memory_analysis() unavailable: %s", e)
        if stats is not None:
            out["memory_per_device"] = memory_per_device(stats)
        return out


MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
                 "generated_code_size_in_bytes")


def memory_per_device(stats: Any) -> dict[str, int]:
    """``compiled.memory_analysis()`` as a dict, plus the peak estimate ``total_bytes_per_device``.

    The one home of the peak formula (the trainer's startup log and the planner both use it): donated
    outputs alias their inputs, so peak = arguments + outputs - aliased + temporaries.
    """
    mem = {f: int(getattr(stats, f, 0) or 0) for f in MEMORY_FIELDS}
    mem["total_bytes_per_device"] = (mem["argument_size_in_bytes"] + mem["output_size_in_bytes"]
                                     - mem["alias_size_in_bytes"] + mem["temp_size_in_bytes"])
    return mem

