"""Synthetic long-context tasks at token level: seedable, with answer spans marked.

Every task is a context (filler with needles inside) followed by a query segment, the *tail*. Targets
are next-token labels: `labels[t]` is the token the model must predict after position t (-100 where
there is nothing to predict), and `answer_mask` marks those t (the positions whose queries do the
retrieval, which is what CIS labels need). The answers are hidden in the input (MQAR shows each queried
key followed by the QUERY marker, not by its value), otherwise a model learns to copy, not to recall.

- `mqar`: K key→value bigrams in the context; the tail asks Q of the keys: QUERY k1 QUERY k2 ...
- `passkey`: one PASS marker followed by n value tokens; the tail is QUERY PASS d1 ... d(n-1).
- `first_occurrence`: keys repeat with different values; the answer is the value at the first occurrence.
- `repeated_pair`: every key occurs twice, in two different blocks of the context; one key carries the same
  value both times, the others' values are permuted so that every value occurs twice as well. The tail is
  QUERY alone and the answer is the target's value. Token counts cannot single it out; only the later
  occurrence, seeing the earlier one while the context is encoded, can tell that its value repeats (a
  cross-block dependency, reference/longctx.md §7.4).
- long-document variants take filler from a text (a file or a folder of .txt files), byte-level mapped
  onto the filler tokens (128 filler tokens = ASCII, so the text stays readable) or through `tokenize`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from densa.errors import DensaError

Filler = Callable[[int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class TaskVocab:
    """BOS, QUERY, PASS, then key, value and filler tokens."""

    n_keys: int = 64
    n_values: int = 64
    n_filler: int = 128
    bos: int = 0
    query: int = 1
    passkey: int = 2

    @property
    def key0(self) -> int:
        return 3

    @property
    def value0(self) -> int:
        return 3 + self.n_keys

    @property
    def filler0(self) -> int:
        return 3 + self.n_keys + self.n_values

    @property
    def size(self) -> int:
        return self.filler0 + self.n_filler


@dataclass(frozen=True)
class TaskSample:
    input_ids: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], -100 where nothing is predicted
    answer_mask: torch.Tensor  # [B, T] bool
    context_mask: torch.Tensor  # [B, T] bool: everything before the tail
    tail: int  # length of the query segment (the same for every row)

    def to_batch(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "answer_mask": self.answer_mask,
            "context_mask": self.context_mask,
        }


def random_filler(vocab: TaskVocab) -> Filler:
    def fill(n: int, gen: torch.Generator) -> torch.Tensor:
        return vocab.filler0 + torch.randint(0, vocab.n_filler, (n,), generator=gen)

    return fill


def load_text(path: str | os.PathLike) -> str:
    """A .txt file, or every .txt file of a folder (sorted, recursively) joined by blank lines."""
    path = Path(path)
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    files = sorted(path.rglob("*.txt")) if path.is_dir() else []
    if not files:
        raise DensaError(f"{path}: no text file or folder of .txt files")
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


def text_filler(
    path: str | os.PathLike, vocab: TaskVocab, tokenize: Callable[[str], list[int]] | None = None
) -> Filler:
    """Random windows of a text. Default: bytes mod n_filler onto the filler tokens; with `tokenize`,
    its ids are used as they are (the caller owns the vocabulary then)."""
    text = load_text(path)
    if tokenize is None:
        data = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
        stream = vocab.filler0 + data % vocab.n_filler
    else:
        stream = torch.tensor(tokenize(text), dtype=torch.long)

    def fill(n: int, gen: torch.Generator) -> torch.Tensor:
        if stream.numel() < n:
            raise DensaError(f"{path}: text has {stream.numel()} tokens, a context needs {n}")
        start = int(torch.randint(0, stream.numel() - n + 1, (1,), generator=gen))
        return stream[start : start + n].clone()

    return fill


def _slots(ctx_len: int, n_items: int, width: int, gen: torch.Generator) -> list[int]:
    """Start positions (in 1..ctx_len) of n non-overlapping items of `width` tokens, in random order."""
    free = ctx_len - 1 - n_items * (width - 1)
    if free < n_items:
        raise DensaError(f"a context of {ctx_len} tokens cannot hold {n_items} needles of {width} tokens")
    picks = torch.randperm(free, generator=gen)[:n_items].sort().values.tolist()
    starts = [1 + p + i * (width - 1) for i, p in enumerate(picks)]
    return [starts[i] for i in torch.randperm(n_items, generator=gen).tolist()]


def _assemble(rows: list[tuple[list[int], list[int], list[int]]], tail: int) -> TaskSample:
    """rows of (tokens, label positions, label tokens) -> TaskSample."""
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for b, (_, pos, tok) in enumerate(rows):
        labels[b, pos] = torch.tensor(tok, dtype=torch.long)
    context = torch.zeros_like(ids, dtype=torch.bool)
    context[:, : ids.shape[1] - tail] = True
    return TaskSample(ids, labels, labels != -100, context, tail)


def _kv_task(
    batch: int,
    seq_len: int,
    n_pairs: int | tuple[int, int],
    n_queries: int,
    vocab: TaskVocab,
    seed: int,
    filler: Filler | None,
    repeats: int,
) -> TaskSample:
    gen = torch.Generator().manual_seed(seed)
    fill = filler or random_filler(vocab)
    tail = 2 * n_queries
    ctx_len = seq_len - tail
    lo, hi = (n_pairs, n_pairs) if isinstance(n_pairs, int) else n_pairs
    if not n_queries <= lo <= hi <= vocab.n_keys:
        raise DensaError(f"need n_queries ({n_queries}) ≤ n_pairs ({lo}..{hi}) ≤ n_keys ({vocab.n_keys})")
    rows = []
    for _ in range(batch):
        k = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        keys = torch.randperm(vocab.n_keys, generator=gen)[:k].tolist()
        tokens = [vocab.bos] + fill(ctx_len - 1, gen).tolist()
        slots = sorted(_slots(ctx_len, k * repeats, 2, gen))
        order = torch.randperm(k * repeats, generator=gen).tolist()  # which key goes in which slot
        first: dict[int, int] = {}
        for slot_idx, item in enumerate(order):
            key = keys[item % k]
            value = int(torch.randint(0, vocab.n_values, (1,), generator=gen))
            start = slots[slot_idx]
            tokens[start : start + 2] = [vocab.key0 + key, vocab.value0 + value]
            first.setdefault(key, value)  # slots are in positional order: the first one wins
        asked = torch.randperm(k, generator=gen)[:n_queries].tolist()
        label_pos, label_tok = [], []
        for i, a in enumerate(asked):
            tokens += [vocab.query, vocab.key0 + keys[a]]
            label_pos.append(ctx_len + 2 * i + 1)
            label_tok.append(vocab.value0 + first[keys[a]])
        rows.append((tokens, label_pos, label_tok))
    return _assemble(rows, tail)


def mqar(
    batch: int,
    seq_len: int,
    n_pairs: int | tuple[int, int] = 8,
    n_queries: int = 4,
    *,
    vocab: TaskVocab = TaskVocab(),
    seed: int = 0,
    filler: Filler | None = None,
) -> TaskSample:
    """Multi-query associative recall; `n_pairs` may be a (lo, hi) range sampled per row."""
    return _kv_task(batch, seq_len, n_pairs, n_queries, vocab, seed, filler, repeats=1)


def first_occurrence(
    batch: int,
    seq_len: int,
    n_pairs: int | tuple[int, int] = 4,
    n_queries: int = 2,
    repeats: int = 2,
    *,
    vocab: TaskVocab = TaskVocab(),
    seed: int = 0,
    filler: Filler | None = None,
) -> TaskSample:
    """Each key appears `repeats` times with (usually) different values; recall the first one."""
    if repeats < 2:
        raise DensaError(f"first_occurrence needs repeats ≥ 2, got {repeats}")
    return _kv_task(batch, seq_len, n_pairs, n_queries, vocab, seed, filler, repeats)


def passkey(
    batch: int,
    seq_len: int,
    n_digits: int = 4,
    *,
    depth: float | None = None,
    vocab: TaskVocab = TaskVocab(),
    seed: int = 0,
    filler: Filler | None = None,
) -> TaskSample:
    """PASS d1..dn hidden at `depth` ∈ [0, 1] of the context (random when None); recall d1..dn."""
    gen = torch.Generator().manual_seed(seed)
    fill = filler or random_filler(vocab)
    tail = n_digits + 1
    ctx_len = seq_len - tail
    if ctx_len < n_digits + 3:
        raise DensaError(f"seq_len {seq_len} is too short for a {n_digits}-token passkey")
    rows = []
    for _ in range(batch):
        tokens = [vocab.bos] + fill(ctx_len - 1, gen).tolist()
        digits = (vocab.value0 + torch.randint(0, vocab.n_values, (n_digits,), generator=gen)).tolist()
        span = ctx_len - n_digits - 2
        start = 1 + (
            int(depth * span) if depth is not None else int(torch.randint(0, span + 1, (1,), generator=gen))
        )
        tokens[start : start + n_digits + 1] = [vocab.passkey, *digits]
        tokens += [vocab.query, vocab.passkey, *digits[:-1]]
        label_pos = [ctx_len + 1 + i for i in range(n_digits)]
        rows.append((tokens, label_pos, digits))
    return _assemble(rows, tail)


def repeated_pair(
    batch: int,
    seq_len: int,
    n_keys: int = 4,
    blocks: int = 4,
    *,
    value_pool: int | None = None,
    vocab: TaskVocab = TaskVocab(),
    seed: int = 0,
    filler: Filler | None = None,
) -> TaskSample:
    """`n_keys` ≥ 3 keys, each twice as a key→value bigram, its two occurrences in blocks i < j (uniform over
    the pairs) of the `seq_len - 1` context tokens cut into `blocks` equal blocks (no bigram straddles a
    block edge). One key carries the same value both times; the others' values form a cycle (key t: w_t then
    w_t+1), so every key and every value occurs exactly twice and only the pairing tells the target apart.
    Values come from the first `value_pool` value tokens (default: all; ≥ n_keys). Tail: QUERY; its label
    is the target's value."""
    ctx_len = seq_len - 1
    if blocks < 2 or ctx_len % blocks:
        raise DensaError(
            f"repeated_pair: the context ({seq_len} - 1 = {ctx_len} tokens) must split into blocks ≥ 2"
            f" equal blocks, got blocks={blocks}"
        )
    size = ctx_len // blocks
    pool = vocab.n_values if value_pool is None else value_pool
    if not 3 <= n_keys <= min(vocab.n_keys, pool, vocab.n_values) or 6 * n_keys > size - 2:
        # every bigram may land in one block: the rejection sampling below needs room for all of them
        raise DensaError(
            f"repeated_pair: n_keys={n_keys} must be ≥ 3 and its {2 * n_keys} bigrams fit blocks of"
            f" {size} tokens, the value pool ({pool}) and the vocabulary"
        )
    gen = torch.Generator().manual_seed(seed)
    fill = filler or random_filler(vocab)
    pairs = [(i, j) for i in range(blocks) for j in range(i + 1, blocks)]
    rows = []
    for _ in range(batch):
        tokens = [vocab.bos] + fill(ctx_len - 1, gen).tolist()
        keys = torch.randperm(vocab.n_keys, generator=gen)[:n_keys].tolist()
        values = torch.randperm(pool, generator=gen)[:n_keys].tolist()
        m = n_keys - 1  # decoys: key t gets w_t at its first occurrence and w_(t+1 mod m) at its second
        twice = [(values[0], values[0])] + [(values[1 + t], values[1 + (t + 1) % m]) for t in range(m)]
        used = {0}
        for key, vals in zip(keys, twice, strict=True):
            homes = pairs[int(torch.randint(0, len(pairs), (1,), generator=gen))]
            for home, value in zip(homes, vals, strict=True):
                while True:  # a free 2-token slot inside the block (rejection sampling; blocks are sparse)
                    start = home * size + int(torch.randint(0, size - 1, (1,), generator=gen))
                    if not {start, start + 1} & used:
                        break
                used |= {start, start + 1}
                tokens[start : start + 2] = [vocab.key0 + key, vocab.value0 + value]
        tokens.append(vocab.query)
        rows.append((tokens, [ctx_len], [vocab.value0 + values[0]]))
    return _assemble(rows, 1)


