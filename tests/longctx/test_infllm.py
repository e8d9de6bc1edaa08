"""InfLLM against independent references: full attention where the two must agree, a hand-written
constant-distance attention, hand-computed representatives and scripted LRU counts."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from densa.longctx import KVPolicyError, PolicySession, build_policy, generate_with_policy
from densa.longctx.infllm import InfLLMConfig, InfLLMContext, unit_representative
from densa.longctx.infllm_memory import UnitCache, UnitStore
from densa.models import Transformer
from densa.models.rope import apply_rotary
from densa.testing.models import random_tokens, tiny_model_config


def small(**kw) -> InfLLMConfig:
    base = dict(n_init=2, n_local=8, block_size=4, repr_topk=2, topk=2, exc_block_size=3, max_cached_units=4)
    return InfLLMConfig(**(base | kw))


def test_window_covering_the_input_is_full_attention(model: Transformer) -> None:
    ids = random_tokens(model.config, batch=2, seq=40)
    with torch.no_grad():
        full = model(ids)
    for exc in (1, 5, 40):
        ctx = InfLLMContext(model, small(n_local=40, exc_block_size=exc))
        assert (ctx.forward(ids) - full).abs().max() < 1e-5
        assert ctx.finish().units == 0


def test_short_input_through_the_session_is_full_attention(model: Transformer) -> None:
    """Chunked prefill + tail + greedy batch decode equal the plain model when nothing leaves the window."""
    ids = random_tokens(model.config, batch=2, seq=30)
    policy = build_policy("infllm", n_init=4, n_local=64, block_size=8, topk=2, exc_block_size=4)
    res = generate_with_policy(model, ids, policy, None, chunk=7, max_new_tokens=6, tail=5)
    ref = generate_with_policy(model, ids, "full", None, chunk=7, max_new_tokens=6, tail=5)
    assert torch.equal(res.tokens, ref.tokens)
    assert (res.tail_logits - ref.tail_logits).abs().max() < 1e-5
    assert res.stats.memory["units"] == 0 and res.stats.peak_kv_tokens == 36 - 1


def test_original_positions_with_every_unit_is_full_attention(model: Transformer) -> None:
    """topk ≥ the units that exist attends to every unit: with memory at its true positions the two
    stages cover each query's causal prefix once, so the log-sum-exp merge is exactly full attention."""
    ids = random_tokens(model.config, batch=2, seq=45, seed=3)
    with torch.no_grad():
        full = model(ids)
    ctx = InfLLMContext(model, small(topk=100, max_cached_units=100, memory_positions="original"))
    assert (ctx.forward(ids) - full).abs().max() < 1e-5
    stats = ctx.finish()
    assert stats.units == 2 * ((45 - 8 + 1 - 2) // 4)  # per layer: full units left of the last window


def _reference_logits(model: Transformer, ids: torch.Tensor, cfg: InfLLMConfig) -> torch.Tensor:
    """One layer, every unit attended: per query t, keys j ≤ t with t - j < n_local at their RoPE
    distance, every older key at distance `cfg.distance` (one softmax over all of them)."""
    block, rope = model.layers[0], model.rope
    attn = block.attn
    x = model.embed_tokens(ids)
    h = block.attn_norm(x)
    batch, seq, _ = h.shape
    n_q, n_kv, dim = attn.n_local_heads, attn.n_local_kv_heads, attn.head_dim
    q, k, v = attn.qkv_proj(h).view(batch, seq, -1, dim).transpose(1, 2).split([n_q, n_kv, n_kv], 1)
    k, v = k.repeat_interleave(n_q // n_kv, 1), v.repeat_interleave(n_q // n_kv, 1)
    out = torch.zeros(batch, n_q, seq, dim)
    for t in range(seq):
        logits = []
        for j in range(t + 1):
            near = t - j < cfg.n_local
            cq, sq = rope(torch.tensor([t if near else cfg.distance]), torch.float32)
            ck, sk = rope(torch.tensor([j if near else 0]), torch.float32)
            qt = apply_rotary(q[:, :, t : t + 1], cq, sq)
            kj = apply_rotary(k[:, :, j : j + 1], ck, sk)
            logits.append((qt * kj).sum(-1) / math.sqrt(dim))
        probs = torch.cat(logits, -1).softmax(-1)  # [B, H, t + 1]
        out[:, :, t] = torch.einsum("bhj,bhjd->bhd", probs, v[:, :, : t + 1])
    x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))
    x = x + block.ffn(block.ffn_norm(x))
    return F.linear(model.norm(x), model.output_weight)


