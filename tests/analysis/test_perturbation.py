"""Deactivating neurons through the hook equals zeroing their weights; losses per example are exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from densa.analysis.modularity.activations import collect_activations, deactivated, example_losses
from densa.analysis.modularity.perturbation import perturbation
from densa.analysis.probes import ProbeSequence
from densa.models import Transformer
from densa.testing.models import tiny_model_config

NEURONS = {0: torch.tensor([1, 5, 9]), 1: torch.tensor([0, 63])}


@pytest.mark.parametrize(("gated", "activation"), [(True, "silu"), (False, "relu")])
def test_hook_equals_zeroed_down_projection_columns(gated: bool, activation: str) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(gated=gated, activation=activation)).eval()
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    zeroed = Transformer(model.config).eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer, idx in NEURONS.items():
            zeroed.layers[layer].ffn.down_proj.weight[:, idx] = 0
        with deactivated(model, NEURONS):
            hooked = model(ids)
        assert torch.equal(hooked, zeroed(ids))
        assert not torch.allclose(model(ids), hooked)  # and the hook is gone afterwards


def test_gated_hook_equals_zeroed_gate_rows() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config()).eval()
    ids = torch.randint(0, 128, (1, 10))
    zeroed = Transformer(model.config).eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer, idx in NEURONS.items():
            zeroed.layers[layer].ffn.gate_up_proj.weight[idx] = 0  # SiLU(0) · up = 0
        with deactivated(model, NEURONS):
            assert torch.allclose(model(ids), zeroed(ids), atol=1e-6)


def _seqs() -> list[ProbeSequence]:
    return [
        ProbeSequence("x", [3, 4, 5, 6, 7], [(0, 0), (2, 1), (4, 0)]),
        ProbeSequence("x", [8, 9, 10], [(1, 1)]),
        ProbeSequence("y", [11, 12, 13, 14], [(-1, 0)]),
    ]


def test_example_losses_and_activations_match_direct_computation() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config()).eval()
    seqs = _seqs()
    losses = example_losses(model, seqs, batch_size=2)
    with torch.no_grad():
        nll0 = F.cross_entropy(
            model(torch.tensor([[3, 4, 5, 6, 7]]))[0, :-1], torch.tensor([4, 5, 6, 7]), reduction="none"
        )
        nll2 = F.cross_entropy(
            model(torch.tensor([[11, 12, 13, 14]]))[0, :-1], torch.tensor([12, 13, 14]), reduction="none"
        )
    assert losses[0] == pytest.approx(float(nll0[0]), abs=1e-5)
    assert losses[1] == pytest.approx(float(nll0[2]), abs=1e-5)
    assert torch.isnan(losses[2])  # the last token predicts nothing
    assert losses[4] == pytest.approx(float(nll2.mean()), abs=1e-5)
    acts = collect_activations(model, seqs, batch_size=2)  # padding in batch 1 must not leak
    captured = {}
    handle = model.layers[1].ffn.hook_act.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    with torch.no_grad():
        model(torch.tensor([[11, 12, 13, 14]]))
    handle.remove()
    assert acts.labels.tolist() == [0, 1, 0, 1, 0]
    assert torch.allclose(acts.acts[1][4], captured["a"][0].mean(0), atol=1e-6)


def test_perturbation_reports_own_other_and_random_deltas() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config()).eval()
    seqs = _seqs()[:2]
    partitions = [torch.arange(64) // 16] * 2
    res = perturbation(model, seqs, ["a", "b"], partitions, [[0, 0], [3, 3]], random_seeds=2)
    base = example_losses(model, seqs)
    with deactivated(model, {0: torch.arange(16), 1: torch.arange(16)}):
        off = example_losses(model, seqs)
    diff = off - base
    # labels per example: a, b, a (last token: NaN), b
    assert res.delta[0][0] == pytest.approx(float(diff[0]), abs=1e-9)
    assert res.delta[0][1] == pytest.approx(float(diff[[1, 3]].mean()), abs=1e-9)
    assert len(res.random_delta) == 2 and res.examples == [1, 2]
    assert {r["label"] for r in res.summary()} == {"a", "b"}
