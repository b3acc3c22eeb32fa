"""The compiled LoRA step computes no gradient for the frozen base (issue 28).

With a frozen base, the backward pass needs the activation gradient through every frozen matmul
but never its weight gradient, and the few trainable behavior rows need no work over the whole
[V, D] table. Both are read off the compiled program (XLA:CPU HLO text): a weight gradient is a
``dot`` whose output has a frozen matrix's size; full-table work is any materialised (unfused)
instruction shaped like the table. The full fine-tuning step of the same model is the control: it
must show exactly one weight-gradient dot per frozen matrix, so the counter is known to see them.

The sizes below are chosen so that no activation, adapter or layer stack has a frozen matrix's
element count (40 tokens, loss chunks of 8, D=48, N*H=32, K*H=16, F=80, V=176, rank 4).
"""

from __future__ import annotations

import re
from collections import Counter

import jax
import ml_collections
import pytest

from bsft_jax.models import DecoderConfig
from bsft_jax.models.lora import LoraConfig
from bsft_jax.models.sharding import make_mesh
from bsft_jax.train.lora import LoraTrainer
from bsft_jax.train.optim import make_optimizer
from bsft_jax.train.step import Trainer

BATCH, SEQ = 2, 20
D, N, K, H, F, V = 48, 4, 2, 8, 80, 176
ROWS = (170, 171, 172)
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\S* (\S+?)\(")
_PLUMBING = {"parameter", "bitcast", "get-tuple-element", "tuple", "constant"}


def _config(tie: bool) -> DecoderConfig:
    return DecoderConfig(model_type="llama", vocab_size=V, hidden_size=D, intermediate_size=F, num_layers=2,
                         num_heads=N, num_kv_heads=K, head_dim=H, tie_word_embeddings=tie)


# element count -> frozen matrices of that size: q and o; k and v; gate, up and down; the LM head
# (tied or not: the embedding's own gradient is a scatter, not a dot)
FROZEN_MATMULS = {D * N * H: 2, D * K * H: 2, D * F: 3, V * D: 1}


def _instructions(hlo: str) -> list[tuple[str, str, tuple[int, ...], bool, str]]:
    """``(name, op, shape, materialised, kind)`` of every array instruction of the module.

    ``materialised``: outside a fusion body (fused instructions are computed element by element);
    ``kind``: the op, or for a fusion its body's root op (``wrapped_copy`` -> ``copy``)."""
    fused, roots, comp, rows = set(re.findall(r" fusion\(.*calls=%([\w.\-]+)", hlo)), {}, None, []
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
        if head and not line.startswith(" "):
            comp = head.group(1)
            continue
        m = _INSTR.match(line)
        if m:
            shape = tuple(int(s) for s in m.group(3).split(",") if s)
            calls = re.search(r"calls=%([\w.\-]+)", line)
            rows.append((m.group(1), m.group(4), shape, comp not in fused, calls.group(1) if calls else None))
            if line.lstrip().startswith("ROOT"):
                roots[comp] = m.group(4)
    return [(name, op, shape, real, roots.get(calls, op) if op == "fusion" else op)
            for name, op, shape, real, calls in rows]


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def weight_gradient_dots(hlo: str, sizes: dict[int, int]) -> list[tuple[str, tuple[int, ...]]]:
    """The dots whose output has a frozen matrix's element count (weight gradients; a scanned layer's once)."""
    return [(name, shape) for name, op, shape, _, _ in _instructions(hlo) if op == "dot" and _size(shape) in sizes]


def table_sized(hlo: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, kind, shape)`` of the materialised instructions shaped like the [V, D] table (or its
    transpose): work over the whole table."""
    return [(name, kind, shape) for name, _, shape, real, kind in _instructions(hlo)
            if real and kind not in _PLUMBING and sorted(shape) == sorted((V, D))]


def _compiled(tie: bool, lora: bool, loss_impl: str) -> str:
    opt = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=0, min_lr_ratio=0.1, b1=0.9, b2=0.98,
                                         eps=1e-8, weight_decay=0.01, grad_clip_norm=1.0, decay_embeddings=False))
    tx, schedule = make_optimizer(opt, 10)
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    config, options = _config(tie), dict(loss_impl=loss_impl, loss_chunk=8, loss_budget=0.5)
    with jax.set_mesh(mesh):
        if lora:
            trainer = LoraTrainer(config, tx, schedule, mesh, lora=LoraConfig(rank=4, alpha=8.0), behavior_ids=ROWS,
                                  **options)
        else:
            trainer = Trainer(config, tx, schedule, mesh, **options)
        return trainer.compile(BATCH, SEQ).as_text()


@pytest.mark.parametrize("tie,loss_impl", [(True, "full"), (False, "full"), (True, "chunked")])
def test_lora_step_has_no_weight_gradient_of_the_frozen_base(tie, loss_impl):
    full = _compiled(tie, lora=False, loss_impl=loss_impl)
    # the control: full fine-tuning has a weight-gradient dot for every frozen matrix (the chunked
    # loss has its head in both branches of the budget's fallback), and work over the whole table
    found = Counter(_size(shape) for _, shape in weight_gradient_dots(full, FROZEN_MATMULS))
    assert all(found[size] >= n for size, n in FROZEN_MATMULS.items()), found
    assert [op for _, op, _ in table_sized(full) if op != "copy"]
    lora = _compiled(tie, lora=True, loss_impl=loss_impl)
    assert weight_gradient_dots(lora, FROZEN_MATMULS) == []
    table_ops = table_sized(lora)
    if loss_impl == "chunked":
        # The chunked loss carries the [D, V] head through its chunk loop, and XLA:CPU gives that
        # carry a row-major layout: a transposed copy of the frozen table per branch, in full
        # fine-tuning alike (bsft_jax/train/chunked_loss.py). Layout, not gradient work.
        table_ops = [t for t in table_ops if t[1] != "copy"]
    assert table_ops == []
