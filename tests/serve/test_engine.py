"""The server's device side: bucketed, chunked batches equal ``bsft_jax.generate`` row by row, whatever shares
the batch; per-row budgets, forcing, seeded sampling and cancellation; no recompiles within a bucket."""

from __future__ import annotations

from bsft_jax.decode.sampler import Sampler
from bsft_jax.models.hf import load_hf
from bsft_jax.serve.engine import Engine, Row
from tests.helpers import save_tiny


def test_engine_rows_equal_generate_and_do_not_depend_on_their_batch(tmp_path):
    model, config = load_hf(save_tiny(tmp_path, "qwen2")[0])
    prompts = [[5, 17, 42], [9, 8, 7, 6, 5, 4, 3, 2, 1, 100, 200], [33, 66, 99, 132, 165, 198]]
    eos = config.stop_token_ids
    engine = Engine(model, eos_ids=eos, max_batch_size=4, chunk=3)
    sampler = Sampler(model)  # what bsft_jax.generate builds per call; built once, its programs compiled once

    def generate(prompts, **kwargs):
        return sampler(prompts, **kwargs).tokens

    def run(rows):
        batch = engine.start(rows)
        while not engine.finished(batch):
            engine.step(batch)
        return batch.tokens

    want = generate(prompts, max_new_tokens=10, eos_ids=eos)
    assert run([Row(p, 10) for p in prompts]) == want
    # per-row budgets, forcing and seeded sampling: a row's tokens are its own, whatever shares the batch
    mixed = [Row(prompts[0], 4, force_first_token=7), Row(prompts[1], 10, temperature=1.0, top_p=0.8, seed=5),
             Row(prompts[2], 10)]
    together = run(mixed)
    assert together[0] == generate(prompts[:1], max_new_tokens=4, eos_ids=eos, force_first_token=7)[0]
    assert together[2] == want[2]
    assert run(mixed[1:2]) == [together[1]]
    # cancelling a row stops it at once; the others go on
    batch = engine.start([Row(p, 10) for p in prompts])
    engine.step(batch, cancel=[1])
    while not engine.finished(batch):
        engine.step(batch)
    assert len(batch.tokens[1]) == 1 and batch.tokens[0] == want[0] and batch.tokens[2] == want[2]
    counts = engine.compile_counts()
    assert counts["prefill"] == 2  # batch buckets 4 and 1, one prompt bucket, one budget bucket
    assert run([Row(p[1:], 9) for p in prompts]) and engine.compile_counts() == counts  # same buckets: no compile
