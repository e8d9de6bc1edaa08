"""KV policies under the chunked-prefill driver: budgets, kept entries, equivalence with a full cache."""

from __future__ import annotations

import math

import pytest
import torch

from densa.longctx import KVPolicy, KVPolicyError, PolicySession, build_policy, generate_with_policy
from densa.longctx.policies import attention_probs
from densa.models import Transformer
from densa.models.hooks import capture
from densa.retaining_heads import attach_heads, get_heads
from densa.testing.models import random_tokens, tiny_model_config

EVICTING = ["streaming_llm", "h2o", "snapkv", "random", "locret"]


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config()).eval()
    attach_heads(model, hidden=8)
    return model


class FixedScores(KVPolicy):
    """Scores given per original position: lets a test predict exactly what survives."""

    name = "fixed"

    def __init__(self, table: torch.Tensor, n_stabilizers: int = 0) -> None:
        super().__init__(n_stabilizers)
        self.table = table  # [Hkv, T]

    def scores(self, layer, keys, positions):
        return self.table[torch.arange(positions.shape[1])[:, None], positions[0]].expand_as(positions)


def test_streaming_keeps_sinks_and_window_exactly(model: Transformer) -> None:
    ids = random_tokens(model.config, seq=40)
    with PolicySession(model, build_policy("streaming_llm", n_sink=3), budget=10, chunk=6) as s:
        s.prefill(ids)
        stats = s.finish()
    for pos in stats.kept_positions:
        assert pos.shape == (2, 2, 10)
        assert (pos == torch.tensor([0, 1, 2, *range(33, 40)])).all()


def test_kept_positions_are_original_positions_under_compaction(model: Transformer) -> None:
    """Random scores do not depend on the model, so compaction must not change which tokens survive."""
    ids = random_tokens(model.config, seq=40)
    kept = []
    for compact in (False, True):
        with PolicySession(model, build_policy("random", seed=1), 8, 4, compact_positions=compact) as s:
            s.prefill(ids)
            kept.append(s.finish().kept_positions)
            if compact:
                assert int(s.positions[0].max()) == 7  # RoPE positions were compacted ...
    for plain, compacted in zip(*kept, strict=True):
        assert torch.equal(plain, compacted)  # ... the reported ones are where the tokens came from
    assert int(kept[1][0].max()) > 8


def test_constructed_scores_keep_top_per_head_plus_stabilizers(model: Transformer) -> None:
    seq, budget = 30, 8
    gen = torch.Generator().manual_seed(3)
    table = torch.rand(2, seq, generator=gen)
    with PolicySession(model, FixedScores(table, n_stabilizers=2), budget=budget, chunk=5) as s:
        s.prefill(random_tokens(model.config, seq=seq))
        kept = s.finish().kept_positions[0]
    for head in range(2):
        best = table[head, : seq - 2].topk(budget - 2).indices.sort().values.tolist()
        assert kept[0, head].tolist() == best + [seq - 2, seq - 1]
    assert kept[0, 0].tolist() != kept[0, 1].tolist()  # heads choose independently


def test_locret_keeps_top_head_scores(model: Transformer) -> None:
    """Layer 0's head input depends on the token alone, so its chunked scores equal a full forward's."""
    ids = random_tokens(model.config, seq=36)
    model(ids)
    full = get_heads(model).scores[0]
    with PolicySession(model, build_policy("locret", n_stabilizers=0), budget=9, chunk=4) as s:
        s.prefill(ids)
        kept = s.finish().kept_positions[0]
    assert torch.equal(kept, full.topk(9, dim=-1).indices.sort(dim=-1).values)


