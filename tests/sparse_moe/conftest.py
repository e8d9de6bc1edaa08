"""Tiny seeded models shared by the sparse_moe tests."""

from __future__ import annotations

import torch

from densa.models import ModelConfig, Transformer


def tiny_config(
    gated: bool = True, activation: str = "silu", ffn_dim: int = 64, n_layers: int = 2
) -> ModelConfig:
    return ModelConfig(
        vocab_size=64,
        dim=32,
        n_layers=n_layers,
        n_heads=4,
        ffn_dim=ffn_dim,
        gated=gated,
        activation=activation,
        max_seq_len=64,
    )


def tiny_model(gated: bool = True, activation: str = "silu", seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(tiny_config(gated, activation, **kw))
    with torch.no_grad():  # larger FFN weights than init_std so activations (and routing) are not all alike
        for layer in model.layers:
            for p in layer.ffn.parameters():
                p.normal_(0.0, 0.2)
    return model


def adam_steps(model: Transformer, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        tokens = torch.randint(0, model.config.vocab_size, (2, 9), generator=gen)
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
