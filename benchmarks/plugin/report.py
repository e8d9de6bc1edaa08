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
)
SWAP = (
    ("base", "base"),
    ("mapper_A", "+ KB A's mapper"),
    ("general_B", "+ general B"),
    ("task_specific_B", "+ task-specific B"),
)
TASK_NAMES = {"relation": "relation classification", "typing": "entity typing", "qa": "cloze QA"}


def _cell(x: dict) -> str:
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
            out.append(f"| {method} | " + " | ".join(_cell(acc[k]) for k, _ in SWAP) + " |")
        out.append("")
    return "\n".join(out) + "\n"
