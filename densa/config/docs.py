"""Generate docs/config_reference.md from the schema's field docstrings.

Regenerate after changing the schema:  python -m densa.config.docs > docs/config_reference.md
(a test fails while the committed file is stale).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import sys
from typing import Any

from densa.config.load import _hints, _type_name
from densa.config.schema import DatasetSource, ProSparseSection, RunConfig, WandbSection
from densa.models.config import RopeScaling

HEADER = """# Recipe reference

<!-- Generated from the docstrings in densa/config/schema.py, densa/models/config.py and
     densa/sparse_moe/config.py by
     `python -m densa.config.docs > docs/config_reference.md`. Do not edit by hand. -->

Every key a recipe may contain, by section. Keys not listed here are errors. How recipes compose
(`base:`, `--set`) and how the batch is derived is in [recipes.md](recipes.md).
"""


@functools.cache
def _module_classes(module_name: str) -> dict[str, ast.ClassDef]:
    tree = ast.parse(inspect.getsource(sys.modules[module_name]))
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right after each annotated field) of a dataclass."""
    body = _module_classes(cls.__module__)[cls.__name__].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "**required**"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{list(value)}`"
    return f"`{value}`"


def _table(cls: type, prefix: str) -> list[str]:
    docs = field_docs(cls)
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        kind = _type_name(_hints(cls)[f.name]).replace("|", "\\|")
        text = docs.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | {kind} | {_default(f)} | {text} |")
    return rows


def render() -> str:
    """The whole reference page."""
    out = [HEADER]
    top = field_docs(RunConfig)
    subsections = {
        "model": [("model.rope_scaling", RopeScaling)],
        "data": [("data.train[] / data.valid[]", DatasetSource)],
        "logging": [("logging.wandb", WandbSection)],
        "sparsity": [("sparsity.prosparse", ProSparseSection)],
    }
    for f in dataclasses.fields(RunConfig):
        section = _hints(RunConfig)[f.name]
        out.append(f"## `{f.name}`\n")
        if not dataclasses.is_dataclass(section):
            out.append(f"{top.get(f.name, '')} Type: {_type_name(section)}.\n")
            continue
        if section.__doc__ and not section.__doc__.startswith(section.__name__ + "("):
            out.append(inspect.cleandoc(section.__doc__) + "\n")
        out += [*_table(section, f"{f.name}."), ""]
        for title, sub in subsections.get(f.name, []):
            out.append(f"### `{title}`\n")
            if sub.__doc__ and not sub.__doc__.startswith(sub.__name__ + "("):
                out.append(inspect.cleandoc(sub.__doc__) + "\n")
            out += [*_table(sub, ""), ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
