"""The OpenAI-compatible chat server (``python -m bsft_jax.serve``).

``chat`` (load the model, render messages, read the behavior and the text of a reply), ``engine``
(bucketed, chunked batch decoding on the device), ``batcher`` (the thread and queue that feed the
engine), ``protocol`` (the wire format and its checks), ``app`` (FastAPI routes), ``__main__`` (flags).
FastAPI and uvicorn are the ``serve`` extra: nothing outside this package imports them.
"""
