"""Downstream tasks as lm-evaluation-harness task files: one YAML per task over a local JSONL file.

Each YAML uses lm-eval's own keys (`task`, `tag`, `dataset_path: json`, `dataset_kwargs.data_files.test`,
`output_type`, `doc_to_text`, `doc_to_target`, `doc_to_choice`, `target_delimiter`, `metric_list`), so
`lm_eval --include_path DIR --tasks density` runs the same requests. The tag says what a task feeds:
`density_loss` tasks give the conditional loss −log P(output | instruction) per token, `density_score`
tasks give the accuracy S. Templates are `{{field}}` substitutions of the JSONL record's fields (a subset
of lm-eval's Jinja templates).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from densa.errors import DataError

TAGS = ("density_loss", "density_score")
_FIELD = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _task_yaml(name: str, tag: str, output_type: str, text: str, target: str, choice: str | None) -> dict:
    metrics = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
    if output_type == "loglikelihood" and tag == "density_loss":
        metrics.insert(0, {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False})
    spec = {
        "task": f"density_{name}_{tag.split('_')[1]}",
        "tag": ["density", tag],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": f"{name}.jsonl"}},
        "test_split": "test",
        "output_type": output_type,
        "doc_to_text": text,
        "doc_to_target": target,
        "target_delimiter": " ",
        "metric_list": metrics,
    }
    if choice:
        spec["doc_to_choice"] = choice
    return spec


TASK_FILES: dict[str, dict] = {
    **{
        f"{n}_loss.yaml": _task_yaml(
            n, "density_loss", "loglikelihood", "{{instruction}}", " {{output}}", None
        )
        for n in ("facts", "twohop", "arith")
    },
    "facts_score.yaml": _task_yaml(
        "facts", "density_score", "multiple_choice", "{{acc_context}}", "{{gold}}", "{{choices}}"
    ),  # fmt: skip
    **{
        f"{n}_score.yaml": _task_yaml(
            n, "density_score", "loglikelihood", "{{acc_context}}", " {{answer}}", None
        )
        for n in ("twohop", "arith")
    },
}
"""The suite's task files, written next to the JSONL files by `write_task_files`."""


def write_task_files(folder: str | Path) -> list[Path]:
    out = []
    for name, spec in TASK_FILES.items():
        path = Path(folder) / name
        path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
        out.append(path)
    return out


def render(template: str, doc: dict[str, Any]) -> Any:
    """`{{field}}` substitution; a template that is exactly one field returns the raw value (list, int)."""
    whole = _FIELD.fullmatch(template)
    try:
        if whole:
            return doc[whole.group(1)]
        return _FIELD.sub(lambda m: str(doc[m.group(1)]), template)
    except KeyError as err:
        raise DataError(f"template {template!r} names field {err} that the record lacks") from None


@dataclass(frozen=True)
class Task:
    name: str
    tag: str
    """density_loss or density_score."""
    output_type: str
    """loglikelihood or multiple_choice."""
    docs: tuple[dict, ...]
    doc_to_text: str
    doc_to_target: str
    doc_to_choice: str | None = None
    target_delimiter: str = " "

    def requests(self, doc: dict) -> list[tuple[str, str]]:
        """(context, continuation) pairs of one document: one, or one per choice. As in lm-eval, the
        target delimiter goes before each choice of a multiple_choice task only: a loglikelihood task's
        target template carries its own leading space."""
        text, target = render(self.doc_to_text, doc), render(self.doc_to_target, doc)
        if self.output_type == "multiple_choice":
            return [(text, self.target_delimiter + str(c)) for c in render(self.doc_to_choice or "", doc)]
        return [(text, str(target))]

    def gold(self, doc: dict) -> int:
        return int(render(self.doc_to_target, doc)) if self.output_type == "multiple_choice" else 0


def load_task(path: str | Path) -> Task:
    path = Path(path)
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    tag = next((t for t in spec.get("tag", []) if t in TAGS), None)
    kind = spec.get("output_type")
    if tag is None or kind not in ("loglikelihood", "multiple_choice"):
        raise DataError(f"{path}: needs a tag in {TAGS} and output_type loglikelihood|multiple_choice")
    data = path.parent / spec["dataset_kwargs"]["data_files"]["test"]
    if not data.is_file():
        raise DataError(f"{path}: data file {data} not found")
    docs = tuple(json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip())
    if not docs:
        raise DataError(f"{data}: no documents")
    return Task(
        spec["task"], tag, kind, docs, spec["doc_to_text"], spec["doc_to_target"],
        spec.get("doc_to_choice"), spec.get("target_delimiter", " "),
    )  # fmt: skip


def load_suite(folder: str | Path) -> list[Task]:
    """Every task file in `folder`, sorted by name; errors when either tag has no task."""
    tasks = [load_task(p) for p in sorted(Path(folder).glob("*.yaml"))]
    missing = [t for t in TAGS if not any(task.tag == t for task in tasks)]
    if missing:
        raise DataError(f"{folder}: no task tagged {', '.join(missing)} (expected lm-eval task YAML files)")
    return tasks
