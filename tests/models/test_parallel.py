"""Tensor parallelism: tp = 2 on two gloo processes against the tp = 1 model, and the sharding maps."""

from __future__ import annotations

import pytest
import torch

from densa.models import ModelConfig, Transformer, causal_lm_loss
from densa.models import parallel as tp
from densa.testing import random_tokens, run_distributed, tiny_model_config

pytestmark = pytest.mark.distributed

CONFIGS = {
    "gqa-bias-swiglu": dict(n_heads=4, n_kv_heads=2, qkv_bias=True, activation="silu", gated=True),
    "mha-relu2-plain-tied": dict(
        n_heads=4, n_kv_heads=4, activation="relu2", gated=False, tie_embeddings=True
    ),
    # head_dim * n_heads != dim: o_proj's input (sharded) and output (replicated) sizes differ.
    "gqa-headdim-reglu": dict(n_heads=4, n_kv_heads=2, head_dim=16, activation="relu", gated=True),
}


def _tp2_vs_tp1(overrides: dict) -> dict[str, float]:
    """Per rank: shard a tp = 1 model into tp = 2; compare logits, gradients and the gathered state dict."""
    tp.init_tensor_parallel(2)
    config = tiny_model_config(**overrides)
    torch.manual_seed(1)
    ref = Transformer(config)
    model = Transformer(config, tp_size=2)
    model.load_state_dict(tp.shard_state_dict(ref.state_dict(), config, tp.tp_rank(), 2))

    # Sharded weights carry megatron's TP tag (grad-norm code sums them over ranks); replicated ones do not.
    tagged = {n for n, p in model.named_parameters() if getattr(p, "tensor_model_parallel", False)}
    sharded = {n for n, _ in ref.named_parameters() if "_proj." in n}  # qkv/o/gate_up/up/down (+ bias)
    assert tagged == sharded, (tagged, sharded)

    ids = random_tokens(config, batch=2, seq=16)
    labels = random_tokens(config, batch=2, seq=16, seed=1)
    ref_logits, logits = ref(ids), model(ids)
    causal_lm_loss(ref_logits, labels).backward()
    causal_lm_loss(logits, labels).backward()

    grads = tp.gather_state_dict({n: p.grad for n, p in model.named_parameters()}, config)
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    assert grads.keys() == ref_grads.keys()
    gathered = tp.gather_state_dict(model.state_dict(), config, dst=0)
    if tp.tp_rank() == 0:
        assert gathered.keys() == ref.state_dict().keys()
        state_equal = all(torch.equal(gathered[k], v) for k, v in ref.state_dict().items())
    else:
        assert gathered is None  # dst=0: only rank 0 keeps the full dict
        state_equal = True
    return {
        "logits": (logits - ref_logits).abs().max().item(),
        "grads": max(((grads[n] - g).abs().max() / g.abs().max()).item() for n, g in ref_grads.items()),
        "state_equal": state_equal,
        "shard_numel": sum(p.numel() for p in model.parameters()),
    }


@pytest.mark.parametrize("name", list(CONFIGS))
def test_tp2_matches_tp1(name: str) -> None:
    results = run_distributed(_tp2_vs_tp1, world_size=2, args=(CONFIGS[name],), timeout=60)
    config = tiny_model_config(**CONFIGS[name])
    for rank, res in enumerate(results):
        assert res["logits"] <= 1e-5, f"rank {rank}: logits differ by {res['logits']:.2e}"
        assert res["grads"] <= 1e-5, f"rank {rank}: gradients differ (relative) by {res['grads']:.2e}"
        assert res["state_equal"], f"rank {rank}: gather(shard(sd)) != sd"
    # Each rank holds half of every sharded matrix and a full copy of the replicated ones.
    sharded = config.num_params(include_embeddings=False) - config.dim * (2 * config.n_layers + 1)
    assert results[0]["shard_numel"] == config.num_params() - sharded // 2


def _init_like_tp1() -> dict[str, bool]:
    tp.init_tensor_parallel(2)
    config = tiny_model_config(qkv_bias=True)
    model = Transformer(config, tp_size=2)  # reset_parameters -> init_from_full
    qkv = model.layers[0].attn.qkv_proj.weight.detach()
    both = [torch.empty_like(qkv) for _ in range(2)]
    torch.distributed.all_gather(both, qkv)
    # From the same RNG state, init_from_full draws exactly the weights a tp = 1 model gets.
    torch.manual_seed(5)
    tp.init_from_full(model)
    torch.manual_seed(5)
    ref = Transformer(config)
    full = tp.gather_state_dict(model.state_dict(), config)
    return {
        "ranks_differ": not torch.equal(both[0], both[1]),
        "equals_tp1": all(torch.equal(full[k], v) for k, v in ref.state_dict().items()),
    }


