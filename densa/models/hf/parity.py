"""Numerical parity between a densa Transformer and a transformers model, block by block.

Comparing only keys and shapes lets a conversion with large logit errors pass; comparing per-block
residual streams names the first block that diverges, which is where a mapping bug lives.
densa's `layers.{i}.hook_resid` is compared with HF `output_hidden_states[i + 1]` (the input of block
i + 1); HF's last hidden state is already final-normed, so the last block is compared after `norm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from densa.models.hooks import capture
from densa.models.transformer import Transformer

# Small enough for a fast test, big enough for GQA (4 query / 2 KV heads) and two blocks.
TINY_HF = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)


@dataclass(frozen=True)
class ParityReport:
    blocks: list[tuple[str, float]]
    """(densa block name, max |densa - HF|) for each block's output."""
    logits_max_abs: float

    def first_divergent(self, atol: float) -> str | None:
        """Name of the first block whose output differs by more than atol, else None."""
        return next((name for name, diff in self.blocks if diff > atol), None)

    def summary(self) -> str:
        rows = [f"{name}: {diff:.3g}" for name, diff in self.blocks]
        return "; ".join([*rows, f"logits: {self.logits_max_abs:.3g}"])


@torch.no_grad()
def compare_with_hf(model: Transformer, hf_model: Any, input_ids: torch.Tensor) -> ParityReport:
    """Run both models on input_ids [B, T] and diff every block output and the logits."""
    with capture(model, "hook_resid") as records:
        logits = model(input_ids)
    hf_out = hf_model(input_ids, output_hidden_states=True)
    hidden = hf_out.hidden_states
    n = model.config.n_layers
    if len(hidden) != n + 1:
        raise ValueError(f"HF returned {len(hidden)} hidden states for {n} blocks (expected {n + 1})")
    blocks = []
    for i in range(n):
        ours = records[f"layers.{i}.hook_resid"][0]
        if i == n - 1:
            ours = model.norm(ours)
        theirs = hidden[i + 1].to(ours.dtype)
        blocks.append((f"layers.{i}", float((ours - theirs).abs().max())))
    logits_diff = float((logits - hf_out.logits.to(logits.dtype)).abs().max())
    return ParityReport(blocks, logits_diff)


def tiny_hf_model(model_type: str = "llama", seed: int = 0, **overrides: Any) -> Any:
    """An fp32 transformers model of `model_type` from a tiny config, with every weight randomised.

    HF initialises norms to 1 and biases to 0, which would hide swapped norms or dropped biases;
    here every tensor gets seeded noise so each one matters.
    """
    import transformers

    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }
    config_cls, model_cls = classes[model_type]
    config = config_cls(**{**TINY_HF, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.05 * noise)
    return model