def test_locret_sink_keeps_first_tokens_then_top_head_scores(model: Transformer) -> None:
    ids = random_tokens(model.config, seq=36)
    model(ids)
    full = get_heads(model).scores[0]  # [B, Hkv, T]
    with PolicySession(model, build_policy("locret", n_stabilizers=0, n_sink=3), budget=9, chunk=4) as s:
        s.prefill(ids)
        kept = s.finish().kept_positions[0]
    rest = full[..., 3:].topk(6, dim=-1).indices + 3  # the 6 best-scored entries after the sinks
    expected = torch.cat([torch.arange(3).expand(*rest.shape[:-1], 3), rest], dim=-1).sort(dim=-1).values
    assert torch.equal(kept, expected)
    assert not torch.equal(kept, full.topk(9, dim=-1).indices.sort(dim=-1).values)  # the sink changed it
    sinks_only = build_policy("locret", n_stabilizers=0, n_sink=3)
    with (
        pytest.raises(KVPolicyError, match=r"budget 2 is smaller than the 3 entries .* \+ sinks 3\)"),
        PolicySession(model, sinks_only, budget=2, chunk=4),
    ):
        pass


def test_h2o_scores_are_normalised_received_attention(model: Transformer) -> None:
    ids = random_tokens(model.config, batch=1, seq=12)
    with capture(model, "layers.1.attn.hook_q") as q, capture(model, "layers.1.attn.hook_k") as k:
        model(ids)
    probs = attention_probs(q["layers.1.attn.hook_q"][0], k["layers.1.attn.hook_k"][0])[0]  # [Hkv,G,T,T]
    received = probs.mean(1).sum(1)  # over queries
    expected = received / torch.arange(12, 0, -1)
    policy = build_policy("h2o")
    with PolicySession(model, policy, budget=12, chunk=5) as s:
        s.prefill(ids)
        keys, _ = s.cache.get(1)
        got = policy.scores(1, keys, s.positions[1])[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["full", *EVICTING])
def test_budget_at_least_length_equals_full_cache(model: Transformer, name: str) -> None:
    ids = random_tokens(model.config, seq=30)
    reference = model(ids)
    budget = None if name == "full" else 40
    with PolicySession(model, name, budget=budget, chunk=7) as s:
        logits = torch.cat([s.forward(ids[:, i : i + 7]) for i in range(0, 30, 7)], dim=1)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", EVICTING)
def test_peak_kv_within_budget_plus_chunk(model: Transformer, name: str) -> None:
    ids = random_tokens(model.config, seq=45)
    budget, chunk = 12, 5
    result = generate_with_policy(model, ids, name, budget, chunk, max_new_tokens=15, tail=3)
    assert result.tokens.shape == (2, 60)
    assert result.stats.evictions > 0
    assert budget < result.stats.peak_kv_tokens <= budget + chunk
    assert all(p.shape[2] <= budget + chunk for p in result.stats.kept_positions)
    assert result.tail_logits.shape == (2, 3, model.config.vocab_size)


def test_full_policy_holds_everything(model: Transformer) -> None:
    result = generate_with_policy(model, random_tokens(model.config, seq=20), "full", None, 8, 4)
    assert result.stats.peak_kv_tokens == 23 and result.stats.evictions == 0


def test_compact_positions_rerotate_kept_keys(model: Transformer) -> None:
    """After compaction, layer 0's kept keys equal keys computed afresh at positions 0..K-1."""
    ids = random_tokens(model.config, batch=1, seq=30)
    policy = build_policy("streaming_llm", n_sink=2)
    with PolicySession(model, policy, budget=8, chunk=5, compact_positions=True) as s:
        s.prefill(ids)
        keys, _ = s.cache.get(0)
        assert s.cache.seen_tokens == 8 and s.positions[0][0, 0].tolist() == list(range(8))
    kept_tokens = ids[:, [0, 1, *range(24, 30)]]
    with capture(model, "layers.0.attn.hook_k") as k:
        model(kept_tokens)
    torch.testing.assert_close(keys, k["layers.0.attn.hook_k"][0], atol=1e-5, rtol=1e-5)
    assert math.isfinite(float(keys.sum()))
