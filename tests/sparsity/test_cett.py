import pytest
import torch

from densa.sparsity import (
    LayerCETT,
    cett,
    collect_ffn,
    ffn_layers,
    neuron_thresholds,
    search_threshold,
    sparsify,
)


def loop_cett(acts: torch.Tensor, w: torch.Tensor, t: float) -> float:
    """CETT straight from the definition, one token and one neuron at a time."""
    ratios = []
    for a in acts:
        tail = torch.zeros(w.shape[0], dtype=torch.float64)
        for i in range(a.numel()):
            if abs(a[i]) * w[:, i].norm() <= t:
                tail += a[i].double() * w[:, i].double()
        dense = (w.double() @ a.double()).norm()
        ratios.append(float(tail.norm() / dense))
    return sum(ratios) / len(ratios)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.2, 10.0])
def test_cett_matches_loop(t):
    gen = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(20, 12, generator=gen))
    w = torch.randn(6, 12, generator=gen) * torch.linspace(0.1, 2.0, 12)
    assert cett(acts, w, t) == pytest.approx(loop_cett(acts, w, t), rel=1e-5, abs=1e-7)


def test_cett_endpoints():
    # CETT is not monotone in t token by token (pruned outputs can cancel), only its ends are fixed.
    gen = torch.Generator().manual_seed(1)
    layer = LayerCETT(torch.randn(50, 16, generator=gen), torch.randn(8, 16, generator=gen))
    assert layer.cett(-1.0) == 0.0
    assert layer.cett(1e9) == pytest.approx(1.0)


@pytest.mark.parametrize("target", [0.05, 0.1, 0.3])
def test_threshold_search_hits_target(relu_model, eval_seqs, target):
    records = collect_ffn(relu_model, eval_seqs, max_tokens=256)
    for acts, layer in zip(records.acts, ffn_layers(relu_model)):
        t, c = search_threshold(acts, layer.down_weight, target)
        assert c <= target
        assert c == pytest.approx(
            target, abs=0.01
        )  # 65,536-point grid: the largest t under the target is close
        assert cett(acts, layer.down_weight, t) == pytest.approx(c)


def test_threshold_zero_keeps_outputs_and_counts_relu_zeros(relu_model, eval_seqs):
    x = eval_seqs[:4, :-1]
    dense = relu_model(x)
    records = collect_ffn(relu_model, eval_seqs[:4])
    natural = [float((a == 0).float().mean()) for a in records.acts]
    with sparsify(relu_model, [0.0, 0.0]) as counter:
        sparse = relu_model(x)
    assert torch.equal(dense, sparse)
    assert counter.sparsity() == pytest.approx(natural)
    assert min(natural) > 0.2  # a trained ReLU model really has natural zeros to count


def test_cett_target_zero_keeps_outputs(relu_model, eval_seqs):
    # On a ReLU model CETT 0 is reachable with t ≥ 0: only exact zeros fall under it, so nothing changes.
    records = collect_ffn(relu_model, eval_seqs[:4])
    ts = []
    for acts, layer in zip(records.acts, ffn_layers(relu_model)):
        t, c = search_threshold(acts, layer.down_weight, 0.0)
        assert c == 0.0 and t >= 0.0
        ts.append(t)
    x = eval_seqs[:4, :-1]
    dense = relu_model(x)
    with sparsify(relu_model, ts):
        assert torch.equal(relu_model(x), dense)


def test_per_neuron_thresholds_equal_layer_threshold_over_norm(relu_model):
    per_neuron = neuron_thresholds(relu_model, [0.3, 0.6])
    norms = relu_model.layers[1].ffn.down_proj.weight.norm(dim=0)
    assert torch.allclose(per_neuron[1], 0.6 / norms)


def test_sparsify_zeroes_exactly_the_small_neuron_outputs(relu_model, eval_seqs):
    x = eval_seqs[:2, :-1]
    records = collect_ffn(relu_model, eval_seqs[:2])
    t = float(records.acts[0].abs().mul(ffn_layers(relu_model)[0].down_norms()).median())
    with sparsify(relu_model, [t, 0.0]) as counter:
        relu_model(x)
    n = records.acts[0].abs() * ffn_layers(relu_model)[0].down_norms()
    assert counter.active[0] == int((n > t).sum())
