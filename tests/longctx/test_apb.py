"""Sequence-parallel prefill on gloo ranks against single-process full attention (densa.longctx.apb)."""

from __future__ import annotations

import torch

from densa.longctx.apb import SequenceParallelSession, SPConfig, attend, merge
from densa.models import Transformer
from densa.retaining_heads import RetainingHeads
from densa.testing.distributed import run_distributed
from densa.testing.models import random_tokens, tiny_model_config

CONTEXT, QUERY = 32, 4


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_model_config(n_layers=3)).eval()


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    ids = random_tokens(tiny_model_config(), batch=2, seq=CONTEXT + QUERY, seed=1)
    return ids[:, :CONTEXT], ids[:, CONTEXT:]


def _run(config: SPConfig, with_heads: bool = False) -> dict:
    """On one rank: prefill logits at its positions, then the query's logits (last rank)."""
    model = _model()
    heads = RetainingHeads(model.config, hidden=8) if with_heads else None
    context, query = _ids()
    session = SequenceParallelSession(model, config, heads=heads)
    local = session.prefill(context, query, return_logits=True)
    tail = session.decode(query)
    return {
        "positions": session.layout.positions,
        "local": local,
        "tail": tail,
        "counters": session.counters(),
    }


def _full() -> torch.Tensor:
    context, query = _ids()
    with torch.no_grad():
        return _model()(torch.cat([context, query], dim=1))


def _check_exact(results: list[dict]) -> None:
    full = _full()
    for r in results:
        torch.testing.assert_close(r["local"], full[:, r["positions"]], atol=1e-5, rtol=0)
    covered = torch.cat([r["positions"] for r in results]).sort().values
    assert covered.tolist() == list(range(CONTEXT))
    torch.testing.assert_close(results[-1]["tail"], full[:, CONTEXT:], atol=1e-5, rtol=0)


