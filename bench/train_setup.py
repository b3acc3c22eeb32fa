"""The two training loops the benchmarks compare, built on the same model, batch and optimizer settings.

* :class:`JaxTrainLoop`: bsft_jax's real :class:`~bsft_jax.train.step.Trainer` step (compiled once ahead
  of time, state donated), AdamW from :func:`bsft_jax.train.optim.make_optimizer`.
* :class:`TorchTrainLoop`: transformers ``Qwen2ForCausalLM`` with ``torch.optim.AdamW``, the same
  learning-rate schedule, weight-decay groups (``*_proj`` weights only), global-norm clipping and
  the same masked next-token cross-entropy on the same tokens.

Both run on one synthetic batch of full rows (no packing, every target counted), since packed
rows would need a varlen attention kernel on the torch side; the JAX step still builds its
segment mask, as it does in training.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from bench.common import hf_qwen2_config

# The optimizer every loop uses (the demo recipe's values; clipping at 1.0).
OPTIMIZER = dict(learning_rate=1e-3, warmup_steps=10, min_lr_ratio=0.1, b1=0.9, b2=0.98, eps=1e-8,
                 weight_decay=0.01, grad_clip_norm=1.0, decay_embeddings=False)
TOTAL_STEPS = 10_000


def synthetic_batch(vocab_size: int, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One batch in the trainer's contract: random tokens, next-token targets, all positions counted."""
    rng = np.random.RandomState(seed)
    stream_bt = rng.randint(0, vocab_size, (batch, seq_len + 1)).astype(np.int32)
    return {
        "tokens": stream_bt[:, :-1].copy(),
        "targets": stream_bt[:, 1:].copy(),
        "loss_mask": np.ones((batch, seq_len), np.int32),
        "segment_ids": np.ones((batch, seq_len), np.int32),
        "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy(),
    }


def decoder_config(arch: dict[str, Any], **overrides: Any):
    """A :class:`DecoderConfig` from one of ``bench.common.SIZES`` (or a preset's fields)."""
    from bsft_jax.models.config import DecoderConfig

    return DecoderConfig(**{**arch, **overrides})


class JaxTrainLoop:
    """bsft_jax's Trainer on a one-device mesh: ``compile_seconds`` after construction, ``run(n)`` steps."""

    def __init__(self, config: Any, batch: int, seq_len: int, *, seed: int = 0, device: Any = None,
                 model: Any = None, trainer_options: dict[str, Any] | None = None):
        """``model``: start from these (e.g. pretrained) weights instead of a random init of ``config``;
        ``trainer_options``: extra keyword arguments of the Trainer (``loss_impl``, ``loss_budget``, ...)."""
        import jax
        import ml_collections
        from flax import nnx

        from bsft_jax.models.decoder import Decoder
        from bsft_jax.models.sharding import make_mesh
        from bsft_jax.train.optim import make_optimizer
        from bsft_jax.train.step import Trainer

        self.config = config
        device = device or jax.devices()[0]
        self.mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, [device])
        tx, schedule = make_optimizer(ml_collections.ConfigDict(OPTIMIZER), TOTAL_STEPS)
        with jax.set_mesh(self.mesh):
            model = model if model is not None else Decoder(config, rngs=nnx.Rngs(params=seed))
            self.num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
            self.trainer = Trainer(model.config, tx, schedule, self.mesh, **(trainer_options or {}))
            self.state = self.trainer.init_state(model, seed)
            del model
            t0 = time.perf_counter()
            self.trainer.compile(batch, seq_len)
            self.compile_seconds = time.perf_counter() - t0
        host = synthetic_batch(config.vocab_size, batch, seq_len, seed)
        self.batch = {k: jax.device_put(v, self.trainer.batch_sharding) for k, v in host.items()}
        self.tokens_per_step = batch * seq_len
        self.last_loss = float("nan")

    def run(self, steps: int) -> float:
        """Runs ``steps`` updates (dispatched back to back) and waits for the last; returns seconds."""
        import jax

        t0 = time.perf_counter()
        metrics = None
        for _ in range(steps):
            self.state, metrics = self.trainer.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        seconds = time.perf_counter() - t0
        self.last_loss = float(metrics["loss"])
        return seconds


