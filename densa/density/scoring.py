"""Conditional loss and accuracy of a causal LM on the density tasks, with lm-eval's request semantics.

A request (context, continuation) is tokenized as lm-eval does: trailing spaces of the context move to the
continuation, the continuation's tokens are those of `encode(context + continuation)` after the first
`len(encode(context))`, no BOS is added. The model gets `(context + continuation)[:-1]` (left-truncated to
`max_len`) and the continuation's log-probabilities are summed; `is_greedy` is lm-eval's `acc` of a
loglikelihood task. The conditional loss of a task is −Σ log P / Σ tokens over its documents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from densa.density.tasks import Task
from densa.errors import DataError


@dataclass(frozen=True)
class LogLikelihood:
    logprob: float
    tokens: int
    is_greedy: bool


@dataclass(frozen=True)
class SuiteScore:
    loss: float
    """Conditional loss: mean over density_loss tasks of each task's per-token
    −log P(output | instruction)."""
    score: float
    """S: mean accuracy over density_score tasks."""
    tasks: dict[str, float] = field(default_factory=dict)
    """Per task: loss (density_loss) or accuracy (density_score)."""


def encode_pair(
    encode: Callable[[str], list[int]], context: str, continuation: str
) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def loglikelihoods(
    model: torch.nn.Module,
    encode: Callable[[str], list[int]],
    requests: Sequence[tuple[str, str]],
    *,
    max_len: int = 256,
    batch_size: int = 16,
) -> list[LogLikelihood]:
    """log P(continuation | context) per request; `model(ids)` must return logits [B, T, V]."""
    pairs = [encode_pair(encode, c, x) for c, x in requests]
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    for (ctx, cont), (c, x) in zip(pairs, requests):
        if not cont:
            raise DataError(f"continuation {x!r} after {c[-40:]!r} encodes to no tokens")
        if vocab is not None and max(ctx + cont) >= vocab:
            raise DataError(
                f"token id {max(ctx + cont)} ≥ the model's vocab_size {vocab}: "
                "the tokenizer is not the model's"
            )
    device = next(model.parameters()).device
    out: list[LogLikelihood] = []
    for start in range(0, len(pairs), batch_size):
        chunk = [(ctx + cont)[-(max_len + 1) :] for ctx, cont in pairs[start : start + batch_size]]
        width = max(len(s) - 1 for s in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, seq in enumerate(chunk):
            ids[i, : len(seq) - 1] = torch.tensor(seq[:-1])
        logprobs = torch.log_softmax(model(ids.to(device)).float(), dim=-1).cpu()
        for i, (seq, (_, cont)) in enumerate(zip(chunk, pairs[start : start + batch_size])):
            n = len(cont)
            rows = logprobs[i, len(seq) - 1 - n : len(seq) - 1]
            target = torch.tensor(cont)
            lp = rows.gather(1, target[:, None]).sum().item()
            out.append(LogLikelihood(lp, n, bool((rows.argmax(-1) == target).all())))
    return out


def score_task(model: torch.nn.Module, encode: Callable[[str], list[int]], task: Task, **kw) -> float:
    """Per-token conditional loss (density_loss) or accuracy (density_score) of one task."""
    requests = [task.requests(doc) for doc in task.docs]
    flat = loglikelihoods(model, encode, [r for rs in requests for r in rs], **kw)
    if task.tag == "density_loss":
        loss = -sum(r.logprob for r in flat) / sum(r.tokens for r in flat)
        if not math.isfinite(loss):
            raise DataError(f"{task.name}: conditional loss is {loss}")
        return loss
    correct, i = 0, 0
    for doc, rs in zip(task.docs, requests):
        got = flat[i : i + len(rs)]
        i += len(rs)
        if task.output_type == "multiple_choice":
            correct += max(range(len(got)), key=lambda k: got[k].logprob) == task.gold(doc)
        else:
            correct += got[0].is_greedy
    return correct / len(task.docs)


def score_suite(
    model: torch.nn.Module, encode: Callable[[str], list[int]], tasks: Sequence[Task], **kw
) -> SuiteScore:
    """Conditional loss L and score S of a model on the suite (model in eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        per = {t.name: score_task(model, encode, t, **kw) for t in tasks}
    finally:
        model.train(was_training)
    losses = [per[t.name] for t in tasks if t.tag == "density_loss"]
    scores = [per[t.name] for t in tasks if t.tag == "density_score"]
    return SuiteScore(sum(losses) / len(losses), sum(scores) / len(scores), per)
