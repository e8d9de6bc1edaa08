"""ProSparse at toy scale: the Sparsing-Law SwiGLU model turned into a sparse ReGLU model.

The trained 4-layer SwiGLU run of benchmarks/sparsing_law (runs/sparsing_law/full/swiglu) is exported to an
HF folder and finetuned with recipes/prosparse_tiny.yaml (`init.from_path` = that folder: ReLU swap,
progressive L1 on the FFN activations); the result is exported again. Both HF folders are measured with
`densa sparsity measure` (PPL-1% sparsity, dense perplexity) on the held-out play, plus the fraction of
exactly-zero FFN activations on the same tokens. The ReLU swap alone (no finetuning) is measured too.

    python benchmarks/prosparse/run.py            # full (~5 min on 1 thread)
    python benchmarks/prosparse/run.py --quick    # smoke (< 2 min): 20 steps, fewer tokens

Writes benchmarks/results/prosparse{,_quick}.{json,md}. Runs go to runs/prosparse_bench/ (quick: .../quick/);
the finetuning run is reused when complete unless --retrain.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import QUICKSTART_DATA, dataset_tokens, machine_info, write_results  # noqa: E402
from densa.models.hf.importer import load_hf_model  # noqa: E402
from densa.sparsity import count_active, eval_loss, make_sequences  # noqa: E402
from densa.sparsity.prosparse import swap_activation  # noqa: E402

NAME = "prosparse"
SOURCE_RUN = "runs/sparsing_law/full/swiglu"
RECIPE = "recipes/prosparse_tiny.yaml"
VALID = f"{QUICKSTART_DATA}/valid"


@dataclass(frozen=True)
class Setup:
    base: Path
    """Folder of the HF exports and the finetuning run."""
    steps: int | None
    """None: the recipe's; else train.steps and l1_stages scaled to it (smoke)."""
    num_tokens: int
    max_cett_tokens: int
    seq_len: int = 128
    ppl_p: float = 1.0


FULL = Setup(Path("runs/prosparse_bench"), None, 8192, 2048)
QUICK = Setup(Path("runs/prosparse_bench/quick"), 20, 2048, 1024)


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, cwd=ROOT, check=True)


def densa(*args: str) -> None:
    sh(sys.executable, "-m", "densa.launch.cli", *args)


def finetune_recipe(s: Setup, swiglu_hf: Path) -> tuple[Path, dict[str, Any]]:
    """The recipe run as is (full), or a shortened copy pointing at the quick folders (smoke)."""
    recipe = yaml.safe_load((ROOT / RECIPE).read_text())
    if s.steps is None:
        assert recipe["init"]["from_path"] == str(swiglu_hf), "recipe init.from_path != the export folder"
        return Path(RECIPE), recipe
    total = recipe["train"]["steps"]
    stages = recipe["sparsity"]["prosparse"]["l1_stages"]
    recipe["sparsity"]["prosparse"]["l1_stages"] = [
        [max(1, round(end * s.steps / total)) + i, lam] for i, (end, lam) in enumerate(stages)
    ]
    recipe["train"]["steps"] = s.steps
    recipe["sparsity"]["track_interval"] = recipe["checkpoint"]["interval"] = s.steps
    recipe["eval"]["interval"] = s.steps
    recipe["init"]["from_path"] = str(swiglu_hf)
    recipe["run"]["out_dir"] = str(s.base / "run")
    path = s.base / "prosparse_quick.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path, recipe


def valid_sequences(s: Setup) -> torch.Tensor:
    return make_sequences(dataset_tokens(ROOT / VALID), s.seq_len, s.num_tokens)


def zero_fraction(model: torch.nn.Module, seqs: torch.Tensor) -> tuple[float, float, list[float]]:
    """(dense loss, mean fraction of exactly-zero FFN activations, per layer) on `seqs`."""
    with count_active(model, 0.0) as counter:
        loss = eval_loss(model, seqs)
    per_layer = counter.sparsity()
    return loss, sum(per_layer) / len(per_layer), per_layer


def measure(s: Setup, model_dir: Path, seqs: torch.Tensor, swap: bool = False) -> dict[str, Any]:
    model = load_hf_model(ROOT / model_dir).eval()
    if swap:
        swap_activation(model, "relu")
    with torch.no_grad():
        loss, zero, zero_layers = zero_fraction(model, seqs)
    row: dict[str, Any] = {
        "model": str(model_dir),
        "activation": model.config.activation,
        "gated": model.config.gated,
        "ppl_dense_exact": math.exp(loss),
        "exact_zero_fraction": zero,
        "exact_zero_per_layer": zero_layers,
    }
    if swap:  # the bare swap is not a folder; PPL-1% is measured on the real exports only
        return row
    out = s.base / "measure" / model_dir.name
    densa(
        "sparsity", "measure", "--model", str(model_dir), "--data", VALID,
        "--ppl-p", str(s.ppl_p), "--seq-len", str(s.seq_len), "--num-tokens", str(s.num_tokens),
        "--max-cett-tokens", str(s.max_cett_tokens), "--out", str(out),
    )  # fmt: skip
    rep = json.loads((ROOT / out / "sparsity.json").read_text())
    row.update(
        ppl_dense=rep["ppl_dense"],
        ppl_sparse=rep["ppl_sparse"],
        ppl1_sparsity=rep["sparsity"],
        ppl1_sparsity_per_layer=[layer["sparsity"] for layer in rep["layers"]],
        cett_target=rep["cett_target"],
        converged=rep["converged"],
    )
    return row


