"""Document construction of the SmolLM2 Locret benchmark (benchmarks/locret/smollm2_heads.py)."""

from __future__ import annotations

import torch

from benchmarks.locret.smollm2_heads import SEQ, TAIL, make_doc


def test_quote_tail_repeats_a_far_span_of_the_context_and_masks_split_at_the_tail() -> None:
    stream = torch.arange(5 * SEQ)  # distinct ids: a span is identified by its first token
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        doc = make_doc(stream, "quote", gen)
        ids = doc["input_ids"][0]
        tail, ctx = ids[-TAIL:], ids[: SEQ - TAIL]
        at = int((ctx == tail[0]).nonzero())
        assert 50 <= at <= 600 and torch.equal(ctx[at : at + TAIL], tail)
        assert doc["answer_mask"][0].sum() == TAIL and doc["answer_mask"][0, -TAIL:].all()
        assert torch.equal(doc["context_mask"], ~doc["answer_mask"])


def test_continuation_is_a_contiguous_window() -> None:
    doc = make_doc(torch.arange(3 * SEQ), "continuation", torch.Generator().manual_seed(1))
    ids = doc["input_ids"][0]
    assert torch.equal(ids, torch.arange(int(ids[0]), int(ids[0]) + SEQ))
