"""SFT packing: several examples in one row of `seq_len` tokens, none attending across another.

An example of `L` tokens (truncated to `seq_len + 1`, as unpacked) fills `L - 1` slots of a row: its
inputs `ids[:-1]`, labels `ids[1:]` and loss mask `mask[1:]`, exactly what the padded path gives it.
Each row also carries `position_ids` (restarting at 0 per example) and `doc_ids` (0, 1, ... per example,
-1 for padding); the model turns `doc_ids` into a block-diagonal causal mask, so every example computes
what it would compute alone in a padded row.

Rows are formed once, deterministically (best fit decreasing, ties broken by seed); the trainer's
`EpochDataset` then visits them in a seeded order per epoch. `PackedSFTDataset` is map-style and its row
count is fixed, so the sampler's `consumed_samples` (rows) is still the whole resume state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from densa.errors import DataError


@dataclass(frozen=True)
class PackingStats:
    """What packing gained: examples, rows and the fraction of row slots that carry example tokens."""

    examples: int
    rows: int
    seq_len: int
    real_tokens: int  # input slots holding an example token (not padding)
    loss_tokens: int  # slots with loss_mask 1

    @property
    def fill(self) -> float:
        return self.real_tokens / max(1, self.rows * self.seq_len)


def pack_lengths(lengths: list[int], seq_len: int, seed: int) -> list[list[int]]:
    """Rows of example indices: each row's `sum(length - 1)` fits `seq_len` (lengths already truncated).

    Best fit decreasing: examples by decreasing length (ties in a seeded order), each into the open row
    whose free room fits it most tightly (the oldest such row), else into a new row. Deterministic in
    (lengths, seq_len, seed); O(examples x seq_len)."""
    needs = [max(1, n - 1) for n in lengths]
    for i, need in enumerate(needs):
        if need > seq_len:
            raise DataError(f"example {i} needs {need} slots, more than seq_len {seq_len}")
    seeded = np.random.default_rng(seed).permutation(len(lengths)).tolist()
    order = sorted(seeded, key=lambda i: -needs[i])  # stable: equal lengths keep the seeded order
    rows: list[list[int]] = []
    by_room: list[deque[int]] = [deque() for _ in range(seq_len + 1)]  # row ids by free slots
    for i in order:
        need = needs[i]
        room = next((r for r in range(need, seq_len + 1) if by_room[r]), None)
        if room is None:
            row, room = len(rows), seq_len
            rows.append([])
        else:
            row = by_room[room].popleft()
        rows[row].append(i)
        by_room[room - need].append(row)
    return rows


class PackedSFTDataset:
    """`ds[i]` -> `{"input_ids", "labels", "loss_mask", "position_ids", "doc_ids"}` of length `seq_len`.

    `sft` is an `SFTDataset` (anything with `seq_len`, `pad_id`, `__len__` and `ids_and_mask(i)`).
    Every example is tokenized once here and kept in memory; an example of one token is dropped (it
    has no label)."""

    def __init__(self, sft, seed: int = 0) -> None:
        self.seq_len, self.pad_id = sft.seq_len, sft.pad_id
        n = sft.seq_len + 1
        self.examples: list[tuple[list[int], list[int]]] = []
        for i in range(len(sft)):
            ids, mask = sft.ids_and_mask(i)
            if len(ids) >= 2:
                self.examples.append((ids[:n], mask[:n]))
        if not self.examples:
            raise DataError(f"{getattr(sft, 'path', 'SFT data')}: no example has two or more tokens")
        self.rows = pack_lengths([len(e[0]) for e in self.examples], self.seq_len, seed)

    def __len__(self) -> int:
        return len(self.rows)

    def row_lists(self, idx: int) -> dict[str, list[int]]:
        """Row `idx` as plain lists (what `__getitem__` turns into tensors)."""
        out: dict[str, list[int]] = {k: [] for k in ("input_ids", "labels", "loss_mask", "position_ids")}
        out["doc_ids"] = []
        for doc, e in enumerate(self.rows[idx]):
            ids, mask = self.examples[e]
            out["input_ids"] += ids[:-1]
            out["labels"] += ids[1:]
            out["loss_mask"] += mask[1:]
            out["position_ids"] += list(range(len(ids) - 1))
            out["doc_ids"] += [doc] * (len(ids) - 1)
        pad = self.seq_len - len(out["input_ids"])
        out["input_ids"] += [self.pad_id] * pad
        out["labels"] += [self.pad_id] * pad
        out["loss_mask"] += [0] * pad
        out["position_ids"] += list(range(pad))
        out["doc_ids"] += [-1] * pad
        return out

    def __getitem__(self, idx: int) -> dict:
        import torch

        row = self.row_lists(idx)
        sample = {k: torch.tensor(v, dtype=torch.long) for k, v in row.items()}
        sample["loss_mask"] = sample["loss_mask"].to(torch.float32)
        return sample

    def stats(self) -> PackingStats:
        real = sum(len(self.examples[e][0]) - 1 for row in self.rows for e in row)
        loss = sum(sum(self.examples[e][1][1:]) for row in self.rows for e in row)
        return PackingStats(len(self.examples), len(self.rows), self.seq_len, real, loss)


def padded_stats(sft) -> PackingStats:
    """The same figures for the unpacked path (one example per padded row), for comparison."""
    n = sft.seq_len + 1
    real = loss = 0
    for i in range(len(sft)):
        ids, mask = sft.ids_and_mask(i)
        real += min(len(ids), n) - 1
        loss += sum(mask[1:n])
    return PackingStats(len(sft), len(sft), sft.seq_len, real, loss)
