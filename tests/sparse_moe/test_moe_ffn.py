import pytest
import torch

from densa.models.ffn import FeedForward
from densa.sparse_moe import CentroidRouter, MoEError, MoEFeedForward, cluster_ffn
from densa.sparse_moe.moe_ffn import dense_masked_reference

from .conftest import tiny_config

VARIANTS = [(True, "silu"), (False, "relu"), (True, "relu2")]


def make_moe(
    gated: bool, activation: str, experts: int = 8, top_k: int = 2, **kw
) -> tuple[FeedForward, MoEFeedForward]:
    ffn = FeedForward(tiny_config(gated, activation))
    with torch.no_grad():
        for p in ffn.parameters():
            p.normal_(0.0, 0.2)
    router = CentroidRouter.from_clustering(cluster_ffn(ffn, experts))
    return ffn, MoEFeedForward(ffn, experts, top_k, router, **kw)


def routing(moe: MoEFeedForward, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.reshape(-1, x.shape[-1])
    top, experts = moe.router(flat if moe.router_input_grad else flat.detach()).topk(moe.top_k, dim=-1)
    p = torch.softmax(top, dim=-1)
    return experts, (p - p.detach()) + 1.0


@pytest.mark.parametrize(("gated", "activation"), VARIANTS)
def test_all_experts_equals_dense(gated, activation):
    ffn, moe = make_moe(gated, activation, top_k=8)
    x = torch.randn(3, 7, 32)
    assert (moe(x) - ffn(x)).abs().max() <= 1e-5


@pytest.mark.parametrize(("gated", "activation"), VARIANTS)
@pytest.mark.parametrize("router_input_grad", [False, True])
def test_straight_through_forward_and_gradients_match_dense_masked(gated, activation, router_input_grad):
    ffn, moe = make_moe(gated, activation, top_k=2, router_input_grad=router_input_grad)
    params = [*ffn.parameters(), *moe.router.parameters()]
    x = torch.randn(2, 9, 32, requires_grad=True)
    grad_out = torch.randn(2, 9, 32)

    out = moe(x)
    experts, weight = routing(moe, x)
    assert torch.equal(weight, torch.ones_like(weight))  # the forward weight is exactly 1
    (out * grad_out).sum().backward()
    sparse_grads = [p.grad.clone() for p in params] + [x.grad.clone()]
    for t in [*params, x]:
        t.grad = None

    experts, weight = routing(moe, x)
    ref = dense_masked_reference(moe, x, experts, weight)
    assert (out - ref).abs().max() <= 1e-5  # fp32 summation-order noise (1.1e-6 seen on 2-core CPUs)
    # The reference really drops unselected experts: it differs from the full dense FFN.
    assert (ref - ffn(x)).abs().max() > 1e-3
    (ref * grad_out).sum().backward()
    dense_grads = [p.grad.clone() for p in params] + [x.grad.clone()]
    for got, want in zip(sparse_grads, dense_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert sparse_grads[len(params) - 1].abs().max() > 1e-4  # the router learns through p


def test_unselected_experts_get_exactly_zero_weight_gradient():
    ffn, moe = make_moe(False, "relu", experts=8, top_k=1)
    x = torch.randn(1, 3, 32)  # 3 tokens, top-1: at most 3 experts touched
    moe(x).sum().backward()
    per_expert = ffn.up_proj.weight.grad.reshape(8, -1).abs().sum(1)
    used = set(routing(moe, x)[0].flatten().tolist())
    assert {e for e in range(8) if per_expert[e] > 0} <= used
    assert all(per_expert[e] == 0 for e in range(8) if e not in used)
    load = moe.pop_load()
    assert load.sum() == 3 and moe.pop_load().sum() == 0


def test_router_dropped_from_state_dict_unless_persisted():
    ffn, moe = make_moe(True, "silu")
    assert "router.weight" in moe.state_dict()
    moe.persist_router = False
    assert set(moe.state_dict()) == set(ffn.state_dict())
    moe.load_state_dict(ffn.state_dict(), strict=True)  # a dense state loads into a non-persisting MoE


def test_bad_top_k_and_experts():
    ffn = FeedForward(tiny_config())
    router = CentroidRouter(32, 8)
    with pytest.raises(MoEError, match=r"top_k must be between 1 and num_experts \(8\), got 9"):
        MoEFeedForward(ffn, 8, 9, router)
    with pytest.raises(MoEError, match=r"top_k must be between 1 and num_experts \(8\), got 0"):
        MoEFeedForward(ffn, 8, 0, router)
    with pytest.raises(MoEError, match=r"num_experts \(6\) must divide ffn_dim \(64\)"):
        MoEFeedForward(ffn, 6, 2, router)
