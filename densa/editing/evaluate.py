"""`densa edit eval`: edit with the first n requests of a probe file, score, repeat for each n.

For each notebook size n (e.g. 10, 100, 1000, in increasing order) the first n requests have been
applied in order (sequential editing: each size continues from the previous one). The probes of those
edits are scored — at most `max_scored` of them, a seeded sample, when scoring all would take too long
(the notebook still holds all n edits) — plus every two-hop question whose two edits are among the n.
The pre-edit answers come from the same system without edits. Writes into `out`:

    metrics.json       hparams, protocol, per-size metrics (both vocabularies), 95% bootstrap
                       intervals of ES / BP / EQ (resampling edits), timings
    metrics.md         the same as a table
    metrics.png        ES / BP (per probe type) / EQ against the number of edits
    generations.jsonl  every probe: prompt, target, pre and post answers, notes read
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from densa.editing.editor import Editor
from densa.editing.hparams import EditHParams
from densa.editing.metrics import intervals, summarize
from densa.editing.requests import RequestError, parse_requests
from densa.errors import DensaError
from densa.outputs import write_text_atomic

TABLE_KEYS = (
    "ES",
    "rewrite_acc",
    "rephrase_acc",
    "BP",
    "BP_same_subject",
    "BP_same_relation",
    "BP_unrelated",
    "EQ",
    "two_hop_acc",
    "retrieval_recall",
)


def load_probes(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DensaError(f"{path}: probe file not found (build one with `densa edit probes`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DensaError(f"{path}: not valid JSON ({err})") from None
    records = data["records"] if isinstance(data, dict) and "records" in data else data
    if not isinstance(records, list) or not records:
        raise DensaError(f"{path}: expected a list of requests (or {{'records': [...]}})")
    return records


def scored_cases(n: int, max_scored: int | None, seed: int) -> list[int]:
    cases = list(range(n))
    if max_scored is not None and n > max_scored:
        cases = sorted(random.Random(seed).sample(cases, max_scored))
    return cases


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def run_eval(
    hparams: str | os.PathLike | EditHParams,
    probes_path: str | os.PathLike,
    out: str | os.PathLike,
    sizes: Sequence[int],
    *,
    max_scored: int | None = None,
    seed: int = 0,
    label: str | None = None,
    log=None,
) -> dict[str, Any]:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    hp = hparams if isinstance(hparams, EditHParams) else EditHParams.from_hparams(hparams)
    records = load_probes(probes_path)
    try:
        requests = parse_requests(records, str(probes_path))
    except RequestError as err:
        raise DensaError(str(err)) from None
    if not sizes or max(sizes) > len(requests) or min(sizes) < 1:
        raise DensaError(
            f"--edits: sizes must be in 1..{len(requests)} (the probe file's edits), got {list(sizes)}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    editor = Editor(hp)
    # Pre-edit answers once for every probe any size will score.
    scored = {n: scored_cases(n, max_scored, seed) for n in sizes}
    union = sorted({i for cases in scored.values() for i in cases})
    start = time.perf_counter()
    pre = editor.pre_answers([requests[i] for i in union])
    pre_s = time.perf_counter() - start
    log(f"edit eval [{label or hp.alg_name}]: pre-edit answers for {len(pre)} probes in {pre_s:.0f}s")
    results, all_rows = [], []
    editor.reset()
    applied, edit_s = 0, 0.0
    for n in sorted(sizes):
        # Sequential editing is cumulative: the state after n edits is the state after the first
        # `applied` edits plus the next n - applied, so each size continues from the previous one.
        t0 = time.perf_counter()
        editor.apply(requests[applied:n])
        edit_s += time.perf_counter() - t0
        applied = n
        cases = set(scored[n])
        two_hop = [
            (
                "two_hop",
                r["two_hop"]["prompt"],
                r["two_hop"]["target"],
                {requests[j].note for j in r["two_hop"]["needs"]},
            )
            for r in records[:n]  # every two-hop question whose two edits are in the notebook (few)
            if "two_hop" in r and all(j < n for j in r["two_hop"]["needs"])
        ]
        t1 = time.perf_counter()
        rows = editor.score([requests[i] for i in sorted(cases)], pre, two_hop)
        score_s = time.perf_counter() - t1
        metrics = summarize(rows)
        results.append(
            {
                "edits": n,
                "scored_edits": len(cases),
                "edit_s": round(edit_s, 2),
                "score_s": round(score_s, 1),
                **metrics,
                "intervals": intervals(rows),
            }
        )
        for row in rows:
            all_rows.append({"edits": n, **row})
        log(
            f"edit eval [{label or hp.alg_name}] {n} edits: ES {_fmt(metrics['ES'])} BP {_fmt(metrics['BP'])}"
            f" EQ {_fmt(metrics['EQ'])} ({len(rows)} probes, {score_s:.0f}s)"
        )
    report = {
        "label": label or hp.alg_name,
        "hparams": asdict(hp),
        "probes": str(probes_path),
        "protocol": results[0]["protocol"],
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "pre_s": round(pre_s, 1),
        "results": [{k: v for k, v in r.items() if k != "protocol"} for r in results],
    }
    _write(out, report, all_rows)
    return report


def _write(out: Path, report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    def atomic(name: str, text: str) -> None:
        write_text_atomic(out / name, text)

    atomic("metrics.json", json.dumps(report, indent=2) + "\n")
    atomic("generations.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    lines = [
        f"# {report['label']} — editing metrics",
        "",
        f"Protocol: {report['protocol']}.",
        "",
        "| edits | scored | " + " | ".join(TABLE_KEYS) + " |",
        "|" + " ---: |" * (len(TABLE_KEYS) + 2),
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['edits']} | {r['scored_edits']} | " + " | ".join(_fmt(r.get(k)) for k in TABLE_KEYS) + " |"
        )
    atomic("metrics.md", "\n".join(lines) + "\n")
    plot_metrics({report["label"]: report["results"]}, out / "metrics.png")


def plot_metrics(series: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("ES", "BP_same_subject", "BP_same_relation", "EQ")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), sharey=True)
    for ax, key in zip(axes, keys, strict=True):
        for label, results in series.items():
            xs = [r["edits"] for r in results if r.get(key) is not None]
            ys = [100 * r[key] for r in results if r.get(key) is not None]
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_title(key)
        ax.set_xlabel("edits in the notebook")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
