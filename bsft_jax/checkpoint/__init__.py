"""A training run's checkpoints, written by train and read by evaluate, export and serve: ``layout`` (the
on-disk format and ``meta``, no JAX), ``manager`` (the Orbax manager: save, restore, failures named),
``lora_base`` (a LoRA checkpoint's base reference, its rebuild, the trained arrays' shapes), ``host`` (a
step's arrays on the host, a LoRA step merged there), ``recovery`` (damaged steps set aside) and ``lease``
(one writer per run folder).

It imports none of its users (train, evaluate, export, serve: tests/test_layering.py), so each of them
reads a step the same way. ``layout`` sits in a layer of its own below :mod:`bsft_jax.setup`; the rest sits
above it."""
