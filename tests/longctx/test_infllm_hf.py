"""InfLLM on HF Llama-family models imported by densa (in-process tiny transformers models, fp32): where
InfLLM must equal full attention, it equals the HF model's own logits."""

from __future__ import annotations

import pytest
import torch

from densa.longctx.infllm import InfLLMConfig, InfLLMContext
from densa.models.hf import load_hf_model
from densa.models.hf.parity import tiny_hf_model

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [
        ("llama", {}),
        ("qwen2", {}),
        ("llama", {"rope_scaling": LLAMA3}),
        ("mistral", {"sliding_window": None}),
    ],
    ids=["llama", "qwen2_qkv_bias", "llama3_rope_scaling", "mistral"],
)
def test_infllm_matches_the_hf_model_where_it_must(model_type, overrides, tmp_path) -> None:
    hf = tiny_hf_model(model_type, **overrides).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf_model(tmp_path / "hf")
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(ids).logits
    wide = InfLLMConfig(n_init=4, n_local=64, block_size=8, repr_topk=2, topk=2, exc_block_size=7)
    every_unit = InfLLMConfig(
        n_init=2, n_local=8, block_size=4, repr_topk=2, topk=64, exc_block_size=5, max_cached_units=64,
        memory_positions="original",
    )  # fmt: skip
    for cfg in (wide, every_unit):
        got = InfLLMContext(model, cfg).forward(ids)
        assert (got - ref).abs().max() <= 1e-5, cfg
