"""`Editor`: EasyEdit's object model over EREN and its baselines.

    editor = Editor.from_hparams("hparams/EREN/smollm2-135m.yaml")
    result = editor.edit([{"prompt": "What is the capital of France?", "target_new": "Lima",
                           "statement": "The capital of France is Lima."}])
    editor.ask(["What is the capital of France?"])        # -> Answer("Lima", from the notes)

Algorithms (`alg_name`):
    EREN      notes in a notebook; read or say "unanswerable", then closed-book fallback
    ONE_STEP  notes in a notebook; read without the abstain option (in-context editing)
    FT        finetune the model on each edit statement in turn (sequential editing)
    NONE      no edit at all (the unedited model, closed-book)

Semantics: `edit(requests)` applies the requests one after another and keeps them (EasyEdit's
`sequential_edit=True`): the notebook grows, FT weights move. `sequential_edit=False` evaluates each
request alone and restores the previous state after it. `reset()` forgets every edit.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from densa.editing.eren import Answer, NoteReader
from densa.editing.hparams import EditHParams
from densa.editing.metrics import summarize
from densa.editing.notebook import Notebook
from densa.editing.prompts import closed_book_prompt, is_abstention, matches, normalize
from densa.editing.reader import Reader
from densa.editing.requests import EditRequest, parse_requests
from densa.errors import DensaError


class EditorError(DensaError):
    """An editor that cannot be set up as configured."""


def resolve_model(name: str) -> Path:
    from densa.data.fetch_models import MODELS, fetch_model

    if name in MODELS:
        return fetch_model(name)
    path = Path(name)
    if not path.is_dir():
        raise EditorError(
            f"model_name: {name!r} is neither a model folder nor a known model ({', '.join(MODELS)})"
        )
    return path


@dataclass
class EditResult:
    requests: list[EditRequest]
    rows: list[dict[str, Any]] = field(default_factory=list)
    """One row per probe: group, prompt, target, pre, post, correct, notes read, ..."""

    @property
    def metrics(self) -> dict[str, Any]:
        return summarize(self.rows)


class Editor:
    def __init__(self, hparams: EditHParams) -> None:
        self.hparams = hp = hparams
        self.model_path = resolve_model(hp.model_name)
        self.reader = Reader(
            self.model_path,
            chat=hp.chat,
            max_new_tokens=hp.max_new_tokens,
            batch_size=hp.batch_size,
            device=hp.device,
        )
        # The hparams' notebook is read, never written: edits live in memory (evaluations edit freely).
        self.notebook = Notebook(Notebook.load(hp.notebook).notes if hp.notebook else ())
        self.note_reader: NoteReader | None = None
        if hp.alg_name in ("EREN", "ONE_STEP"):
            from densa.editing.retriever import build_retriever

            encoder = None if hp.sentence_model_name == "all-minilm-l6-v2" else hp.sentence_model_name
            retriever = build_retriever(hp.retriever, encoder)
            mode = "eren" if hp.alg_name == "EREN" else "one_step"
            self.note_reader = NoteReader(
                self.reader,
                retriever,
                self.notebook,
                hp.top_k,
                mode,
                fallback=hp.fallback == "closed_book",
                hops=hp.retrieval_hops,
            )
        self._original: dict[str, torch.Tensor] | None = None
        self._ft_optimizer: torch.optim.Optimizer | None = None
        if hp.alg_name == "FT":
            if self.reader.backend != "hf":
                raise EditorError(
                    f"alg_name FT: needs an HF model folder, {self.model_path} is a densa folder"
                )
            self._original = copy.deepcopy(self.reader.model.state_dict())
        self._base_notes = self.notebook.notes

    @classmethod
    def from_hparams(cls, path: str | os.PathLike) -> Editor:
        return cls(EditHParams.from_hparams(path))

    # -- asking -----------------------------------------------------------------------------------------

    def ask(self, questions: Sequence[str]) -> list[Answer]:
        if self.note_reader is not None:
            return self.note_reader.ask(questions)
        texts = self.reader.answer([closed_book_prompt(q) for q in questions])
        return [Answer(q, t, "closed_book") for q, t in zip(questions, texts, strict=True)]

    def ask_unedited(self, questions: Sequence[str]) -> list[Answer]:
        """The answers of the same system with no edits (the BP reference): closed-book with the
        unedited weights."""
        if self._original is not None and self._edited:
            saved = copy.deepcopy(self.reader.model.state_dict())
            self.reader.model.load_state_dict(self._original)
            try:
                texts = self.reader.answer([closed_book_prompt(q) for q in questions])
            finally:
                self.reader.model.load_state_dict(saved)
        else:
            texts = self.reader.answer([closed_book_prompt(q) for q in questions])
        return [Answer(q, t, "closed_book") for q, t in zip(questions, texts, strict=True)]

    # -- editing ----------------------------------------------------------------------------------------

    _edited = False

    def apply(self, requests: Sequence[EditRequest]) -> None:
        """Apply edits and keep them."""
        alg = self.hparams.alg_name
        if alg in ("EREN", "ONE_STEP"):
            self.notebook.add_many([r.note for r in requests])
        elif alg == "FT":
            self._finetune(requests)
        self._edited = self._edited or (alg != "NONE" and bool(requests))

    def reset(self) -> None:
        """Forget every edit (back to the hparams' notebook and the original weights)."""
        self.notebook.restore(self._base_notes)
        if self._original is not None:
            self.reader.model.load_state_dict(self._original)
        self._ft_optimizer = None
        self._edited = False

    def edit(
        self,
        requests: Sequence[Mapping[str, Any] | EditRequest],
        sequential_edit: bool = True,
        evaluate: bool = True,
    ) -> EditResult:
        reqs = [r if isinstance(r, EditRequest) else parse_requests([r])[0] for r in requests]
        result = EditResult(reqs)
        pre = self.pre_answers(reqs) if evaluate else {}
        if sequential_edit:
            self.apply(reqs)
            if evaluate:
                result.rows = self.score(reqs, pre)
            return result
        for req in reqs:  # each edit alone, then undo it
            saved_notes = self.notebook.notes
            saved_weights = (
                copy.deepcopy(self.reader.model.state_dict()) if self._original is not None else None
            )
            self.apply([req])
            if evaluate:
                result.rows += self.score([req], pre)
            self.notebook.restore(saved_notes)
            if saved_weights is not None:
                self.reader.model.load_state_dict(saved_weights)
        return result

    # -- scoring ----------------------------------------------------------------------------------------

    @staticmethod
    def probes(req: EditRequest) -> list[tuple[str, str, str | None]]:
        """(group, prompt, target) of a request: scope targets are target_new, locality ones the truth."""
        out = [("rewrite", req.prompt, req.target_new)]
        out += [("rephrase", p, req.target_new) for p in req.rephrase_prompts]
        for group, pairs in req.locality.items():
            out += [(group, p, truth) for p, truth in pairs]
        return out

    def pre_answers(self, reqs: Sequence[EditRequest]) -> dict[str, str]:
        """Locality prompt -> the answer of the same system without edits (the BP reference)."""
        prompts = sorted({p for r in reqs for g, p, _ in self.probes(r) if g not in ("rewrite", "rephrase")})
        return {a.question: a.text for a in self.ask_unedited(prompts)}

    def score(
        self,
        reqs: Sequence[EditRequest],
        pre: Mapping[str, str],
        extra: Sequence[tuple[str, str, str, set[str]]] = (),
    ) -> list[dict[str, Any]]:
        """Probe rows for `reqs` (pre-edit answers from `pre`); `extra` adds (group, prompt, target, note
        texts that answer it) probes such as two-hop questions."""
        items = [(r, g, p, t) for r in reqs for g, p, t in self.probes(r)]
        answers = self.ask([p for _, _, p, _ in items] + [p for _, p, _, _ in extra])
        rows = []
        for (req, group, prompt, target), ans in zip(items, answers, strict=False):
            rows.append(self._row(req.case_id, group, prompt, target, ans, pre.get(prompt), {req.note}))
        for (group, prompt, target, needed), ans in zip(extra, answers[len(items) :], strict=True):
            rows.append(self._row(None, group, prompt, target, ans, None, needed))
        return rows

    @staticmethod
    def _row(
        case_id, group, prompt, target, ans: Answer, pre: str | None, notes_needed: set[str]
    ) -> dict[str, Any]:
        read = {h.note.text for h in ans.notes}
        scope = group in ("rewrite", "rephrase", "two_hop")
        row = {
            "case_id": case_id,
            "group": group,
            "prompt": prompt,
            "target": target,
            "post": ans.text,
            "pre": pre,
            "source": ans.source,
            "reader_output": ans.reader_output,
            "notes": [h.note.id for h in ans.notes],
            "from_notes": ans.source == "notes" and not is_abstention(ans.text),
            "retrieved_edit": (notes_needed <= read) if ans.notes or ans.source == "notes" else None,
        }
        if scope:
            row["correct"] = matches(ans.text, target)
        else:
            row["correct"] = normalize(ans.text) == normalize(pre or "")
            row["pre_correct"] = matches(pre or "", target) if target else None
        return row

    # -- FT baseline ------------------------------------------------------------------------------------

    def _finetune(self, requests: Sequence[EditRequest]) -> None:
        hp, model, tok = self.hparams, self.reader.model, self.reader.tokenizer
        if self._ft_optimizer is None:  # one optimizer over the whole sequence of edits, until reset()
            params = [p for p in model.parameters() if p.requires_grad]
            self._ft_optimizer = torch.optim.AdamW(params, lr=hp.ft_lr, weight_decay=0.0)
        opt = self._ft_optimizer
        model.train()
        try:
            for req in requests:
                ids = torch.tensor([tok(req.note)["input_ids"]], device=model.device)
                for _ in range(hp.ft_steps_per_edit):
                    loss = model(input_ids=ids, labels=ids).loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
        finally:
            model.eval()
