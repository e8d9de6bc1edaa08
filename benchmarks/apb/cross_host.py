"""The cross-host dependency task of the APB benchmark (reference/longctx.md §7.4 (ii)): first-occurrence
recall where each queried key appears twice, in two different host blocks, with two different values, and the
question asks for the first value. The later occurrence can only be told apart from the first if, while the
context is encoded, it sees the earlier block: Star (anchor + local only) cannot, except when the earlier
occurrence sits in block 0 (its anchor); APB can if the passing block carries the earlier pair."""

from __future__ import annotations

import torch

from densa.longctx.tasks import TaskSample, TaskVocab


def cross_host(
    batch: int, context_len: int, hosts: int, n_keys: int = 4, n_queries: int = 2, *, seed: int = 0
) -> TaskSample:
    """Rows of `context_len` context tokens (BOS, filler, `n_keys` keys × 2 occurrences as key→value
    bigrams, the two occurrences of a key in blocks i < j of `context_len / hosts` tokens, chosen uniformly)
    then the tail QUERY k1 QUERY k2 ...; the label after each queried key is its first value."""
    vocab = TaskVocab()
    block = context_len // hosts
    gen = torch.Generator().manual_seed(seed)
    pairs = [(i, j) for i in range(hosts) for j in range(i + 1, hosts)]
    ids = torch.empty(batch, context_len + 2 * n_queries, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for b in range(batch):
        row = (vocab.filler0 + torch.randint(0, vocab.n_filler, (context_len,), generator=gen)).tolist()
        row[0] = vocab.bos
        used: set[int] = {0}
        keys = torch.randperm(vocab.n_keys, generator=gen)[:n_keys].tolist()
        first: dict[int, int] = {}
        for key in keys:
            blocks = pairs[int(torch.randint(0, len(pairs), (1,), generator=gen))]
            values = torch.randperm(vocab.n_values, generator=gen)[:2].tolist()  # two different values
            for blk, value in zip(blocks, values, strict=True):
                while True:  # a free 2-token slot inside the block
                    start = blk * block + int(torch.randint(0, block - 1, (1,), generator=gen))
                    if not {start, start + 1} & used:
                        break
                used |= {start, start + 1}
                row[start : start + 2] = [vocab.key0 + key, vocab.value0 + value]
            first[key] = values[0]
        asked = [keys[i] for i in torch.randperm(n_keys, generator=gen)[:n_queries].tolist()]
        for q, key in enumerate(asked):
            row += [vocab.query, vocab.key0 + key]
            labels[b, context_len + 2 * q + 1] = vocab.value0 + first[key]
        ids[b] = torch.tensor(row)
    context = torch.zeros_like(ids, dtype=torch.bool)
    context[:, :context_len] = True
    return TaskSample(ids, labels, labels != -100, context, 2 * n_queries)
