"""The checkpoint series for the emergence part of the modularity benchmark.

A small ReLU decoder (recipes/quickstart.yaml shrunk: d=128, 4 layers, d_ff=512 plain ReLU FFN, vocab
4096) pretrained on a three-genre mix (Shakespeare, Python documentation, WordNet glosses, the corpora the
probes' semantic family labels) with CHECKPOINTS checkpoints evenly spaced, all kept. ReLU because the
paper's T5 is a ReLU model and MoEfication splits sparse-activating neurons best.

Two kinds, each over seeds (run.seed, and ssd.seed for SSD):

- dense: plain dense training;
- ssd: the same with densa's switchable sparse-dense training (`ssd:` recipe keys, docs/ssd.md): 16
  experts, top-4, re-clustered every checkpoint interval in dense phases; the mode toggles at fixed
  `ssd.switch_steps` (sparse over 20-40% and 50-70% of the steps, the last 20% dense) so every seed has
  the same sparse steps. A checkpoint saved in a sparse phase holds the dense weights with the neurons
  permuted expert by expert; the analysis un-permutes them with the callback's saved layouts.

    python benchmarks/modularity/pretrain.py --kind dense --seeds 0 1 2 --steps 256   # the series
    python benchmarks/modularity/pretrain.py --quick    # smoke (< 1 min)

A run whose final checkpoint is complete is skipped; an interrupted one resumes from its newest
checkpoint (`checkpoint.resume: auto`). Writes runs/modularity/{data,tokenizer} and
runs/modularity/series-{steps}/{kind}-s{seed}/checkpoints/step_* (the first series, 1600 steps, seed 1234,
lies in runs/modularity/full/dense).
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
CHECKPOINTS = 32
SSD_EXPERTS = 16
SSD_TOP_K = 4
SSD_SPARSE = ((0.2, 0.4), (0.5, 0.7))
"""Sparse phases as fractions of the steps (the last 20% is SSD's final dense phase)."""
EVAL_BATCHES = 32
"""Validation micro-batches (65536 tokens): 4 (the 256-step series) left the loss seed-dependent by up to
1 nat, the three genres' held-out files being that different."""
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


def series_dir(kind: str, seed: int, steps: int) -> Path:
    """Run folder of one series member."""
    return BASE / f"series-{steps}" / f"{kind}-s{seed}"


def ssd_overrides(steps: int, interval: int, seed: int) -> list[str]:
    """SSD at fixed switch steps (the stability trigger is off: threshold 1 is never met in practice)."""
    switches = sorted(int(round(f * steps)) for phase in SSD_SPARSE for f in phase)
    return [
        "ssd.enabled=true",
        f"ssd.num_experts={SSD_EXPERTS}",
        f"ssd.top_k={SSD_TOP_K}",
        f"ssd.interval={interval}",
        "ssd.stability_threshold=1.0",
        f"ssd.switch_steps=[{', '.join(map(str, switches))}]",
        "ssd.sparse_steps=0",
        "ssd.final_dense_fraction=0.2",
        f"ssd.seed={seed}",
        "parallel.zero_stage=0",
        "parallel.precision=fp32",
    ]


def recipe(run_dir: Path, steps: int, interval: int, kind: str = "dense", seed: int | None = None) -> object:
    overrides = [
        f"run.name=modularity-{kind}",
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
        f"eval.interval={max(steps // 16, 10)}",
        f"eval.max_batches={EVAL_BATCHES}",
        "export.hf_dir=null",
    ]
    if seed is not None:
        overrides.append(f"run.seed={seed}")
    if kind == "ssd":
        overrides += ssd_overrides(steps, interval, 0 if seed is None else seed)
    return load_recipe(ROOT / "recipes" / "quickstart.yaml", overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=["dense", "ssd"], default="dense")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1024, help=f"training steps ({CHECKPOINTS} checkpoints)")
    ap.add_argument("--quick", action="store_true", help="smoke: 40 steps, one seed")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.chdir(ROOT)
    prepare_data()
    from densa.train.checkpoint import is_complete
    from densa.train.run import build_trainer

    steps = 40 if args.quick else args.steps
    if steps % CHECKPOINTS and not args.quick:
        raise SystemExit(f"--steps {steps} is not a multiple of {CHECKPOINTS} (one checkpoint per interval)")
    interval = 10 if args.quick else steps // CHECKPOINTS
    for seed in args.seeds[:1] if args.quick else args.seeds:
        run_dir = BASE / "quick" / args.kind if args.quick else series_dir(args.kind, seed, steps)
        if is_complete(run_dir / "checkpoints" / f"step_{steps}"):
            print(f"{run_dir}: complete, skipped", flush=True)
            continue
        t0 = time.perf_counter()
        build_trainer(recipe(run_dir, steps, interval, args.kind, seed)).fit()
        if not is_complete(run_dir / "checkpoints" / f"step_{steps}"):  # stopped on a signal: resumable
            raise SystemExit(f"{run_dir}: stopped before step {steps}; run again to resume")
        print(f"trained {steps} steps in {time.perf_counter() - t0:.0f} s → {run_dir}", flush=True)


if __name__ == "__main__":
    main()
