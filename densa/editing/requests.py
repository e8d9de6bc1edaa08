"""Edit requests in EasyEdit's schema, checked, and turned into notes.

    {"prompt": "What is the capital of France?", "target_new": "Lima",
     "ground_truth": "Paris",                       # optional
     "rephrase_prompt": "Name the capital city of France.",   # optional: a string or a list
     "locality": {"same_subject": {"prompt": [...], "ground_truth": [...]}},   # optional
     "statement": "The capital of France is Lima."}  # optional: the note EREN writes

EREN stores an edit as a natural-language statement: the request's `statement` (or
`requested_rewrite.statement`, CounterFact style) when given, else "PROMPT TARGET_NEW." — a question
followed by its new answer, which the reader also understands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from densa.errors import DensaError


class RequestError(DensaError):
    """An edit request that does not follow the schema."""


@dataclass(frozen=True)
class EditRequest:
    prompt: str
    target_new: str
    ground_truth: str | None = None
    rephrase_prompts: tuple[str, ...] = ()
    locality: dict[str, tuple[tuple[str, str | None], ...]] = field(default_factory=dict)
    """probe type -> ((prompt, ground truth), ...)."""
    statement: str | None = None
    case_id: int | None = None

    @property
    def note(self) -> str:
        if self.statement:
            return self.statement
        return f"{self.prompt.strip()} {self.target_new.strip().rstrip('.')}."


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RequestError(f"{where}: expected a string or a list of strings")


def parse_request(raw: Mapping[str, Any], where: str = "request") -> EditRequest:
    if not isinstance(raw, Mapping):
        raise RequestError(f"{where}: expected an object with 'prompt' and 'target_new'")
    for key in ("prompt", "target_new"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise RequestError(f"{where}: missing or empty string key {key!r}")
    locality: dict[str, tuple[tuple[str, str | None], ...]] = {}
    for name, group in (raw.get("locality") or {}).items():
        if not isinstance(group, Mapping) or "prompt" not in group:
            raise RequestError(f"{where}: locality.{name} needs 'prompt' (and 'ground_truth')")
        prompts = _strings(group["prompt"], f"{where}: locality.{name}.prompt")
        truths = _strings(group.get("ground_truth"), f"{where}: locality.{name}.ground_truth")
        if truths and len(truths) != len(prompts):
            raise RequestError(
                f"{where}: locality.{name} has {len(prompts)} prompts but {len(truths)} ground_truth"
            )
        locality[name] = tuple(zip(prompts, truths or (None,) * len(prompts), strict=True))
    statement = raw.get("statement") or (raw.get("requested_rewrite") or {}).get("statement")
    if statement is not None and not isinstance(statement, str):
        raise RequestError(f"{where}: 'statement' must be a string")
    return EditRequest(
        prompt=raw["prompt"],
        target_new=raw["target_new"],
        ground_truth=raw.get("ground_truth"),
        rephrase_prompts=_strings(raw.get("rephrase_prompt"), f"{where}: rephrase_prompt"),
        locality=locality,
        statement=statement,
        case_id=raw.get("case_id"),
    )


def parse_requests(
    raw: Sequence[Mapping[str, Any]] | Mapping[str, Any], source: str = "requests"
) -> list[EditRequest]:
    if isinstance(raw, Mapping):
        raw = [raw]
    return [parse_request(r, f"{source}[{i}]") for i, r in enumerate(raw)]