def test_tp_init_is_the_tp1_init_sharded() -> None:
    for rank, res in enumerate(run_distributed(_init_like_tp1, world_size=2, timeout=60)):
        assert res["ranks_differ"], f"rank {rank}: both TP ranks drew the same shard"
        assert res["equals_tp1"], f"rank {rank}: gathered init differs from the tp = 1 init"


def test_shard_state_dict_takes_each_ranks_heads_and_neurons() -> None:
    """Single process: shards against explicit per-head / per-neuron indexing of the tp = 1 tensors."""
    config = ModelConfig(vocab_size=16, dim=8, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=6, qkv_bias=True)
    hd, size = config.head_dim, 2
    torch.manual_seed(0)
    full = Transformer(config).state_dict()
    qkv, bias = full["layers.0.attn.qkv_proj.weight"], full["layers.0.attn.qkv_proj.bias"]
    q, k, v = qkv[: 4 * hd], qkv[4 * hd : 6 * hd], qkv[6 * hd :]
    gate, up = full["layers.0.ffn.gate_up_proj.weight"].chunk(2)
    shards = [tp.shard_state_dict(full, config, r, size) for r in range(size)]
    for r, shard in enumerate(shards):
        heads, kv_heads = [2 * r, 2 * r + 1], [r]
        rows = lambda t, hs: torch.cat([t[h * hd : (h + 1) * hd] for h in hs])  # noqa: E731
        expect = torch.cat([rows(q, heads), rows(k, kv_heads), rows(v, kv_heads)])
        assert torch.equal(shard["layers.0.attn.qkv_proj.weight"], expect)
        b_q, b_k, b_v = bias[: 4 * hd], bias[4 * hd : 6 * hd], bias[6 * hd :]
        expect_b = torch.cat([rows(b_q, heads), rows(b_k, kv_heads), rows(b_v, kv_heads)])
        assert torch.equal(shard["layers.0.attn.qkv_proj.bias"], expect_b)
        neurons = slice(3 * r, 3 * r + 3)
        assert torch.equal(shard["layers.0.ffn.gate_up_proj.weight"], torch.cat([gate[neurons], up[neurons]]))
        assert torch.equal(
            shard["layers.0.ffn.down_proj.weight"], full["layers.0.ffn.down_proj.weight"][:, neurons]
        )
        o_cols = slice(2 * r * hd, (2 * r + 2) * hd)
        assert torch.equal(
            shard["layers.0.attn.o_proj.weight"], full["layers.0.attn.o_proj.weight"][:, o_cols]
        )
        for key in ("embed_tokens.weight", "lm_head.weight", "norm.weight", "layers.0.attn_norm.weight"):
            assert torch.equal(shard[key], full[key])


def test_shard_state_dict_rejects_indivisible_heads() -> None:
    config = tiny_model_config(n_heads=4, n_kv_heads=1)
    with pytest.raises(ValueError, match=r"n_kv_heads \(1\) must be divisible by tp \(2\)"):
        tp.shard_state_dict(Transformer(config).state_dict(), config, 0, 2)


def test_parallel_layers_need_initialised_groups() -> None:
    with pytest.raises(RuntimeError, match="init_tensor_parallel"):
        tp.column_parallel_linear(8, 8, bias=False)
    with pytest.raises(RuntimeError, match="torch.distributed initialised first"):
        tp.init_tensor_parallel(2)


def _dp2_tp2() -> tuple[int, bool]:
    tp.init_tensor_parallel(2)
    config = tiny_model_config()
    torch.manual_seed(3)
    ref = Transformer(config)
    model = Transformer(config, tp_size=2)
    model.load_state_dict(tp.shard_state_dict(ref.state_dict(), config, tp.tp_rank(), 2))
    ids = random_tokens(config, seed=torch.distributed.get_rank() // 2)  # one batch per DP replica
    return tp.tp_rank(), torch.allclose(model(ids), ref(ids), atol=1e-5, rtol=1e-5)


def test_four_ranks_form_two_tp_groups_of_consecutive_ranks() -> None:
    results = run_distributed(_dp2_tp2, world_size=4, timeout=60)
    assert [r[0] for r in results] == [0, 1, 0, 1]
    assert all(r[1] for r in results)