def test_lse_merge_equals_one_softmax() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 5, 8, generator=gen) for _ in range(3))
    k, v = k[:, :2], v[:, :2]  # GQA: 2 KV heads for 4 query heads
    whole, _ = attend(q, k, v, None)
    parts = [attend(q, k[:, :, s], v[:, :, s], None) for s in (slice(0, 2), slice(2, 5))]
    merged, _ = merge([p[0] for p in parts], [p[1] for p in parts])
    torch.testing.assert_close(merged, whole, atol=1e-6, rtol=0)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    )
    torch.testing.assert_close(whole, ref, atol=1e-6, rtol=0)
    # three parts, one of them empty for query 0 (its lse -inf weighs 0): still one softmax
    allowed = torch.ones(5, 2, dtype=torch.bool)
    allowed[0] = False
    parts = [attend(q, k[:, :, :2], v[:, :, :2], allowed)]
    parts += [attend(q, k[:, :, s], v[:, :, s], None) for s in (slice(2, 3), slice(3, 5))]
    merged, lse = merge([p[0] for p in parts], [p[1] for p in parts])
    torch.testing.assert_close(merged[:, :, 1:], whole[:, :, 1:], atol=1e-6, rtol=0)
    only_later = attend(q[:, :, :1], k[:, :, 2:], v[:, :, 2:], None)
    torch.testing.assert_close(merged[:, :, :1], only_later[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(lse[:, :, :1], only_later[1], atol=1e-6, rtol=0)


def test_ring_equals_full_attention_on_2_and_4_ranks() -> None:
    for world in (2, 4):
        results = run_distributed(_run, world, args=(SPConfig("ring"),), timeout=60)
        _check_exact(results)
        counters = [r["counters"] for r in results]
        # zigzag: every host scores the same number of causal pairs per layer
        pairs = {c["attention_pairs_per_layer"]["prefill"][0] for c in counters}
        assert pairs == {CONTEXT * (CONTEXT + 1) // 2 // world}
        # each host receives H - 1 KV blocks per layer: 2 (K, V) · B 2 · Hkv 2 · block · head_dim 8 · 4 bytes
        block_bytes = 2 * 2 * 2 * (CONTEXT // world) * 8 * 4
        for c in counters:
            assert c["bytes_per_layer"][1]["prefill"]["received"] == (world - 1) * block_bytes


def test_apb_with_whole_block_passing_equals_ring() -> None:
    for world in (2, 4):
        config = SPConfig("apb", anchor_len=0, passing_len=CONTEXT // world)
        results = run_distributed(_run, world, args=(config, True), timeout=60)
        _check_exact(results)
        # one all-gather per layer of the compressed block (here the whole block): K, V · 2 rows · 2 KV heads
        block_bytes = 2 * 2 * 2 * (CONTEXT // world) * 8 * 4
        c = results[1]["counters"]["bytes_per_layer"][0]["prefill"]
        assert c == {"sent": (world - 1) * block_bytes, "received": (world - 1) * block_bytes, "calls": 1}


def test_apb_without_passing_and_a_block_anchor_is_star() -> None:
    config = SPConfig("apb", anchor_len=CONTEXT // 4, passing="none", query_in_anchor=False)
    apb = run_distributed(_run, 4, args=(config,), timeout=60)
    star = run_distributed(_run, 4, args=(SPConfig("star"),), timeout=60)
    for a, s in zip(apb, star, strict=True):
        torch.testing.assert_close(a["local"], s["local"], atol=1e-5, rtol=0)
    torch.testing.assert_close(apb[-1]["tail"], star[-1]["tail"], atol=1e-5, rtol=0)


def test_star_host_sees_anchor_and_own_block_only() -> None:
    """Star on 4 hosts: host r's logits = the model run alone on [block 0 | block r] at the positions
    [0..b-1, r·b..]; decode merges every host's cache, so the query's logits come out of one softmax."""
    results = run_distributed(_run, 4, args=(SPConfig("star"),), timeout=60)
    context, query = _ids()
    block, model = CONTEXT // 4, _model()
    for rank, r in enumerate(results):
        local = torch.arange(rank * block, (rank + 1) * block)
        pos = torch.cat([torch.arange(block), local]) if rank else local
        ids = context[:, pos]
        with torch.no_grad():
            ref = model(ids, position_ids=pos)[:, -block:]
        torch.testing.assert_close(r["local"], ref, atol=1e-5, rtol=0)
        assert r["counters"]["ffn_tokens"]["prefill"] == (2 * block if rank else block)
        assert r["counters"]["kv_tokens_held"] == block + (QUERY if rank == 3 else 0)
        assert r["counters"]["bytes_total"].get("prefill") is None  # Star sends nothing during prefill


def test_select_passing_keeps_top_max_pooled_tokens_per_head() -> None:
    from densa.longctx.apb.prefill_attention import select_passing

    k = torch.arange(10.0).view(1, 1, 10, 1).expand(1, 2, 10, 1)
    scores = torch.zeros(1, 2, 10)
    scores[0, 0, 7] = 5.0  # pooled with kernel 3: tokens 6, 7, 8 share the top score
    scores[0, 1, 1] = 5.0
    scores[0, 1, 9] = 4.0
    picked = select_passing(scores, k, -k, 3, 3, None)  # [1, 2·Hkv, 3, 1]: keys then values
    assert picked[0, :2, :, 0].tolist() == [[6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]
    assert picked[0, 2:, :, 0].tolist() == [[-6.0, -7.0, -8.0], [-0.0, -1.0, -2.0]]
    # kernel 1 (no smoothing): the raw top 3 of head 1, where kernel 3 keeps the window of its top token
    scores[0, 1, 4] = 3.0
    assert select_passing(scores, k, -k, 3, 1, None)[0, 1, :, 0].tolist() == [1.0, 4.0, 9.0]
    assert select_passing(scores, k, -k, 3, 3, None)[0, 1, :, 0].tolist() == [0.0, 1.0, 2.0]


def test_apb_anchor_holds_bos_then_query_then_document() -> None:
    from densa.longctx.apb.layout import anchor_ids, resolve

    context = torch.arange(100, 132).view(1, 32)
    query = torch.tensor([[1, 2, 3]])
    config = SPConfig("apb", anchor_len=6)
    layout = resolve(config, 32, 3, rank=1, world=2)
    assert (layout.anchor_len, layout.passing_len, layout.positions[0].item()) == (6, 2, 16)
    assert anchor_ids(config, layout, context, query).tolist() == [[100, 1, 2, 3, 101, 102]]
    plain = SPConfig("apb", anchor_len=6, query_in_anchor=False)
    assert anchor_ids(plain, layout, context, query).tolist() == [[100, 101, 102, 103, 104, 105]]
