"""EREN benchmark: SmolLM2-135M-Instruct edited by reading notes, against its baselines, at 10/100/1000 edits.

Probes: `densa edit probes` (CounterFact-Hard layout from real facts, eval-half subjects, held-out
paraphrases). Methods (hparams/*/smollm2-135m*.yaml), all on the same probes and model family:

    NONE                 the unedited model (closed-book)
    FT                   finetuning on the edit statements, edits applied one after another
    ONE_STEP (untuned)   one-step reading with the model as released (in-context editing)
    EREN (untuned)       EREN's procedure with the reader before the instruction setup
    ONE_STEP (tuned)     one-step reading with the instruction-tuned reader
    EREN (tuned)         EREN with the reader after recipes/eren_sft_smollm2.yaml
    EREN (tuned, 2 hops) the same with a second retrieval hop (question + best note)

Each method's `densa edit eval` output goes to runs/eren-bench/LABEL/ (a finished method is not rerun);
the combined table goes to benchmarks/results/eren.{json,md,png}.

    python -m benchmarks.eren.run [--methods a,b] [--max-scored 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

from benchmarks.common import machine_info, write_results
from densa.editing.evaluate import TABLE_KEYS, plot_metrics, run_eval

ROOT = Path(__file__).resolve().parents[2]
METHODS = {
    "none": "hparams/NONE/smollm2-135m.yaml",
    "ft": "hparams/FT/smollm2-135m.yaml",
    "one_step_untuned": "hparams/ONE_STEP/smollm2-135m-untuned.yaml",
    "eren_untuned": "hparams/EREN/smollm2-135m-untuned.yaml",
    "one_step_tuned": "hparams/ONE_STEP/smollm2-135m.yaml",
    "eren_tuned": "hparams/EREN/smollm2-135m.yaml",
    "eren_tuned_hops2": "hparams/EREN/smollm2-135m-2hop.yaml",
}
SIZES = (10, 100, 1000)
KEYS = TABLE_KEYS


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def retrieval_recall(probes: Path, ks=(1, 3, 5, 10)) -> dict:
    """recall@k of each retriever for every edit's own questions (prompt + paraphrases) over the
    full 1000-note notebook: the note must be among the top k."""
    from densa.editing.evaluate import load_probes
    from densa.editing.notebook import Notebook
    from densa.editing.requests import parse_requests
    from densa.editing.retriever import build_retriever

    requests = parse_requests(load_probes(probes))
    book = Notebook()
    notes = book.add_many([r.note for r in requests])
    questions, owners = [], []
    for note, req in zip(notes, requests, strict=True):
        for q in (req.prompt, *req.rephrase_prompts):
            questions.append(q)
            owners.append(note.id)
    out = {}
    for name in ("minilm", "bm25"):
        retriever = build_retriever(name)
        retriever.index(book.notes)
        hits = retriever.search(questions, max(ks))
        out[name] = {
            f"recall@{k}": sum(o in {h.note.id for h in hs[:k]} for o, hs in zip(owners, hits, strict=True))
            / len(questions)
            for k in ks
        }
    out["questions"] = len(questions)
    out["notes"] = len(book)
    return out


def with_intervals(report: dict, generations: Path) -> dict:
    """Add ES/BP/EQ bootstrap intervals to each size of a report written before `edit eval` kept them."""
    from densa.editing.metrics import intervals

    if all("intervals" in r for r in report["results"]):
        return report
    rows = [json.loads(line) for line in generations.read_text().splitlines() if line.strip()]
    for r in report["results"]:
        r["intervals"] = intervals([row for row in rows if row["edits"] == r["edits"]])
    return report


def instruction_setup(run_dir: Path) -> dict | None:
    """Wall time and losses of the instruction-setup run (recipes/eren_sft_smollm2.yaml), from its metrics."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in records if "train/loss" in r]
    valid = [r for r in records if "val/loss" in r]
    first = train[0]
    # The first logged record closes step log_interval: add those steps' own time to the span.
    wall = train[-1]["time"] - first["time"] + first["perf/step_s"] * first["step"]
    step_s = sorted(r["perf/step_s"] for r in train)
    recipe = (
        yaml.safe_load((run_dir / "recipe.yaml").read_text()) if (run_dir / "recipe.yaml").is_file() else {}
    )
    data = recipe.get("data", {})
    return {
        "recipe": "recipes/eren_sft_smollm2.yaml",
        "steps": train[-1]["step"],
        # consumed_samples counts rows; a packed row holds several examples.
        "rows_seen": train[-1]["train/consumed_samples"],
        "packed": bool(data.get("pack", False)),
        "seq_len": data.get("seq_len"),
        "wall_s": round(wall),
        "median_step_s": round(step_s[len(step_s) // 2], 1),
        "p10_step_s": round(step_s[len(step_s) // 10], 1),
        "train_loss_first_last": [round(first["train/loss"], 3), round(train[-1]["train/loss"], 3)],
        "val_loss": {r["step"]: round(r["val/loss"], 4) for r in valid},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--probes", default="runs/eren-probes.json")
    ap.add_argument("--out", default="runs/eren-bench")
    ap.add_argument("--max-scored", type=int, default=50, help="edits whose probes are scored per size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("--collect-only", action="store_true", help="only combine finished methods")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    probes = Path(args.probes)
    if not probes.is_file():
        from densa.data.facts import fetch_facts, read_facts
        from densa.editing.probes import build_probes, write_probes
        from densa.editing.world import World

        write_probes(build_probes(World(read_facts(fetch_facts())), max(SIZES), seed=0), probes)
    reports = {}
    for name in args.methods.split(","):
        folder = Path(args.out) / name
        done = folder / "metrics.json"
        if not args.collect_only and (args.rerun or not done.is_file()):
            print(f"== {name}", file=sys.stderr, flush=True)
            run_eval(
                ROOT / METHODS[name], probes, folder, SIZES, max_scored=args.max_scored, seed=0, label=name
            )
        if done.is_file():
            reports[name] = with_intervals(json.loads(done.read_text()), folder / "generations.jsonl")
    if not reports:
        return 1
    recall_file = Path(args.out) / "retrieval.json"
    if not recall_file.is_file() or args.rerun:
        recall_file.parent.mkdir(parents=True, exist_ok=True)
        recall_file.write_text(json.dumps(retrieval_recall(probes), indent=2) + "\n")
    recall = json.loads(recall_file.read_text())
    payload = {
        "benchmark": "eren",
        "machine": machine_info(),
        "probes": str(probes),
        "sizes": list(SIZES),
        "max_scored": args.max_scored,
        "protocol": next(iter(reports.values()))["protocol"],
        "methods": {n: {"hparams": r["hparams"], "results": r["results"]} for n, r in reports.items()},
        "retrieval": recall,
        "instruction_setup": instruction_setup(ROOT / "runs/eren-sft-smollm2"),
    }
    lines = [
        "# EREN on SmolLM2-135M-Instruct: editing by reading notes vs baselines",
        "",
        f"Probes: {probes} (CounterFact-Hard layout, real facts, counterfactual edits)."
        f" Per size, the probes of up to {args.max_scored} edits are scored"
        " (a seeded sample; the notebook holds every edit).",
        f"Protocol: {payload['protocol']}.",
        "",
        "| method | edits | " + " | ".join(KEYS) + " |",
        "| --- | ---: |" + " ---: |" * len(KEYS),
    ]
    for name, r in reports.items():
        for row in r["results"]:
            lines.append(f"| {name} | {row['edits']} | " + " | ".join(_pct(row.get(k)) for k in KEYS) + " |")
    largest = max(SIZES)
    lines += [
        "",
        f"95% bootstrap intervals at {largest} edits (resampling the scored edits, 2000 draws):",
        "",
        "| method | ES | BP | EQ |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in reports.items():
        ci = next(row["intervals"] for row in r["results"] if row["edits"] == largest)
        lines.append(
            f"| {name} | "
            + " | ".join(
                "—" if ci[k] is None else f"{_pct(ci[k][0])}–{_pct(ci[k][1])}" for k in ("ES", "BP", "EQ")
            )
            + " |"
        )
    lines += [
        "",
        f"Retrieval alone, {recall['notes']} notes, {recall['questions']} edit questions (prompt + held-out"
        " paraphrases):",
        "",
        "| retriever | " + " | ".join(k for k in recall["minilm"]) + " |",
        "| --- |" + " ---: |" * len(recall["minilm"]),
    ]
    for name in ("minilm", "bm25"):
        lines.append(f"| {name} | " + " | ".join(_pct(v) for v in recall[name].values()) + " |")
    setup = payload["instruction_setup"]
    if setup:
        lines += [
            "",
            f"Instruction setup ({setup['recipe']}): {setup['steps']} steps,"
            f" {setup['rows_seen']} {'packed ' if setup['packed'] else ''}rows of {setup['seq_len']} tokens,"
            f" {setup['wall_s'] / 60:.0f} min wall on this machine"
            f" (median step {setup['median_step_s']} s, fastest tenth {setup['p10_step_s']} s);"
            f" validation loss by step {setup['val_loss']}.",
        ]
    write_results("eren", payload, "\n".join(lines) + "\n")
    plot_metrics({n: r["results"] for n, r in reports.items()}, ROOT / "benchmarks/results/eren.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