@pytest.mark.parametrize("distance", [None, 5])
def test_memory_sits_at_a_constant_distance(distance: int | None) -> None:
    torch.manual_seed(1)
    one_layer = Transformer(tiny_model_config(n_layers=1)).eval()
    with torch.no_grad():
        one_layer.layers[0].attn.qkv_proj.weight.mul_(8.0)  # sharp attention: positions matter
    ids = random_tokens(one_layer.config, batch=2, seq=30, seed=4)
    cfg = small(topk=100, max_cached_units=100, memory_distance=distance)
    with torch.no_grad():
        ref = _reference_logits(one_layer, ids, cfg)
        got = InfLLMContext(one_layer, cfg).forward(ids)
    assert (got - ref).abs().max() < 1e-5
    # and it is not full attention: the positions of memory really changed
    with torch.no_grad():
        assert (got - one_layer(ids)).abs().max() > 1e-2


def test_representative_is_the_mean_of_the_top_mass_keys() -> None:
    keys = torch.tensor([[[[1.0, 0.0], [0.0, 2.0], [4.0, 4.0], [-2.0, 6.0]]]])  # [1, 1, 4, 2]
    scores = torch.tensor([[[0.1, 0.9, 0.5, 0.2]]])
    gen = torch.Generator().manual_seed(0)
    rep = unit_representative(keys, scores, small(repr_topk=2), gen)
    assert torch.equal(rep, torch.tensor([[[2.0, 3.0]]]))  # tokens 1 and 2: ((0+4)/2, (2+4)/2)
    assert torch.equal(unit_representative(keys, scores, small(repr_topk=1), gen), keys[:, :, 1])
    mean = unit_representative(keys, scores, small(representative="mean"), gen)
    assert torch.equal(mean, torch.tensor([[[0.75, 3.0]]]))


