"""Setting a run up, shared by train, evaluate and export: ``settings`` (the typed pieces a run resolves its
config into), ``config`` (the ml_collections schema, ``default_config``, validation, ``resolve``), ``sources``
(the configured data splits as records), ``model_setup`` (the tokenizer and model for a run) and ``cli``
(absl flag parsing and logging for every CLI).

One layer (tests/test_layering.py), above models, behavior, data and the checkpoint format
(:mod:`bsft_jax.checkpoint.layout`, whose folder names set-up writes the tokenizer and model config under)
and below the rest of :mod:`bsft_jax.checkpoint`, which rebuilds a LoRA run's base model with
``model_setup``. ``cli`` imports nothing of bsft_jax and sits in the bottom layer. Named for what it does
(the old name, ``bsft_jax.run``, clashed with the function :func:`bsft_jax.train.run`)."""
