"""benchmarks/results/plugin.md from the results payload."""

from __future__ import annotations

COLUMNS = (
    ("base", "base"),
    ("general", "+ general plug"),
    ("task_specific", "+ task-specific"),
    ("ft_with_mapper", "FT with mapper"),
    ("general_shuffled", "general, shuffled emb."),
    ("task_specific_shuffled", "task-specific, shuffled emb."),
    ("random_mapper", "random mapper"),
    ("general_slash", "general, `[E] / name` form"),
    ("task_specific_slash", "task-specific, `[E] / name` form"),
)
SWAP = (
    ("base", "base"),
    ("mapper_A", "+ KB A's mapper"),
    ("general_B", "+ general B"),
    ("task_specific_B", "+ task-specific B"),
    ("task_specific_B_shuffled", "task-specific B, shuffled emb."),
)
TASK_NAMES = {"relation": "relation classification", "typing": "entity typing", "qa": "cloze QA"}


def _cell(x: dict) -> str:
    if not x:
        return "n/a"
    lo, hi = x["ci95"]
    return f"{x['value']:.1f} ({lo:.1f}–{hi:.1f})"


def markdown(p: dict) -> str:
    c = p["config"]
    out = [
        "# Knowledge plugins (map-tuning) on frozen downstream models",
        "",
        f"Model: densa decoder, {c['params']:,} parameters (dim {c['model']['dim']},"
        f" {c['model']['n_layers']} layers), word-level vocabulary of {c['vocab']} (entity names are single"
        f" tokens), pretrained on the known facts (last loss {p['pretrain_loss_last']}). KBs: A"
        f" {c['kb_triples']['A']} triples / {c['kb_entities']['A']} entities, B {c['kb_triples']['B']} /"
        f" {c['kb_entities']['B']}; TransE d={c['transe']['dim']}.",
        "General map-tuning loss (first step, mean of the last 50):"
        f" {p['general_map_tuning_loss_first_last']}.",
        "",
        "Accuracy (%) on held-out cities (knowledge-dependent: never in pretraining or task training), with"
        f" 95% bootstrap intervals over test examples. Seed {c['seed']}; {p['seconds']} s on"
        f" {p['machine']['cpu_count']} shared CPU cores.",
        "",
    ]
    for task, r in p["results"].items():
        methods = [m for m in ("full", "lora", "bitfit") if m in r]
        if not methods:
            continue
        out += [
            f"## {TASK_NAMES[task]} ({r['n_train']} training, {r['n_test']} test examples)",
            "",
            "| adaptation | " + " | ".join(name for _, name in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 1) + "|",
        ]
        for method in methods:
            acc = r[method]["accuracy"]
            out.append(f"| {method} | " + " | ".join(_cell(acc[k]) for k, _ in COLUMNS) + " |")
        out += ["", "Gain over base (points, paired bootstrap):", ""]
        out += [
            "| adaptation | " + " | ".join(name for _, name in COLUMNS[1:]) + " |",
            "|---" * len(COLUMNS) + "|",
        ]
        for method in methods:
            gain = r[method]["gain_over_base"]
            out.append(f"| {method} | " + " | ".join(_cell(gain[k]) for k, _ in COLUMNS[1:]) + " |")
        out += [
            "",
            f"Domain swap (domain B's {r['n_test_domain_b']} held-out test examples, same frozen model):",
            "",
        ]
        out += [
            "| adaptation | " + " | ".join(name for _, name in SWAP) + " |",
            "|---" * (len(SWAP) + 1) + "|",
        ]
        for method in methods:
            acc = r[method]["domain_swap"]["accuracy"]
            out.append(f"| {method} | " + " | ".join(_cell(acc.get(k, {})) for k, _ in SWAP) + " |")
        out.append("")
    out += goals(p["results"])
    return "\n".join(out) + "\n"


def goals(results: dict) -> list[str]:
    """The issue's goals, read off the results: gains over base on the held-out (knowledge-dependent)
    examples, the order task-specific ≥ general ≥ none, and the shuffled control removing the gain."""
    lines = ["## Goals", "", "| task | adaptation | task-specific gain (95% CI) | order ts ≥ general ≥ none |"
             " task-specific, shuffled emb. gain | swap: task-specific B gain, shuffled B gain |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    best: dict[str, float] = {}
    for task, r in results.items():
        for method in ("full", "lora", "bitfit"):
            if method not in r:
                continue
            acc, gain = r[method]["accuracy"], r[method]["gain_over_base"]
            ts, gen, base = acc["task_specific"]["value"], acc["general"]["value"], acc["base"]["value"]
            swap = r[method]["domain_swap"]["gain_over_base"]
            order = "yes" if ts >= gen >= base else "no"
            kept = _cell(gain["task_specific_shuffled"])
            swap_ts = swap["task_specific_B"]["value"]
            swap_shuffled = swap.get("task_specific_B_shuffled", {}).get("value", float("nan"))
            lines.append(
                f"| {task} | {method} | {_cell(gain['task_specific'])} | {order} | {kept} |"
                f" {swap_ts:+.1f}, {swap_shuffled:+.1f} |"
            )
            best[task] = max(best.get(task, -1e9), gain["task_specific"]["value"])
    if best:
        top = max(best, key=best.__getitem__)
        lines += ["", f"Largest task-specific gain (best adaptation per task): {top} "
                  f"({', '.join(f'{t} {v:+.1f}' for t, v in best.items())})."]  # fmt: skip
    return lines + [""]
