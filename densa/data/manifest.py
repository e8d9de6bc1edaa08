"""The JSON manifest next to every `.bin/.idx` pair: which tokenizer made it and what it holds.

The trainer calls `check_manifest_matches` before training so that data tokenized with another
vocabulary fails loudly instead of training on garbage.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from densa.errors import DataError

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """What a preprocessed dataset contains and which tokenizer produced it."""

    tokenizer_fingerprint: str
    tokenizer_path: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    dtype: str
    num_documents: int
    num_tokens: int
    sources: list[str] = field(default_factory=list)
    append_eos: bool = True
    prepend_bos: bool = False
    densa_version: str = ""
    manifest_version: int = MANIFEST_VERSION
    extra: dict = field(default_factory=dict)


def manifest_path(prefix: str | Path) -> Path:
    return Path(str(prefix) + ".json")


def write_manifest(prefix: str | Path, manifest: Manifest) -> Path:
    """Write `<prefix>.json` atomically (temp file + rename)."""
    path = manifest_path(prefix)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(prefix_or_path: str | Path) -> Manifest:
    """Read `<prefix>.json` (or the given .json path) into a `Manifest`."""
    p = Path(prefix_or_path)
    path = p if p.suffix == ".json" else manifest_path(p)
    if not path.exists():
        raise DataError(f"manifest {path} not found: the dataset is incomplete or was not made by densa")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"manifest {path} is not valid JSON: {err}") from None
    known = set(Manifest.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DataError(f"manifest {path} has unknown keys {unknown}")
    try:
        return Manifest(**raw)
    except TypeError as err:
        raise DataError(f"manifest {path} is missing fields: {err}") from None


def check_manifest_matches(
    manifest: Manifest,
    tokenizer_fingerprint: str | None = None,
    vocab_size: int | None = None,
    name: str = "dataset",
) -> None:
    """Raise `DataError` naming both values when the data was tokenized for another tokenizer/model.

    `vocab_size` is the model's embedding size: the data's ids must all fit, so the data vocabulary
    must not exceed it (models often pad their embedding to a multiple of 64/128, which is fine).
    """
    problems = []
    if tokenizer_fingerprint is not None and tokenizer_fingerprint != manifest.tokenizer_fingerprint:
        problems.append(
            f"tokenizer fingerprint {manifest.tokenizer_fingerprint[:16]} in the manifest "
            f"({manifest.tokenizer_path}) != {tokenizer_fingerprint[:16]} of the run's tokenizer"
        )
    if vocab_size is not None and manifest.vocab_size > vocab_size:
        problems.append(
            f"data vocab_size {manifest.vocab_size} (manifest) > model vocab_size {vocab_size}: "
            "token ids would overflow the embedding"
        )
    if problems:
        raise DataError(f"{name} does not match the model: " + "; ".join(problems))
