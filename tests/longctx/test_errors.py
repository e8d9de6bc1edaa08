"""Bad input to KV policies and the driver: errors name the mismatch."""

from __future__ import annotations

import pytest
import torch

from densa.errors import DensaError
from densa.longctx import KVPolicyError, build_policy, generate_with_policy
from densa.models import Transformer
from densa.retaining_heads import RetainingHeads, RetainingHeadsError, attach_heads, save_heads
from densa.testing.models import random_tokens, tiny_model_config


@pytest.fixture(scope="module")
def ids(model: Transformer) -> torch.Tensor:
    return random_tokens(model.config, seq=20)


def test_budget_smaller_than_stabilizers(model: Transformer, ids: torch.Tensor) -> None:
    policy = build_policy("locret", n_stabilizers=8)
    with pytest.raises(KVPolicyError, match=r"budget 6 is smaller than the 8 entries .*'locret'"):
        generate_with_policy(model, ids, policy, budget=6, chunk=4, max_new_tokens=1)
    with pytest.raises(KVPolicyError, match=r"budget 5 is smaller than the 6 .*sinks 4"):
        generate_with_policy(model, ids, build_policy("streaming_llm", n_stabilizers=2), 5, 4, 1)
    with pytest.raises(KVPolicyError, match="snapkv"):
        generate_with_policy(model, ids, build_policy("snapkv", window=8), 4, 4, 1)


@pytest.mark.parametrize("chunk", [0, -3])
def test_chunk_must_be_positive(model: Transformer, ids: torch.Tensor, chunk: int) -> None:
    with pytest.raises(KVPolicyError, match=f"chunk must be a positive number of tokens, got {chunk}"):
        generate_with_policy(model, ids, "h2o", 8, chunk, 1)


def test_budget_required_and_tail_bounded(model: Transformer, ids: torch.Tensor) -> None:
    with pytest.raises(KVPolicyError, match="'random' needs a positive budget"):
        generate_with_policy(model, ids, "random", None, 4, 1)
    with pytest.raises(KVPolicyError, match=r"tail \(6\) must fit in one chunk \(4\)"):
        generate_with_policy(model, ids, "random", 8, 4, 1, tail=6)


def test_unknown_policy_and_option() -> None:
    with pytest.raises(KVPolicyError, match="unknown kv policy 'snapkvv'.*did you mean 'snapkv'"):
        build_policy("snapkvv")
    with pytest.raises(KVPolicyError, match=r"'h2o' has no option\(s\) \['window'\]"):
        build_policy("h2o", window=3)
    with pytest.raises(KVPolicyError, match="n_sink must be"):
        build_policy("streaming-llm", n_sink=-1)
    assert isinstance(build_policy("StreamingLLM"), type(build_policy("streaming_llm")))
    assert issubclass(KVPolicyError, DensaError) and issubclass(RetainingHeadsError, DensaError)


def test_locret_without_heads(ids: torch.Tensor) -> None:
    bare = Transformer(tiny_model_config()).eval()
    with pytest.raises(RetainingHeadsError, match="kv policy 'locret': Transformer has no retaining heads"):
        generate_with_policy(bare, ids, "locret", 8, 4, 1)


def test_locret_with_heads_of_another_model(ids: torch.Tensor, tmp_path) -> None:
    donor = Transformer(tiny_model_config(n_layers=3)).eval()
    attach_heads(donor, hidden=4)
    path = save_heads(tmp_path / "heads.safetensors", donor)
    target = Transformer(tiny_model_config()).eval()
    with pytest.raises(RetainingHeadsError, match="trained for another model.*n_layers=2"):
        generate_with_policy(target, ids, build_policy("locret", heads=path), 8, 4, 1)
    with pytest.raises(RetainingHeadsError, match="trained for another model"):
        attach_heads(target, RetainingHeads(tiny_model_config(n_layers=3), hidden=4))
    # heads given as a path load and run
    ok = Transformer(tiny_model_config(n_layers=3)).eval()
    result = generate_with_policy(ok, ids, build_policy("locret", heads=path), 8, 4, 2)
    assert result.stats.peak_kv_tokens <= 12
