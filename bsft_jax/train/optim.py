"""AdamW with linear warmup + cosine decay, a weight-decay mask and global-norm clipping.

Weight decay is applied to the projection matrices of every block (``*_proj``) and to an untied
``lm_head``. It is NOT applied to:

* norm scales (``scale``): decaying them toward 0 shrinks activations, not complexity;
* biases (``*_bias``): the usual convention, they carry no interaction between features;
* the token embedding (``embed``): in BehaviorSFT the new behavior-token rows are updated on a
  few tokens per example; decay would pull those rarely-updated rows toward zero between updates
  (and every row the task never sees toward zero). With tied embeddings this also leaves the
  output head undecayed. ``decay_embeddings=True`` turns it on.

The decision is by parameter *name*, not by rank: layers are stacked, so a norm scale is
``[L, D]`` (rank 2) and a rank-based rule would decay it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(
    peak: float, *, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1, decay_start: int = 0
) -> optax.Schedule:
    """Linear warmup to ``peak`` over ``warmup_steps``, then cosine decay to ``peak * min_lr_ratio``.

    ``count`` is the optimizer's update count (0 for the first update). Warmup gives update ``s``
    the rate ``peak * (s + 1) / warmup_steps`` (a first update at lr 0 would be wasted); the cosine
    runs over the remaining ``total_steps - warmup_steps`` updates and then stays at the floor.

    ``decay_start > warmup_steps`` holds the peak until update ``decay_start`` and runs the cosine over
    ``[decay_start, total_steps)`` only (warmup-stable-decay): the constant phase is a prefix of every
    longer run, so a decay branch can start from any of its checkpoints (docs/training.md).
    """
    warmup = max(int(warmup_steps), 0)
    start = max(warmup, int(decay_start))
    decay_steps = max(int(total_steps) - start, 1)
    floor = peak * float(min_lr_ratio)

    def schedule(count: jax.Array) -> jax.Array:
        s = jnp.asarray(count, jnp.float32)
        warm = peak * (s + 1.0) / max(warmup, 1)
        progress = jnp.clip((s - start) / decay_steps, 0.0, 1.0)
        cosine = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(s < warmup, warm, cosine)

    return schedule


def _leaf_name(path: tuple[Any, ...]) -> str:
    """The parameter's own name in a (possibly nnx.State) tree path, skipping ``.value`` accessors."""
    for key in reversed(path):
        name = getattr(key, "key", None)
        if name is None:
            name = getattr(key, "name", None)
        if name is not None and name != "value":
            return str(name)
    return ""


def decays(name: str, *, decay_embeddings: bool = False) -> bool:
    """Whether a parameter with this name gets weight decay (see the module docstring)."""
    if name == "embed":
        return decay_embeddings
    return name.endswith("_proj") or name == "lm_head"


def weight_decay_mask(params: Any, *, decay_embeddings: bool = False) -> Any:
    """Pytree of bools (same structure as ``params``): True where weight decay applies."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: decays(_leaf_name(path), decay_embeddings=decay_embeddings), params
    )


def make_optimizer(opt: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The training optimizer from :class:`bsft_jax.setup.settings.OptimizerSettings`; returns ``(tx, schedule)``.

    ``opt`` (the settings, or any object with their fields): learning_rate, warmup_steps,
    min_lr_ratio, decay_start, b1, b2, eps, weight_decay, grad_clip_norm (<= 0 disables clipping), decay_embeddings.
    Optimizer state is kept in the parameters' dtype (fp32 master weights).
    """
    schedule = learning_rate_schedule(
        float(opt.learning_rate),
        total_steps=total_steps,
        warmup_steps=int(opt.warmup_steps),
        min_lr_ratio=float(opt.min_lr_ratio),
        decay_start=int(getattr(opt, "decay_start", 0)),
    )
    decay_embeddings = bool(opt.decay_embeddings)
    adamw = optax.adamw(
        schedule,
        b1=float(opt.b1),
        b2=float(opt.b2),
        eps=float(opt.eps),
        weight_decay=float(opt.weight_decay),
        mask=lambda p: weight_decay_mask(p, decay_embeddings=decay_embeddings),
    )
    parts = []
    if float(opt.grad_clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
    parts.append(adamw)
    return optax.chain(*parts), schedule