def test_first_unit_representative_matches_local_attention_mass(model: Transformer) -> None:
    """Layer 0 sees only embeddings, so its local scores can be recomputed directly: the softmax mass
    token j received from every query t with t - j < n_local (sinks in the window included), summed over
    the query heads of j's KV group; the representative averages the unrotated keys of the top 2."""
    cfg = small(n_local=6, exc_block_size=2)
    ids = random_tokens(model.config, batch=2, seq=13, seed=5)
    ctx = InfLLMContext(model, cfg)
    ctx.forward(ids)
    attn = model.layers[0].attn
    h = model.layers[0].attn_norm(model.embed_tokens(ids))
    n_q, n_kv, dim = attn.n_local_heads, attn.n_local_kv_heads, attn.head_dim
    with torch.no_grad():
        q, k, _ = attn.qkv_proj(h).view(2, 13, -1, dim).transpose(1, 2).split([n_q, n_kv, n_kv], 1)
    cos, sin = model.rope(torch.arange(13), torch.float32)
    qr, kr = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin).repeat_interleave(n_q // n_kv, 1)
    mass = torch.zeros(2, n_q, 13)
    for t in range(13):
        window = list(range(max(0, t - cfg.n_local + 1), t + 1))
        p = ((qr[:, :, t : t + 1] * kr[:, :, window]).sum(-1) / math.sqrt(dim)).softmax(-1)
        mass[:, :, window] += p
    mass = mass.view(2, n_kv, n_q // n_kv, 13).sum(2)
    unit = slice(cfg.n_init, cfg.n_init + cfg.block_size)  # unit 0: positions 2..5
    top = mass[:, :, unit].topk(2, dim=-1).indices + cfg.n_init
    expected = torch.stack([torch.stack([k[b, g, top[b, g]].mean(0) for g in range(n_kv)]) for b in range(2)])
    assert ctx.layers[0].reprs is not None and ctx.layers[0].reprs.shape[2] == 1
    assert (ctx.layers[0].reprs[:, :, 0] - expected).abs().max() < 1e-5


def test_lru_cache_counts_on_a_scripted_sequence() -> None:
    store = UnitStore()
    for u in range(4):
        store.add(torch.full((1, 1, 2, 1), float(u)), torch.full((1, 1, 2, 1), -float(u)))
    cache = UnitCache(capacity=2)
    script = [[0], [1], [0], [2], [1], [0, 2], [3, 0, 2]]
    expected = [  # (loads, hits, LRU order) after each step
        (1, 0, [0]),
        (2, 0, [0, 1]),
        (2, 1, [1, 0]),
        (3, 1, [0, 2]),
        (4, 1, [2, 1]),
        (5, 2, [0, 2]),  # 0 loaded, then 2 hit (most recent), 1 evicted
        (6, 4, [3, 0, 2]),  # a request of 3 units holds them all
    ]
    for request, (loads, hits, order) in zip(script, expected, strict=True):
        got = cache.fetch(request, store, torch.device("cpu"))
        assert (cache.loads, cache.hits, cache.order()) == (loads, hits, order)
        assert all(float(got[u][0].flatten()[0]) == u for u in request)
    assert cache.peak_units == 3


def test_model_counts_match_an_lru_replay_of_the_lookups(model: Transformer) -> None:
    ids = random_tokens(model.config, batch=2, seq=60, seed=6)
    ctx = InfLLMContext(model, small(max_cached_units=3, record_lookups=True))
    ctx.forward(ids)
    stats = ctx.finish()
    loads = hits = 0
    for layer in range(model.config.n_layers):
        for b in range(ids.shape[0]):  # one LRU cache per layer and batch row
            lru: OrderedDict[int, None] = OrderedDict()
            for entry in (e for e in stats.lookup_log if e["layer"] == layer):
                for u in entry["units"][b]:
                    hits, loads = (hits + 1, loads) if u in lru else (hits, loads + 1)
                    lru[u] = None
                    lru.move_to_end(u)
                while len(lru) > 3:
                    del lru[next(iter(lru))]
    assert (stats.unit_loads, stats.cache_hits) == (loads, hits) and loads > 0 and hits > 0
    # a lookup per execution block and layer once a unit exists; attended keys per query stay bounded
    assert stats.attended_max <= small().attended_per_query()


def test_attended_tokens_per_query_stay_flat(model: Transformer) -> None:
    ids = random_tokens(model.config, batch=1, seq=120, seed=7)
    ctx = InfLLMContext(model, small(exc_block_size=4, block_size=4, topk=2))
    ctx.forward(ids)
    stats = ctx.finish()
    # sinks 2 + window 8 + 2 units of 4 + a remainder < block + execution block
    assert stats.attended_max <= 2 + 8 + 8 + 4 + 4
    assert stats.peak_device_tokens <= 2 + (8 + 4 + 4) + 4 * 4
    assert stats.offloaded_tokens == 2 * 4 * ((120 - 8 + 1 - 2) // 4)


def test_batch_rows_decode_as_if_alone(model: Transformer) -> None:
    ids = random_tokens(model.config, batch=2, seq=40, seed=8)
    opts = dict(n_init=2, n_local=8, block_size=4, repr_topk=2, topk=2, exc_block_size=4)
    both = generate_with_policy(model, ids, build_policy("infllm", **opts), None, 8, 6, tail=4)
    for row in range(2):
        alone = generate_with_policy(
            model, ids[row : row + 1], build_policy("infllm", **opts), None, 8, 6, tail=4
        )
        assert torch.equal(both.tokens[row], alone.tokens[0])
        assert (both.tail_logits[row] - alone.tail_logits[0]).abs().max() < 1e-5


def test_session_reports_memory_stats(model: Transformer) -> None:
    ids = random_tokens(model.config, batch=1, seq=50, seed=9)
    with PolicySession(
        model,
        build_policy(
            "infllm", **dict(n_init=2, n_local=8, block_size=4, topk=2, repr_topk=2, exc_block_size=4)
        ),
        None,
        16,
    ) as s:
        s.prefill(ids)
        stats = s.finish()
    assert stats.memory["units"] == 2 * ((50 - 8 + 1 - 2) // 4) and stats.forwards == 4
    assert stats.peak_kv_tokens == stats.memory["peak_device_tokens"] > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"block_size": 0}, "block_size must be an integer ≥ 1"),
        ({"n_local": 0}, "n_local must be an integer ≥ 1"),
        ({"n_local": -3}, "n_local must be an integer ≥ 1"),
        ({"topk": 0}, "topk must be an integer ≥ 1"),
        ({"n_init": -1}, "n_init must be an integer ≥ 0"),
        ({"repr_topk": 9, "block_size": 8}, "repr_topk \\(9\\) must be ≤ block_size \\(8\\)"),
        ({"topk": 40, "max_cached_units": 32}, "max_cached_units \\(32\\) must be ≥ topk \\(40\\)"),
        ({"memory_positions": "absolute"}, "memory_positions must be one of"),
        ({"representative": "max"}, "representative must be one of"),
        ({"exc_block_size": 0}, "exc_block_size must be an integer ≥ 1"),
        ({"window": 8}, "has no option\\(s\\) \\['window'\\]"),
    ],
)
def test_bad_parameters_name_the_parameter(options: dict, message: str) -> None:
    with pytest.raises(KVPolicyError, match=message):
        build_policy("infllm", **options)


def test_bad_inputs(model: Transformer) -> None:
    ctx = InfLLMContext(model, small())
    with pytest.raises(KVPolicyError, match="input_ids must be"):
        ctx.forward(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(KVPolicyError, match="needs a densa Transformer"):
        InfLLMContext(torch.nn.Linear(2, 2), small())  # type: ignore[arg-type]
