"""Tiny models for the sparsity tests, trained for a few seconds on a low-entropy Markov chain.

A freshly initialised model is useless here: its perplexity can *drop* when activations are pruned, so the
PPL-p% search has nothing to find. Sixty AdamW steps give a model whose loss rises when neurons are removed.
"""

from __future__ import annotations

import pytest
import torch

from densa.models import ModelConfig, Transformer, causal_lm_loss

VOCAB = 32
SEQ = 32
TRAIN_TOKENS = 6000


def markov_tokens(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(VOCAB, VOCAB, generator=gen) * 3, -1)
    draws = torch.multinomial(probs, n, replacement=True, generator=gen)  # row v: successors of v
    x = torch.zeros(n, dtype=torch.long)
    for i in range(1, n):
        x[i] = draws[x[i - 1], i]
    return x


@pytest.fixture(scope="session")
def tokens() -> torch.Tensor:
    return markov_tokens(TRAIN_TOKENS + 16 * (SEQ + 1))


@pytest.fixture(scope="session")
def eval_seqs(tokens) -> torch.Tensor:
    return tokens[TRAIN_TOKENS:].reshape(16, SEQ + 1)


def tiny_config(activation: str = "relu", gated: bool = False, **kw) -> ModelConfig:
    return ModelConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, ffn_dim=64, activation=activation, gated=gated, **kw
    )


def train_tiny(config: ModelConfig, tokens: torch.Tensor, steps: int = 60) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add contention on a shared 2-core machine
    try:
        for _ in range(steps):
            starts = torch.randint(0, TRAIN_TOKENS - SEQ - 1, (16,), generator=gen)
            batch = torch.stack([tokens[s : s + SEQ + 1] for s in starts])
            loss = causal_lm_loss(model(batch[:, :-1]), batch[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def relu_model(tokens) -> Transformer:
    return train_tiny(tiny_config("relu"), tokens)


@pytest.fixture(scope="session")
def swiglu_model(tokens) -> Transformer:
    return train_tiny(tiny_config("silu", gated=True), tokens)
