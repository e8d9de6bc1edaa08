"""The model card (README.md) of an exported folder: YAML front matter plus recipe, data, metrics, sparsity
and how to load it. Every section is optional and says so when its source is missing."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densa.models.config import ModelConfig


@dataclass
class CardInputs:
    name: str
    config: ModelConfig
    license: str | None = "apache-2.0"
    """None: no license line (a finetune whose source names none)."""
    license_name: str | None = None
    license_link: str | None = None
    base_model: str | None = None
    """Hub id of the model this one was finetuned from."""
    datasets: list[str] = field(default_factory=list)
    """Hub ids of datasets, for the front matter (the source model's)."""
    recipe_text: str | None = None
    """The run's resolved recipe.yaml, verbatim."""
    data: list[dict[str, Any]] = field(default_factory=list)
    """Rows {split, path, sources, documents, tokens} (see `data_rows`)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """From `last_metrics`: train_loss, train_step, val_loss, val_ppl, val_step."""
    sparsity: dict[str, Any] | None = None
    """A SparsityReport as a dict (sparsity.json)."""
    predictors: dict[str, Any] | None = None
    """The predictors file's metadata (predictors.safetensors): rank, held-out metrics per layer."""
    remote_code: bool = False
    extra_tags: list[str] = field(default_factory=list)


# An absolute local path in text: /a/b, ~/a or C:\\a, not part of a URL (https://host/...) or of a relative
# path (a/b). The card goes to the Hub: such paths mean nothing there and describe this machine.
LOCAL_PATH = re.compile(r"(?<![\w:/.~-])(?:~/|/(?!/)|[A-Za-z]:\\)[\w.-]+(?:[/\\][\w.-]+)+")


def hide_local_paths(text: str) -> str:
    """`text` with each absolute local path replaced by `<local>/NAME` (NAME: its last component)."""
    return LOCAL_PATH.sub(lambda m: "<local>/" + re.split(r"[/\\]", m.group(0))[-1], text)


def last_metrics(path: str | os.PathLike, max_step: int | None = None) -> dict[str, Any]:
    """Last train loss and last validation loss/ppl (with their steps) of a metrics.jsonl, up to `max_step`
    (the exported checkpoint's step); {} if absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    found: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if max_step is not None and isinstance(record.get("step"), int) and record["step"] > max_step:
            continue
        if "train/loss" in record:
            found.update(train_loss=record["train/loss"], train_step=record.get("step"))
        if "val/loss" in record:
            found.update(
                val_loss=record["val/loss"], val_ppl=record.get("val/ppl"), val_step=record.get("step")
            )
    return found


def data_rows(recipe: dict[str, Any], base: Path | None = None) -> list[dict[str, Any]]:
    """One row per dataset of the recipe's data.train / data.valid, from each dataset's manifest."""
    from densa.data.manifest import read_manifest
    from densa.errors import DataError

    rows = []
    for split in ("train", "valid"):
        for source in (recipe.get("data") or {}).get(split) or []:
            prefix = Path(source["path"] if isinstance(source, dict) else source)
            row: dict[str, Any] = {"split": split, "path": str(prefix)}
            candidates = [prefix] if prefix.is_absolute() or base is None else [prefix, base / prefix]
            for candidate in candidates:
                try:
                    m = read_manifest(candidate)
                except DataError:
                    continue
                row.update(sources=m.sources, documents=m.num_documents, tokens=m.num_tokens)
                break
            rows.append(row)
    return rows


def _yaml_list(items: list[str]) -> str:
    return "\n".join(f"- {json.dumps(item)}" for item in items)


def _num(value: Any, fmt: str = ".4f") -> str:
    return format(value, fmt) if isinstance(value, int | float) else "n/a"


def build_model_card(inputs: CardInputs) -> str:
    c = inputs.config
    ffn = f"{c.activation}{' gated (GLU)' if c.gated else ''}"
    tags = ["densa", "causal-lm", "text-generation", c.activation, *inputs.extra_tags]
    if inputs.sparsity is not None:
        tags.append("activation-sparsity")
    if inputs.remote_code:
        tags.append("custom_code")
    meta = ["library_name: transformers"]
    for key in ("license", "license_name", "license_link", "base_model"):
        value = getattr(inputs, key)
        if value:
            meta.append(f"{key}: {json.dumps(value)}")
    if inputs.datasets:
        meta.append(f"datasets:\n{_yaml_list(inputs.datasets)}")
    meta += ["pipeline_tag: text-generation", f"tags:\n{_yaml_list(list(dict.fromkeys(tags)))}"]
    front = "---\n" + "\n".join(meta) + "\n---\n"
    params = c.num_params()
    lines = [
        f"# {inputs.name}",
        "",
        "A decoder language model trained and exported with densa"
        + (
            f", finetuned from [{inputs.base_model}](https://huggingface.co/{inputs.base_model})."
            if inputs.base_model
            else "."
        ),
        "",
        "## Model",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| layers × dim | {c.n_layers} × {c.dim} |",
        f"| heads (kv heads) | {c.n_heads} ({c.n_kv_heads or c.n_heads}) |",
        f"| FFN | {c.ffn_dim} neurons, {ffn} |",
        f"| vocabulary | {c.vocab_size} |",
        f"| context | {max(c.max_seq_len, int(c.extra.get('hf_max_position_embeddings') or 0))} |",
    ]
    if params:
        lines.append(f"| parameters | {params:,} |")
    lines += ["", "## Training recipe", ""]
    lines += (
        ["```yaml", hide_local_paths(inputs.recipe_text.rstrip()), "```"]
        if inputs.recipe_text
        else ["No recipe recorded."]
    )
    lines += ["", "## Data", ""]
    if inputs.data:
        lines += ["| split | dataset | sources | documents | tokens |", "| --- | --- | --- | ---: | ---: |"]
        for row in inputs.data:
            sources = ", ".join(row.get("sources") or []) or "manifest not found"
            docs, toks = row.get("documents"), row.get("tokens")
            path = hide_local_paths(str(row["path"]))
            lines.append(
                f"| {row['split']} | {path} | {sources} | {docs if docs is not None else 'n/a'} "
                f"| {toks if toks is not None else 'n/a'} |"
            )
    else:
        lines.append("No data recorded.")
    m = inputs.metrics
    lines += ["", "## Metrics", ""]
    if m:
        lines += [
            "| metric | value | step |",
            "| --- | ---: | ---: |",
            f"| train loss (last) | {_num(m.get('train_loss'))} | {m.get('train_step', 'n/a')} |",
            f"| validation loss | {_num(m.get('val_loss'))} | {m.get('val_step', 'n/a')} |",
            f"| validation perplexity | {_num(m.get('val_ppl'), '.3f')} | {m.get('val_step', 'n/a')} |",
        ]
    else:
        lines.append("No metrics.jsonl found.")
    if inputs.sparsity is not None:
        from densa.sparsity import SparsityReport

        report = SparsityReport.from_dict(inputs.sparsity)
        body = report.to_markdown().split("\n", 1)[1].strip()  # drop its own title
        lines += [
            "",
            "## Activation sparsity",
            "",
            f"PPL-{report.p:g}% sparsity (CETT, `sparsity.json`):",
            "",
            body,
        ]
    if inputs.predictors is not None:
        p = inputs.predictors
        lines += [
            "",
            "## Neuron predictors",
            "",
            f"`predictors.safetensors`: one rank-{p['rank']} low-rank predictor per layer (Deja Vu) for the "
            "predicted sparse-FFN path: only predicted rows of every FFN weight are read.",
        ]
        if p.get("metrics"):
            lines += [
                "",
                "| layer | held-out recall | precision | predicted sparsity |",
                "| ---: | ---: | ---: | ---: |",
            ]
            lines += [
                f"| {m['layer']} | {m['recall']:.3f} | {m['precision']:.3f} | {m['predicted_sparsity']:.1%} |"
                for m in p["metrics"]
            ]
    trust = ", trust_remote_code=True" if inputs.remote_code else ""
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO"{trust})',
        f'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO"{trust})',
        "```",
        "",
        'or with densa\'s engine (`ffn="sparse"` decodes with the thresholds in sparsity.json and the',
        "predictors in predictors.safetensors, when present):",
        "",
        "```python",
        "from densa.inference import InferenceEngine, GenerationConfig",
        "",
        'engine = InferenceEngine.from_pretrained("PATH")',
        'out = engine.generate(["Hello"], GenerationConfig(max_new_tokens=32), ffn="sparse")',
        "print(out.generations[0].text)",
        "```",
        "",
    ]
    return front + "\n" + "\n".join(lines)
