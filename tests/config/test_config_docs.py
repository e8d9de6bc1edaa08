"""docs/config_reference.md is generated from the schema docstrings and must be current."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from densa.config import schema
from densa.config.docs import field_docs, render
from densa.models.config import ModelConfig, RopeScaling

DOC = Path(__file__).resolve().parents[2] / "docs" / "config_reference.md"
SECTIONS = [
    c for c in vars(schema).values() if dataclasses.is_dataclass(c) and c.__module__ == schema.__name__
]


@pytest.mark.parametrize("cls", [*SECTIONS, ModelConfig, RopeScaling], ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(cls: type) -> None:
    # RunConfig's section fields are documented by their section class.
    fields = [f for f in dataclasses.fields(cls) if not (cls is schema.RunConfig and f.name != "deepspeed")]
    missing = [f.name for f in fields if not field_docs(cls).get(f.name)]
    assert not missing, f"{cls.__name__}: fields without a one-line docstring: {missing}"


def test_config_reference_is_current() -> None:
    regenerate = "python -m densa.config.docs > docs/config_reference.md"
    assert DOC.read_text(encoding="utf-8") == render(), (
        f"docs/config_reference.md is stale; regenerate: {regenerate}"
    )


def test_reference_lists_every_key() -> None:
    text = render()
    assert "| `schedule.decay_fraction` | float | `0.1` |" in text
    assert "| `model.vocab_size` | int | **required** |" in text
    assert "## `deepspeed`" in text
