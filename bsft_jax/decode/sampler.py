"""Lists in / lists out generation: :class:`Sampler` and the one-call :func:`generate`.

The :class:`Sampler` holds the split model (placed on a mesh if one is given), left-pads ragged
prompts to a bucketed length and batch size (:mod:`bsft_jax.decode.batching`), runs the jitted
:func:`~bsft_jax.decode.loop.prefill` and :func:`~bsft_jax.decode.loop.decode_loop`, and trims each
row after its first EOS. It compiles ahead of time (``lower().compile()``, cached per bucket on the
Sampler) so that it can report compile time apart from decode time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from bsft_jax.decode.batching import (
    DEFAULT_MIN_PROMPT_BUCKET,
    batch_arrays,
    bucket_size,
    data_parallel_size,
    fetch,
    mesh_context,
    split_and_place,
)
from bsft_jax.decode.layered import unstack_layers
from bsft_jax.decode.loop import DecodeState, decode_loop, prefill
from bsft_jax.decode.sampling import SamplingParams
from bsft_jax.models.decoder import Decoder

__all__ = ["DecodeState", "Sampler", "SamplerOutput", "SamplingParams", "generate"]


@dataclasses.dataclass
class SamplerOutput:
    """Result of one :class:`Sampler` call; lists are in prompt order.

    tokens:       new ids per prompt, up to and including the first EOS (none if the budget ran out).
    logprobs:     log p of each of those tokens under the model (masked vocabulary, no temperature).
    logits:       with ``keep_logits=True``, the [n_i, V] logits each token was chosen from.
    num_generated: total tokens in ``tokens``.
    seconds:      wall time of the calls, compilation excluded (host padding and transfers included).
    compile_seconds: time spent compiling new buckets during the call.
    num_prompt_tokens: total prompt tokens prefilled (padding excluded).
    """

    tokens: list[list[int]]
    logprobs: list[list[float]]
    logits: list[np.ndarray] | None
    num_generated: int
    seconds: float
    compile_seconds: float = 0.0
    num_prompt_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.num_generated / self.seconds if self.seconds > 0 else float("nan")


class Sampler:
    """Batched generation for one model (optionally sharded over a mesh).

    model:          a :class:`Decoder`; its weights are copied once into one buffer per layer
                    (:func:`~bsft_jax.decode.layered.unstack_layers`), split, and placed on
                    ``mesh`` with the rules table (heads over ``tensor``) when a mesh is given.
    mesh:           optional; the batch is sharded over the mesh axes of the ``batch`` rule (data, fsdp).
    pad_id:         id written after a row is done and used for left padding (default: the config's
                    ``pad_token_id``, else 0). It is never fed as a real token.
    prompt_buckets: ascending prompt lengths to pad to (default: 16, 24, 32, 48, 64, 96, ...: powers of
                    two and 1.5x powers of two).
    batch_buckets:  ascending batch sizes to pad to (default: powers of two), rounded up to the
                    data-parallel size of the mesh.
    max_batch_size: prompts per device call; longer lists are processed in chunks.
    sort_by_length: form the chunks from length-sorted prompts (less padding); outputs keep input order.
    """

    def __init__(
        self,
        model: Decoder,
        *,
        mesh: Mesh | None = None,
        pad_id: int | None = None,
        prompt_buckets: Sequence[int] | None = None,
        batch_buckets: Sequence[int] | None = None,
        max_batch_size: int = 64,
        sort_by_length: bool = True,
    ):
        self.config = model.config
        # Decoding reads one buffer per layer (bsft_jax.decode.layered): the weights are split once here.
        self.graphdef, self.params = split_and_place(unstack_layers(model), mesh)
        self.mesh = mesh
        self.pad_id = int(pad_id if pad_id is not None else (self.config.pad_token_id or 0))
        self.prompt_buckets = tuple(prompt_buckets) if prompt_buckets else None
        self.batch_buckets = tuple(batch_buckets) if batch_buckets else None
        self.max_batch_size = int(max_batch_size)
        self.sort_by_length = bool(sort_by_length)
        self.data_parallel = data_parallel_size(mesh)
        # Ahead-of-time executables keyed by phase, bucket and static settings (like jit's own cache,
        # but compiling explicitly lets the Sampler time compilation separately); freed with the Sampler.
        self._executables: dict[tuple, Any] = {}

    def __call__(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        eos_ids: Sequence[int] = (),
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        force_first_token: int | Sequence[int | None] | None = None,
        keep_logits: bool = False,
    ) -> SamplerOutput:
        """Generates for every prompt; see :func:`generate` for the arguments."""
        prompts = [list(map(int, p)) for p in prompt_ids]
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"generate: prompt {i} is empty; every prompt needs at least one token")
        if max_new_tokens < 1:
            raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
        if force_first_token is None or isinstance(force_first_token, int | np.integer):
            forced = [force_first_token] * len(prompts)
        else:
            forced = list(force_first_token)
            if len(forced) != len(prompts):
                raise ValueError(f"generate: force_first_token has {len(forced)} entries for {len(prompts)} prompts")
        sampling = SamplingParams(float(temperature), top_k, top_p)
        eos_e = np.asarray(sorted({int(e) for e in eos_ids}), np.int32)
        rng = jax.random.key(seed)
        out = SamplerOutput(tokens=[], logprobs=[], logits=[] if keep_logits else None, num_generated=0, seconds=0.0)
        # Chunks of similar length pad less (prompts longer than a chunk's bucket are rare); the
        # results are put back in input order below.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if self.sort_by_length else None
        if order is not None:
            prompts, forced = [prompts[i] for i in order], [forced[i] for i in order]
        start = time.perf_counter()
        for chunk_index, lo in enumerate(range(0, len(prompts), self.max_batch_size)):
            chunk = slice(lo, lo + self.max_batch_size)
            chunk_rng = jax.random.fold_in(rng, chunk_index)
            self._run_chunk(prompts[chunk], forced[chunk], eos_e, chunk_rng, max_new_tokens, sampling,
                            keep_logits, out)
        out.seconds = time.perf_counter() - start - out.compile_seconds
        if order is not None:
            inverse = np.argsort(order)
            out.tokens = [out.tokens[i] for i in inverse]
            out.logprobs = [out.logprobs[i] for i in inverse]
            if keep_logits:
                out.logits = [out.logits[i] for i in inverse]
        out.num_generated = sum(len(t) for t in out.tokens)
        out.num_prompt_tokens = sum(len(p) for p in prompts)
        return out

    def compile_counts(self) -> dict[str, int]:
        """How many programs this Sampler has compiled per phase (one per bucket and static setting)."""
        return {name: sum(key[0] == name for key in self._executables) for name in ("prefill", "decode_loop")}

    def _compiled(self, name: str, key: tuple, out: SamplerOutput, lower: Any) -> Any:
        """The executable of ``name`` for ``key``, compiled ahead of time once per Sampler (timed into ``out``)."""
        exe = self._executables.get((name, key))
        if exe is None:
            start = time.perf_counter()
            exe = self._executables[(name, key)] = lower().compile()
            out.compile_seconds += time.perf_counter() - start
        return exe

    def _run_chunk(self, prompts, forced, eos_e, rng, max_new_tokens, sampling, keep_logits, out) -> None:
        n = len(prompts)
        b = bucket_size(n, self.batch_buckets, multiple=self.data_parallel)
        t = bucket_size(max(len(p) for p in prompts), self.prompt_buckets, minimum=DEFAULT_MIN_PROMPT_BUCKET,
                        half_steps=True)
        prompt_bt = np.full((b, t), self.pad_id, np.int32)
        mask_bt = np.zeros((b, t), np.int32)
        for i, p in enumerate(prompts):
            prompt_bt[i, t - len(p):] = p
            mask_bt[i, t - len(p):] = 1
        mask_bt[n:, -1] = 1  # batch-padding rows hold one (pad) token so no row is empty
        active_b = np.arange(b) < n
        force_b = np.full((b,), -1, np.int32)
        for i, f in enumerate(forced):
            if f is not None:
                force_b[i] = int(f)
        arrays = batch_arrays((prompt_bt, mask_bt, active_b, force_b), self.mesh)
        key = (self.graphdef, self.mesh, b, t, len(eos_e), max_new_tokens, sampling, self.pad_id, keep_logits)
        with mesh_context(self.mesh):
            prefill_args = (self.params, *arrays, eos_e, rng)
            run_prefill = self._compiled("prefill", key, out, lambda: prefill.lower(
                self.graphdef, *prefill_args, max_new_tokens=max_new_tokens, sampling=sampling, pad_id=self.pad_id,
                keep_logits=keep_logits))
            state = run_prefill(*prefill_args)
            run_decode = self._compiled("decode_loop", key, out, lambda: decode_loop.lower(
                self.graphdef, self.params, state, eos_e, sampling=sampling, pad_id=self.pad_id))
            state = run_decode(self.params, state, eos_e)
            tokens_bn, logprobs_bn, steps = fetch((state.tokens_bn, state.logprobs_bn, state.step))
            logits_bnv = fetch(state.logits_bnv) if keep_logits else None
        eos = set(eos_e.tolist())
        for i in range(n):
            row = tokens_bn[i, : int(steps)].tolist()
            length = next((j + 1 for j, tok in enumerate(row) if tok in eos), len(row))
            out.tokens.append(row[:length])
            out.logprobs.append(logprobs_bn[i, :length].tolist())
            if keep_logits:
                out.logits.append(np.asarray(logits_bnv[i, :length]))


def generate(
    model: Decoder,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    force_first_token: int | Sequence[int | None] | None = None,
    mesh: Mesh | None = None,
    pad_id: int | None = None,
    prompt_buckets: Sequence[int] | None = None,
    max_batch_size: int = 64,
) -> list[list[int]]:
    """Generates a continuation for each prompt; returns the new ids (up to and including an EOS).

    prompt_ids:         ragged list of token-id lists (each non-empty).
    max_new_tokens:     token budget per prompt.
    eos_ids:            a row stops after emitting any of these (e.g. ``config.stop_token_ids``).
    temperature:        0 = greedy; otherwise sample from softmax(logits / temperature).
    top_k, top_p:       restrict sampling to the k most likely tokens / the top-p probability mass.
    seed:               PRNG seed; the same seed and inputs give the same tokens.
    force_first_token:  one id for every prompt, or one per prompt (None = model's choice): the first
                        generated token is forced, e.g. a behavior token to steer the reply.
    mesh, pad_id, prompt_buckets, max_batch_size: see :class:`Sampler`. For repeated calls build a
    :class:`Sampler` once (it splits and places the weights once).
    """
    sampler = Sampler(model, mesh=mesh, pad_id=pad_id, prompt_buckets=prompt_buckets, max_batch_size=max_batch_size)
    return sampler(prompt_ids, max_new_tokens=max_new_tokens, eos_ids=eos_ids, temperature=temperature, top_k=top_k,
                   top_p=top_p, seed=seed, force_first_token=force_first_token).tokens
