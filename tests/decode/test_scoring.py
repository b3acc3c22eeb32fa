"""Continuation log-likelihoods (multiple-choice ranking) against transformers, sharded, bucketed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bsft_jax.decode.scoring import Scorer, continuation_logprobs
from bsft_jax.models.hf import load_hf
from bsft_jax.models.sharding import make_mesh
from tests.helpers import save_tiny

PREFIXES = [[5, 17, 42], [9, 8, 7, 6, 5, 4, 3, 2, 1], [33]]
CONTINUATIONS = [[1, 2], [100], [7, 8, 9, 10]]
ATOL = 1e-4  # summed fp32 log-probs over <= 4 tokens vs torch


def _torch_scores(model, prefixes, continuations):
    out = []
    for p, c in zip(prefixes, continuations):
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0].double()
        logprobs = torch.log_softmax(logits, -1)
        out.append(sum(float(logprobs[len(p) - 1 + j, tok]) for j, tok in enumerate(c)))
    return out


def test_continuation_logprobs_match_transformers(tmp_path):
    folder, torch_model = save_tiny(tmp_path, "llama")
    model, _ = load_hf(folder)
    scorer = Scorer(model, batch_size=2)
    ours = scorer(PREFIXES, CONTINUATIONS)
    np.testing.assert_allclose(ours, _torch_scores(torch_model, PREFIXES, CONTINUATIONS), atol=ATOL, rtol=0)
    np.testing.assert_allclose(continuation_logprobs(model, PREFIXES, CONTINUATIONS, batch_size=2), ours, atol=0,
                               rtol=0)
    before = scorer.compile_counts()
    # other lengths in the same buckets (length 16, batch 2): no new compilation
    again = scorer([[1] * 10, [2, 3]], [[4, 5], [6]])
    assert scorer.compile_counts() == before
    np.testing.assert_allclose(again, _torch_scores(torch_model, [[1] * 10, [2, 3]], [[4, 5], [6]]), atol=ATOL)
    sharded = continuation_logprobs(model, PREFIXES, CONTINUATIONS, mesh=make_mesh({"data": 4, "tensor": 2}))
    np.testing.assert_allclose(sharded, ours, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="empty"):
        continuation_logprobs(model, [[1]], [[]])
