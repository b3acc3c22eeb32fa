"""Masked next-token cross-entropy (fp32, integer labels), optional z-loss, token accuracies.

Everything is returned as *sums* over the batch (:class:`LossSums`), so that gradient
accumulation over microbatches can add them and divide once by the token count of the whole
global batch: the accumulated loss and gradient then equal the unaccumulated ones exactly (up to
float summation order).

No one-hot over the vocabulary is built: the target logit is gathered with
``take_along_axis`` and the normaliser is ``logsumexp`` (one pass over ``[B, T, V]``).
Rows of the embedding that belong to no token (``valid_vocab_size <= id < vocab_size``) are
masked out of the softmax, the argmax and the z-loss.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bsft_jax.models.logits import mask_padded_logits


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LossSums:
    """Per-batch sums (fp32 scalars); divide by ``tokens`` / ``first_tokens`` for means."""

    ce: jax.Array  # sum of -log p(target) over loss-masked tokens
    z: jax.Array  # sum of logsumexp(logits)^2 over loss-masked tokens
    tokens: jax.Array  # number of loss-masked tokens
    correct: jax.Array  # loss-masked tokens whose argmax is the target
    first_correct: jax.Array  # same, on the first token of every assistant span
    first_tokens: jax.Array  # number of assistant spans (first tokens)
    first_ce: jax.Array  # sum of -log p(target) on the first token of every assistant span (the decision)

    @classmethod
    def zeros(cls) -> LossSums:
        z = jnp.zeros((), jnp.float32)
        return cls(z, z, z, z, z, z, z)

    def __add__(self, other: LossSums) -> LossSums:
        return jax.tree.map(jnp.add, self, other)


def first_target_mask(loss_mask_bt: jax.Array, segment_ids_bt: jax.Array) -> jax.Array:
    """True at the first loss-masked token of every masked span (within a segment).

    In a BehaviorSFT example the assistant reply is one span and its first target is the
    behavior token, so accuracy on these positions is the behavior-selection accuracy under
    teacher forcing (exactly what greedy decoding would pick first). For GeneralSFT it is the
    first word of the reply.
    """
    mask = loss_mask_bt.astype(bool)
    prev = jnp.pad(mask[:, :-1], ((0, 0), (1, 0)))
    same_segment = jnp.pad(segment_ids_bt[:, 1:] == segment_ids_bt[:, :-1], ((0, 0), (1, 0)))
    return mask & ~(prev & same_segment)


def loss_sums(
    logits_btv: jax.Array,
    targets_bt: jax.Array,
    loss_mask_bt: jax.Array,
    segment_ids_bt: jax.Array,
    *,
    valid_vocab_size: int | None = None,
) -> LossSums:
    """Sums of the masked cross-entropy, z-loss term and accuracies for one (micro)batch.

    logits_btv: [B, T, V] any float dtype (computed in fp32 here).
    targets_bt, loss_mask_bt, segment_ids_bt: [B, T] integer arrays (batch contract).
    """
    logits = mask_padded_logits(logits_btv.astype(jnp.float32), valid_vocab_size)
    mask = loss_mask_bt.astype(jnp.float32)
    lse_bt = jax.nn.logsumexp(logits, axis=-1)
    target_logit_bt = jnp.take_along_axis(logits, targets_bt[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ce_bt = lse_bt - target_logit_bt
    # "argmax == target" as "target logit reaches the row max": the max is the one logsumexp already
    # takes (XLA shares the reduction), where argmax is a second pass over [B, T, V] (3% of a CPU step).
    # Only exact ties differ (counted as hits here).
    hit_bt = (target_logit_bt >= jnp.max(logits, axis=-1)).astype(jnp.float32)
    first = first_target_mask(loss_mask_bt, segment_ids_bt).astype(jnp.float32)
    return LossSums(
        ce=jnp.sum(ce_bt * mask),
        z=jnp.sum(jnp.square(lse_bt) * mask),
        tokens=jnp.sum(mask),
        correct=jnp.sum(hit_bt * mask),
        first_correct=jnp.sum(hit_bt * first),
        first_tokens=jnp.sum(first),
        first_ce=jnp.sum(ce_bt * first),
    )


def objective(sums: LossSums, num_tokens: jax.Array, z_loss_weight: float,
              first_token_weight: float = 1.0) -> jax.Array:
    """The scalar that is differentiated, / the global count of loss tokens:

        (CE + (first_token_weight - 1) * CE_first + z_loss_weight * z) / tokens

    ``first_token_weight`` (``config.train.first_token_loss_weight``) multiplies the loss of the first
    token of every reply: the behavior token in BehaviorSFT, the reply's first word in GeneralSFT.
    The normaliser stays the plain token count, so the gradient of every other token is unchanged
    (weight 1.0: exactly the plain objective, the same program).
    """
    denom = jnp.maximum(num_tokens, 1.0)
    total = sums.ce + z_loss_weight * sums.z
    if first_token_weight != 1.0:
        total = total + (float(first_token_weight) - 1.0) * sums.first_ce
    return total / denom