def _torch_lr_lambda(step: int) -> float:
    """bsft_jax.train.optim.learning_rate_schedule as a multiplier of the peak (LambdaLR)."""
    o = OPTIMIZER
    warmup = max(int(o["warmup_steps"]), 1)
    if step < o["warmup_steps"]:
        return (step + 1) / warmup
    progress = min(max((step - o["warmup_steps"]) / max(TOTAL_STEPS - o["warmup_steps"], 1), 0.0), 1.0)
    floor = o["min_lr_ratio"]
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class TorchTrainLoop:
    """transformers Qwen2ForCausalLM + torch.optim.AdamW, fp32 eager; ``run(n)`` steps.

    attn:   transformers attention implementation ("sdpa" or "eager").
    adamw:  "fused", "foreach" or "for-loop" (torch.optim.AdamW's implementation switch).
    """

    def __init__(self, arch: dict[str, Any] | Any, batch: int, seq_len: int, *, attn: str = "sdpa",
                 adamw: str = "fused", seed: int = 0, device: str = "cpu", autocast: str | None = None):
        """``arch``: a ``bench.common.SIZES`` entry or a transformers config. ``device="cuda"`` with
        ``autocast="bfloat16"`` is the usual mixed-precision GPU loop (fp32 weights and AdamW state,
        bf16 matmuls under ``torch.autocast``), the numerics of bsft_jax's bf16/fp32 configs."""
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        hf_config = hf_qwen2_config(arch) if isinstance(arch, dict) else arch
        hf_config._attn_implementation = attn
        hf_config.attention_dropout = 0.0
        self.device = torch.device(device)
        self.autocast = getattr(torch, autocast) if autocast else None
        # eval(): no dropout anywhere (there is none in Qwen2 at 0.0, this makes sure); autograd still runs.
        self.model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).to(self.device).eval()
        self.num_params = sum(p.numel() for p in self.model.parameters())
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            # Same rule as bsft_jax.train.optim.decays: projection matrices only (not norms, biases, embedding).
            (decay if name.endswith("_proj.weight") else no_decay).append(p)
        o = OPTIMIZER
        impl = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[adamw]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o["learning_rate"], betas=(o["b1"], o["b2"]), eps=o["eps"], **impl)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _torch_lr_lambda)
        self.params = [p for p in self.model.parameters()]
        host = synthetic_batch(hf_config.vocab_size, batch, seq_len, seed)
        self.batch = {k: torch.from_numpy(v).long().to(self.device) for k, v in host.items()}
        self.tokens_per_step = batch * seq_len
        self.last_loss = float("nan")
        self.settings = {"attn_implementation": attn, "adamw": adamw, "threads": torch.get_num_threads(),
                         "device": str(self.device), "autocast": autocast}

    def _step(self):
        import torch
        import torch.nn.functional as F

        b = self.batch
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            logits_btv = self.model(input_ids=b["tokens"], position_ids=b["positions"], use_cache=False).logits
        ce_bt = F.cross_entropy(logits_btv.float().flatten(0, 1), b["targets"].flatten(), reduction="none")
        mask = b["loss_mask"].flatten().float()
        loss = (ce_bt * mask).sum() / mask.sum().clamp(min=1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, OPTIMIZER["grad_clip_norm"], foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        return loss

    def run(self, steps: int) -> float:
        """Runs ``steps`` updates and waits for the device; returns seconds."""
        import torch

        t0 = time.perf_counter()
        loss = None
        for _ in range(steps):
            loss = self._step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        self.last_loss = float(loss.detach())
        return seconds