def last_eval(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (ROOT / run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val/ppl" in r]
    return {"step": evals[-1]["step"], "val_loss": evals[-1]["val/loss"], "val_ppl": evals[-1]["val/ppl"]}


def train_trace(run_dir: Path) -> list[dict[str, float]]:
    keys = ("train/loss", "sparsity/l1_lambda", "sparsity/l1", "sparsity/activation_ratio")
    rows = [json.loads(line) for line in (ROOT / run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], **{k: r[k] for k in keys if k in r}} for r in rows if "train/loss" in r]


def markdown(p: dict[str, Any]) -> str:
    b, w, a = p["before"], p["swap_only"], p["after"]
    ev = p["trainer_eval"]
    train = "– (reused run)" if p["train_s"] is None else f"{p['train_s']:.0f} s"
    lines = [
        f"# ProSparse at toy scale{' (quick)' if p['quick'] else ''}",
        "",
        f"SwiGLU model of `{SOURCE_RUN}` (4 layers, d=256, d_ff=688, {p['source_steps']} steps on "
        f"Shakespeare) exported to HF, finetuned with `{p['recipe']}` ({p['steps']} steps × 2048 tokens, "
        f"L1 stages {p['l1_stages']}, lr {p['lr']}), exported again. Measured on "
        f"{p['num_tokens']} held-out tokens (seq {p['seq_len']}); "
        f"PPL-{p['ppl_p']:g}% sparsity from `densa sparsity measure`.",
        "",
        "| model | activation | dense PPL | PPL-1% sparsity | PPL at that sparsity | exact zeros |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        f"| before (SwiGLU) | silu gated | {b['ppl_dense']:.2f} | {b['ppl1_sparsity']:.1%} | "
        f"{b['ppl_sparse']:.2f} | {b['exact_zero_fraction']:.1%} |",
        f"| ReLU swap, no finetune | relu gated | {w['ppl_dense_exact']:.2f} | – | – | "
        f"{w['exact_zero_fraction']:.1%} |",
        f"| after ProSparse | relu gated | {a['ppl_dense']:.2f} | {a['ppl1_sparsity']:.1%} | "
        f"{a['ppl_sparse']:.2f} | {a['exact_zero_fraction']:.1%} |",
        "",
        f"Trainer validation perplexity (16,384 tokens): original {ev['before']['val_ppl']:.2f} (step "
        f"{ev['before']['step']}), finetuned {ev['after']['val_ppl']:.2f} (step {ev['after']['step']}).",
        "",
        "Per layer (exact zeros after / PPL-1% sparsity before → after): "
        + ", ".join(
            f"L{i}: {z:.1%} / {s0:.1%} → {s1:.1%}"
            for i, (z, s0, s1) in enumerate(
                zip(a["exact_zero_per_layer"], b["ppl1_sparsity_per_layer"], a["ppl1_sparsity_per_layer"])
            )
        ),
        "",
        f"Finetuning wall time {train}; machine: {p['machine']['processor']}, "
        f"{p['machine']['torch_threads']} thread(s), torch {p['machine']['torch']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke mode: 20 steps, fewer tokens")
    ap.add_argument("--retrain", action="store_true", help="redo the finetuning run even if complete")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    os.chdir(ROOT)
    s = QUICK if args.quick else FULL
    s.base.mkdir(parents=True, exist_ok=True)
    swiglu_hf, relu_hf = s.base / "swiglu-hf", s.base / "relu-hf"

    densa("export", SOURCE_RUN, "--out", str(swiglu_hf), "--overwrite")
    recipe_path, recipe = finetune_recipe(s, swiglu_hf)
    densa("check", str(recipe_path))
    run_dir = Path(recipe["run"]["out_dir"])
    steps = recipe["train"]["steps"]
    done = (ROOT / run_dir / "checkpoints" / f"step_{steps}").is_dir()
    train_s: float | None = None  # None: the complete run was reused
    if args.retrain or not done:
        shutil.rmtree(ROOT / run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        densa("train", str(recipe_path))
        train_s = time.perf_counter() - t0
    densa("export", str(run_dir), "--out", str(relu_hf), "--overwrite")

    seqs = valid_sequences(s)
    before = measure(s, swiglu_hf, seqs)
    swap_only = measure(s, swiglu_hf, seqs, swap=True)
    after = measure(s, relu_hf, seqs)
    payload = {
        "name": NAME,
        "quick": args.quick,
        "source_run": SOURCE_RUN,
        "source_steps": last_eval(Path(SOURCE_RUN))["step"],
        "recipe": RECIPE if s.steps is None else f"{RECIPE} (shortened to {steps} steps)",
        "steps": steps,
        "l1_stages": recipe["sparsity"]["prosparse"]["l1_stages"],
        "lr": recipe["optim"]["lr"],
        "seq_len": s.seq_len,
        "num_tokens": s.num_tokens,
        "max_cett_tokens": s.max_cett_tokens,
        "ppl_p": s.ppl_p,
        "before": before,
        "swap_only": swap_only,
        "after": after,
        "trainer_eval": {"before": last_eval(Path(SOURCE_RUN)), "after": last_eval(run_dir)},
        "train_trace": train_trace(run_dir),
        "train_s": train_s,
        "machine": machine_info(),
    }
    paths = write_results(NAME + ("_quick" if args.quick else ""), payload, markdown(payload))
    print(markdown(payload))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
