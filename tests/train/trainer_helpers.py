"""Shared by the trainer tests (imported by test modules and by the rank scripts they launch)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from densa.config.schema import (
    BatchSection,
    CheckpointSection,
    DataSection,
    DatasetSource,
    LoggingSection,
    OptimSection,
    ParallelSection,
    RunConfig,
    RunSection,
    ScheduleSection,
    TrainSection,
)
from densa.models.config import ModelConfig
from densa.train.callbacks import Callback

VOCAB, SEQ = 64, 16
REPO = Path(__file__).resolve().parents[2]
SFT_VOCAB = 320
SFT_WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
]


def sft_corpus(
    root: Path,
    *,
    examples: int = 40,
    prompt_words: tuple[int, int] = (1, 8),
    response_words: tuple[int, int] = (1, 6),
) -> tuple[Path, Path]:
    """A SentencePiece tokenizer (SFT_VOCAB ids, trained on a seeded word corpus) and a prompt/response
    JSONL of `examples` records with word counts drawn from the given inclusive ranges: (tokenizer, jsonl)."""
    from densa.data.sp_train import train_sentencepiece

    rng = random.Random(0)
    (root / "corpus.txt").write_text("\n".join(" ".join(rng.choices(SFT_WORDS, k=12)) for _ in range(300)))
    tok = train_sentencepiece([root / "corpus.txt"], root / "tok", vocab_size=SFT_VOCAB)
    records = [
        {
            "prompt": " ".join(rng.choices(SFT_WORDS, k=rng.randint(*prompt_words))),
            "response": " ".join(rng.choices(SFT_WORDS, k=rng.randint(*response_words))),
        }
        for _ in range(examples)
    ]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tok, root / "sft.jsonl"


def tiny_hf_llama(folder: Path) -> Path:
    """A seeded 2-layer HF Llama over the SFT_VOCAB tokenizer (GQA 4/2 heads), saved at `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=SFT_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def sft_cfg(
    out_dir: str | Path, tok: Path, jsonl: Path, seq: int, *, steps: int = 2, **data: Any
) -> RunConfig:
    """tiny_cfg on SFT data: vocab SFT_VOCAB, rows of `seq` tokens, 4 rows per step in micro-batches of 2."""
    cfg = tiny_cfg(out_dir, steps=steps, global_samples=4, micro_batch=2)
    cfg = replace(cfg, "model", vocab_size=SFT_VOCAB, max_seq_len=seq)
    cfg = replace(cfg, "batch", global_tokens=4 * seq)
    train = (DatasetSource(path=str(jsonl)),)
    return replace(cfg, "data", format="sft", seq_len=seq, tokenizer=str(tok), train=train, **data)


def tiny_cfg(
    out_dir: str | Path, *, steps: int = 6, global_samples: int = 8, micro_batch: int = 2, **kw: Any
) -> RunConfig:
    """A 2-layer dim-32 model on synthetic data; keyword args replace whole sections."""
    sections: dict[str, Any] = dict(
        run=RunSection(out_dir=str(out_dir), seed=3),
        model=ModelConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=SEQ
        ),
        data=DataSection(seq_len=SEQ),
        batch=BatchSection(global_tokens=global_samples * SEQ, micro_batch=micro_batch),
        train=TrainSection(steps=steps, max_bad_steps=3),
        optim=OptimSection(lr=1e-2, weight_decay=0.1, grad_clip=1.0),
        schedule=ScheduleSection(kind="cosine", warmup_steps=2),
        checkpoint=CheckpointSection(interval=1000, keep_last=2, resume="auto"),
        logging=LoggingSection(log_interval=1, tensorboard=False, progress=False),
        parallel=ParallelSection(),
    )
    sections.update(kw)
    return RunConfig(**sections)


def replace(cfg: RunConfig, section: str, **fields: Any) -> RunConfig:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **fields)})


class StopAt(Callback):
    """Ask the trainer to stop (checkpoint + return) after step `step` (0-based)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def post_step(self, trainer, step, metrics) -> None:
        if step == self.step:
            trainer.request_stop()


class RngProbe(Callback):
    """Draws from torch's RNG every step (checks RNG restore) and counts steps in its state."""

    def __init__(self) -> None:
        self.count = 0

    def post_step(self, trainer, step, metrics) -> None:
        self.count += 1
        metrics["probe/rand"] = float(torch.rand(()))
        metrics["probe/count"] = self.count

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.engine.full_state_dict().items()}


def launch(script: Path, world_size: int, args: list[str], timeout: float = 300, env: dict | None = None):
    """Run `world_size` ranks of `script` (RANK/WORLD_SIZE/MASTER_* set); their CompletedProcesses."""
    from densa.testing.distributed import find_free_port

    port = str(find_free_port())
    procs = []
    for rank in range(world_size):
        e = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "train"), os.environ.get("PYTHONPATH", "")]),
        )
        e.update(env or {})
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *args],
                env=e,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results
