import math

import pytest
import torch

from densa.sparsity import SparsityError, SparsityReport, eval_loss, ppl_p_sparsity, sparsify
from densa.sparsity.baselines import baseline_ppl_p, fat, fat_mask, topk, topk_mask


@pytest.mark.parametrize("model_name", ["relu_model", "swiglu_model"])
def test_ppl_p_hits_target_ratio(request, eval_seqs, model_name):
    model = request.getfixturevalue(model_name)
    report = ppl_p_sparsity(model, eval_seqs, 1.0, num_candidates=4096, max_cett_tokens=256, sweep=[0.05])
    assert report.converged
    assert report.ppl_ratio == pytest.approx(1.01, abs=0.05 * 0.01)
    # the reported ppl is reproducible by applying the reported thresholds
    with sparsify(model, report.thresholds) as counter:
        loss = eval_loss(model, eval_seqs)
    assert math.exp(loss) == pytest.approx(report.ppl_sparse, rel=1e-6)
    assert report.sparsity == pytest.approx(sum(counter.sparsity()) / 2)
    assert 0.0 < report.sparsity < 1.0
    assert any(pt.knob == 0.05 for pt in report.curve)
    back = SparsityReport.from_dict(report.to_dict())
    assert back.to_dict() == report.to_dict()


@pytest.mark.parametrize("p", [0.0, -1.0, 100.0, 250.0, float("nan")])
def test_p_outside_range_is_rejected(relu_model, eval_seqs, p):
    with pytest.raises(SparsityError, match=r"p must be in \(0, 100\)"):
        ppl_p_sparsity(relu_model, eval_seqs, p)


def test_topk_mask_closed_form():
    score = torch.tensor([[0.1, 0.5, 0.3, 0.9], [4.0, 1.0, 2.0, 3.0]])
    assert topk_mask(score, 0.5).tolist() == [[False, True, False, True], [True, False, False, True]]
    assert not topk_mask(score, 0.0).any()


def test_topk_sparsity_is_one_minus_k(relu_model, eval_seqs):
    with topk(relu_model, 0.25) as counter:
        relu_model(eval_seqs[:2, :-1])
    assert counter.sparsity() == [pytest.approx(0.75)] * 2


def test_fat_on_plain_relu_matches_manual_masking(relu_model, eval_seqs):
    from densa.sparsity import collect_ffn

    x = eval_seqs[:2, :-1]
    acts = collect_ffn(relu_model, eval_seqs[:2]).acts
    eps = float(acts[0][acts[0] > 0].median())
    with fat(relu_model, eps) as counter:
        out = relu_model(x)
    assert counter.sparsity()[0] == pytest.approx(float((acts[0] < eps).float().mean()))
    # same as zeroing by hand with a hook
    handles = [
        layer.ffn.hook_act.register_forward_hook(lambda _m, _i, a: a * fat_mask(a.abs(), eps))
        for layer in relu_model.layers
    ]
    try:
        assert torch.allclose(relu_model(x), out)
    finally:
        for h in handles:
            h.remove()


def test_fat_on_gated_model_reads_the_gate(swiglu_model, eval_seqs):
    captured = {}
    ffn = swiglu_model.layers[0].ffn
    h = ffn.hook_pre_act.register_forward_hook(lambda _m, _i, g: captured.setdefault("gate", g.detach()))
    with fat(swiglu_model, 0.1) as counter:
        swiglu_model(eval_seqs[:2, :-1])
    h.remove()
    gate = torch.nn.functional.silu(captured["gate"]).abs()
    assert counter.sparsity()[0] == pytest.approx(float((gate < 0.1).float().mean()))


@pytest.mark.parametrize("method", ["topk", "fat"])
def test_baseline_search_reaches_ratio(relu_model, eval_seqs, method):
    # top-k moves in steps of 1/ffn_dim, so the tolerance is loose: ±0.5 % around +1 %
    r = baseline_ppl_p(relu_model, eval_seqs, method, 1.0, tol=0.5)
    assert r.converged and abs(r.ppl_ratio - 1.01) <= 0.005
    if method == "topk":
        assert r.sparsity == pytest.approx(1.0 - round(r.knob * 64) / 64)
    assert r.ppl == pytest.approx(next(pt.ppl for pt in r.curve if pt.knob == r.knob))