def long_document_mqar(
    text_path: str | os.PathLike, batch: int, seq_len: int, *, vocab: TaskVocab = TaskVocab(), **kw
) -> TaskSample:
    """MQAR with needles embedded in real text."""
    return mqar(batch, seq_len, vocab=vocab, filler=text_filler(text_path, vocab), **kw)


def long_document_passkey(
    text_path: str | os.PathLike, batch: int, seq_len: int, *, vocab: TaskVocab = TaskVocab(), **kw
) -> TaskSample:
    """Passkey retrieval with the passkey embedded in real text."""
    return passkey(batch, seq_len, vocab=vocab, filler=text_filler(text_path, vocab), **kw)


TASKS = {
    "mqar": mqar,
    "passkey": passkey,
    "first_occurrence": first_occurrence,
    "long_document_mqar": long_document_mqar,
    "long_document_passkey": long_document_passkey,
}


def answer_accuracy(logits: torch.Tensor, sample: TaskSample) -> float:
    """Share of answer tokens predicted (argmax) correctly. `logits` cover the whole sequence [B, T, V]
    or only the tail [B, tail, V] (as `generate_with_policy(..., tail=sample.tail)` returns them)."""
    labels, mask = sample.labels, sample.answer_mask
    if logits.shape[1] != labels.shape[1]:
        labels, mask = labels[:, -logits.shape[1] :], mask[:, -logits.shape[1] :]
    correct = (logits.argmax(-1) == labels) & mask
    return float(correct.sum()) / max(1, int(mask.sum()))


TASKS: dict[str, Callable[..., TaskSample]] = {
    "mqar": mqar,
    "passkey": passkey,
    "first_occurrence": first_occurrence,
}


class TaskDataset:
    """Map-style rows of one task for retaining-head training (`retaining_heads.task` in a recipe): row i
    is the task at its defaults, seeded `seed + i` (so a resumed run sees the same rows), as the sample
    dict `heads_loss` reads: `loss_mask` = the answer queries, `context_mask` = the context."""

    def __init__(
        self, task: str, num_samples: int, seq_len: int, *, seed: int = 0, vocab: TaskVocab = TaskVocab()
    ) -> None:
        if task not in TASKS:
            raise DensaError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
        self.make, self.num_samples, self.seq_len, self.seed, self.vocab = (
            TASKS[task],
            num_samples,
            seq_len,
            seed,
            vocab,
        )

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.make(1, self.seq_len, vocab=self.vocab, seed=self.seed + i)
        return {
            "input_ids": s.input_ids[0],
            "labels": s.labels[0],
            "loss_mask": s.answer_mask[0].float(),
            "context_mask": s.context_mask[0],
        }
