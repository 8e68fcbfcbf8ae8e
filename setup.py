from setuptools import find_packages, setup

setup(
    name="disrouter_jax",
    version="0.1.0",
    description="DiSRouter (Distributed Self-Routing for LLM Selections) in JAX/Flax NNX",
    packages=find_packages(include=["disrouter_jax", "disrouter_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12",
        "transformers>=5.0",
        "tokenizers",
        "safetensors",
        "datasets",
        "sentencepiece",
        "numpy",
        "absl-py",
        "ml_collections",
        "tqdm",
        "matplotlib",
        "tensorboardX",
        "fastapi",
        "uvicorn",
        # uvicorn picks them up itself: a C HTTP parser and event loop instead of h11 and
        # asyncio's, less host time per request (what bounds the server on a few cores).
        "httptools",
        "uvloop",
        "prometheus_client",
    ],
    extras_require={
        # Object-store workdirs (disrouter_jax/storage.py): gs:// through gcsfs, s3:// through s3fs.
        "gcs": ["gcsfs"],
        "s3": ["s3fs"],
        # aiohttp: benchmarks/serve.py's load generator; the object-store tests serve a real GCS
        # JSON API on 127.0.0.1 (gcp-storage-emulator).
        "test": ["pytest", "torch==2.13.0", "openai", "httpx", "aiohttp", "gcsfs", "gcp-storage-emulator"],
        # The benchmarks' JAX contender (benchmarks/tunix_contender.py). google-tunix 0.1.7 pins
        # safetensors<0.8 and so asks pip for an older transformers; on such a resolve install it
        # with --no-deps plus the few modules its Qwen2 and Sampler import (the list below).
        "bench": ["google-tunix>=0.1.7", "google-metrax", "jaxtyping", "einops", "perfetto"],
    },
)
