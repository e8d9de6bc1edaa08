"""Tiny fixtures for the inference/export tests: a SentencePiece tokenizer, a ReLU decoder, a fake run dir.

The run dir follows densa.train.checkpoint's layout (recipe.yaml, metrics.jsonl, checkpoints/step_N with
deepspeed/mp_rank_00_model_states.pt + COMPLETE) without running DeepSpeed, which would cost seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from densa.models.config import ModelConfig
from densa.models.transformer import Transformer

WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog",
    "hello", "world", "data", "token", "model", "train", "sparse",
)  # fmt: skip


def tiny_model(
    vocab_size: int, *, gated: bool = False, activation: str = "relu", seed: int = 0
) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=vocab_size,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=64,
        activation=activation,
        gated=gated,
        init_std=0.2,  # well-separated logits: greedy ties would make path comparisons flaky
        max_seq_len=128,
    )
    return Transformer(config).eval()


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> Path:
    from densa.data.sp_train import train_sentencepiece

    rng = random.Random(0)
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(400))
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return train_sentencepiece([corpus], tmp_path_factory.mktemp("sp"), vocab_size=320, num_threads=1)


@pytest.fixture(scope="session")
def relu_model(sp_model) -> Transformer:
    from densa.data.tokenizer import load_tokenizer

    return tiny_model(load_tokenizer(sp_model).vocab_size)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, sp_model, relu_model) -> Path:
    """RUN/{recipe.yaml, metrics.jsonl, sparsity.json, data/train.json, checkpoints/step_{2,4}}."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    (run / "data").mkdir(parents=True)
    manifest = {
        "tokenizer_fingerprint": "x", "tokenizer_path": str(sp_model), "vocab_size": 120,
        "bos_id": 1, "eos_id": 2, "dtype": "uint16", "num_documents": 7, "num_tokens": 1234,
        "sources": ["corpus.txt"],
    }  # fmt: skip
    (run / "data" / "train.json").write_text(json.dumps(manifest), encoding="utf-8")
    c = relu_model.config
    recipe = (
        f"run: {{name: tiny, out_dir: {run}}}\n"
        f"model: {{vocab_size: {c.vocab_size}, dim: {c.dim}, n_layers: {c.n_layers}, n_heads: {c.n_heads},"
        f" n_kv_heads: {c.n_kv_heads}, ffn_dim: {c.ffn_dim}, activation: relu, gated: false,"
        f" init_std: {c.init_std}, max_seq_len: {c.max_seq_len}}}\n"
        f"data:\n  train:\n    - {{path: data/train}}\n  seq_len: 32\n  tokenizer: {sp_model}\n"
    )
    (run / "recipe.yaml").write_text(recipe, encoding="utf-8")
    records = [
        {"step": 2, "train/loss": 4.5},
        {"step": 2, "val/loss": 4.25, "val/ppl": 70.1},
        {"step": 4, "train/loss": 3.875},
        {"step": 4, "val/loss": 3.5, "val/ppl": 33.115},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    for step, scale in ((2, 0.5), (4, 1.0)):
        ckpt = run / "checkpoints" / f"step_{step}"
        (ckpt / "deepspeed").mkdir(parents=True)
        state = {
            k: v * scale if k.endswith("norm.weight") is False else v
            for k, v in relu_model.state_dict().items()
        }
        torch.save({"module": state}, ckpt / "deepspeed" / "mp_rank_00_model_states.pt")
        (ckpt / "recipe.yaml").write_text(recipe, encoding="utf-8")
        (ckpt / "train_state.json").write_text(json.dumps({"step": step}), encoding="utf-8")
        (ckpt / "COMPLETE").write_text("", encoding="utf-8")
    report = {
        "p": 1.0, "cett_target": 0.0, "ppl_dense": 33.0, "ppl_sparse": 33.0, "converged": True,
        "num_tokens": 64,
        "layers": [{"layer": i, "threshold": 0.0, "cett": 0.0, "sparsity": 0.5} for i in range(c.n_layers)],
    }  # fmt: skip
    (run / "sparsity.json").write_text(json.dumps(report), encoding="utf-8")
    return run


@pytest.fixture(scope="session")
def exported(tmp_path_factory, run_dir) -> Path:
    """`densa export RUN --out DIR` output (the newest checkpoint)."""
    from densa.launch.cli import main

    out = tmp_path_factory.mktemp("export") / "hf"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    return out
