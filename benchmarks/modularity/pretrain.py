"""The checkpoint series for the emergence part of the modularity benchmark.

A small ReLU decoder (recipes/quickstart.yaml shrunk: d=128, 4 layers, d_ff=512 plain ReLU FFN, vocab
4096) pretrained on a three-genre mix (Shakespeare, Python documentation, WordNet glosses, the corpora the
probes' semantic family labels) with a checkpoint every `interval` steps, all kept. ReLU because the
paper's T5 is a ReLU model and MoEfication splits sparse-activating neurons best.

    python benchmarks/modularity/pretrain.py            # ~10-15 min on 1 thread
    python benchmarks/modularity/pretrain.py --quick    # smoke (< 1 min)

Writes runs/modularity/{data,tokenizer} and runs/modularity/{full,quick}/dense/checkpoints/step_*.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from densa.config.load import load_recipe  # noqa: E402

BASE = Path("runs") / "modularity"  # relative: the script chdirs to the repository root
TOKENIZER = BASE / "tokenizer" / "tokenizer.model"
DATA = BASE / "data"
CORPUS_BYTES = 3_000_000
"""Training text per genre (bytes of whole files, in sorted file order)."""


def genre_files(name: str, budget: int = CORPUS_BYTES) -> list[Path]:
    """Whole files of one fetched corpus, in sorted order, up to `budget` bytes (at least one file)."""
    from densa.data.fetch import fetch_corpus

    files = sorted(p for p in fetch_corpus(name).glob("*.txt") if p.name != "metadata.txt")
    kept, total = [], 0
    for f in files:
        if kept and total + f.stat().st_size > budget:
            continue
        kept.append(f)
        total += f.stat().st_size
    return kept


def prepare_data() -> None:
    """Tokenizer and train/valid prefixes from the three genres (one held-out file per genre)."""
    from densa.data.manifest import manifest_path
    from densa.data.preprocess import preprocess
    from densa.data.sp_train import train_sentencepiece

    genres = {g: genre_files(g) for g in ("shakespeare", "python-docs", "wordnet")}
    train = [f for files in genres.values() for f in files[:-1] or files]
    valid = [files[-1] for files in genres.values()]
    if not TOKENIZER.exists():
        train_sentencepiece(train, TOKENIZER.parent, vocab_size=4096)
    for split, files in (("train", train), ("valid", valid)):
        if not manifest_path(DATA / split).exists():
            preprocess(files, TOKENIZER, DATA / split)


def recipe(run_dir: Path, steps: int, interval: int) -> object:
    overrides = [
        "run.name=modularity-dense",
        f"run.out_dir={run_dir}",
        "model.dim=128",
        "model.n_layers=4",
        "model.n_heads=4",
        "model.n_kv_heads=4",
        "model.ffn_dim=512",
        "model.gated=false",
        "model.activation=relu",
        "model.max_seq_len=128",
        f"data.train=[{{path: {DATA / 'train'}}}]",
        f"data.valid=[{{path: {DATA / 'valid'}}}]",
        f"data.tokenizer={TOKENIZER}",
        "data.seq_len=128",
        "optim.lr=3e-3",
        "schedule.warmup_steps=20",
        "batch.global_tokens=2048",
        "batch.micro_batch=16",
        f"train.steps={steps}",
        f"checkpoint.interval={interval}",
        "checkpoint.keep_last=1000",
        "logging.log_interval=20",
        "logging.tensorboard=false",
        "logging.progress=false",
        "eval.interval=100",
        "eval.max_batches=4",
        "export.hf_dir=null",
    ]
    return load_recipe(ROOT / "recipes" / "quickstart.yaml", overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.chdir(ROOT)
    prepare_data()
    steps, interval = (40, 10) if args.quick else (1600, 50)
    run_dir = BASE / ("quick" if args.quick else "full") / "dense"
    cfg = recipe(run_dir, steps, interval)
    from densa.train.run import build_trainer

    t0 = time.perf_counter()
    build_trainer(cfg).fit()
    print(f"trained {steps} steps in {time.perf_counter() - t0:.0f} s → {run_dir}", flush=True)


if __name__ == "__main__":
    main()
