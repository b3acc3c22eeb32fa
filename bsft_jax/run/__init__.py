"""Run plumbing shared by train, evaluate and export, in two layers below all three (tests/test_layering.py):
``settings``, ``config`` (the ml_collections schema and validation) and ``sources`` (the configured data
splits as records) first; then ``checkpoint`` (Orbax train state + run metadata), ``recovery``
(damaged steps), ``model_setup`` (tokenizer + model for a run) and ``lora`` (the base reference of a
LoRA checkpoint). ``cli`` (absl flag parsing, logging) imports nothing of bsft_jax and sits in the
bottom layer. One import still reaches up: ``checkpoint.load_params`` of a LoRA run merges it with
:mod:`bsft_jax.export.merge` (listed in the test; issue 26's checkpoint layer removes it)."""
