"""densa: pretraining and finetuning toolkit for LMs dense in capacity, sparse in compute."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="densa",
    version="0.1.0",
    description="Pretraining and finetuning toolkit for LMs dense in capacity and sparse in compute",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["densa", "densa.*"]),
    package_data={"densa": ["py.typed", "models/hf/remote_code/*.py", "kernels/csrc/*.c"]},
    install_requires=[
        "torch==2.13.0",
        "numpy",
        "transformers>=4.45",
        "datasets",
        "sentencepiece",
        "safetensors",
        "pyyaml",
        "tensorboard",
        "deepspeed",
        "psutil",
        "megatron-core",
        "triton",
        "tqdm",
        "pyarrow",
        "protobuf",
        "gguf",
        "accelerate",
        "peft",
    ],
    extras_require={
        # wandb is optional for users (`logging.wandb`), installed for tests so CI exercises it.
        "dev": ["pytest", "pytest-timeout", "ruff", "matplotlib", "wandb"],
        "wandb": ["wandb"],
        # lm-evaluation-harness: runs densa's density task files on exported HF folders (add_bos_token=False).
        "eval": ["lm-eval"],
        "gpu": [],
    },
    entry_points={"console_scripts": ["densa=densa.launch.cli:main"]},
)
