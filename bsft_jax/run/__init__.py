"""Run plumbing shared by train, evaluate and export, in two layers below all three (tests/test_layering.py):
``settings``, ``config`` (the ml_collections schema and validation) and ``sources`` (the configured data
splits as records) first; then the checkpoint layer: ``layout`` (the on-disk format, ``meta``, no JAX),
``model_setup`` (tokenizer + model for a run), ``lora`` (the base reference of a LoRA checkpoint, its
rebuild, the shapes of the trained arrays), ``host`` (a step's arrays on the host, a LoRA step merged
there), ``checkpoint`` (the Orbax manager, reading a step onto devices) and ``recovery`` (damaged steps).
None of them imports train, evaluate or export. ``cli`` (absl flag parsing, logging) imports nothing of
bsft_jax and sits in the bottom layer."""
