import math

import pytest
import torch

from densa.sparsity.errors import UnsupportedModelError
from densa.sparsity.prosparse import ActivationL1, fatrelu, fatrelu_hooks, sine_staged_lambda, swap_activation

from .conftest import tiny_config, train_tiny


def test_sine_staged_schedule():
    stages = [(100, 1.0), (300, 3.0)]
    assert sine_staged_lambda(0, stages) == 0.0
    assert sine_staged_lambda(50, stages) == pytest.approx(math.sin(math.pi / 4))
    assert sine_staged_lambda(100, stages) == pytest.approx(1.0)
    assert sine_staged_lambda(200, stages) == pytest.approx(1.0 + 2.0 * math.sin(math.pi / 4))
    assert sine_staged_lambda(10_000, stages) == 3.0


def test_fatrelu_values():
    x = torch.tensor([-1.0, 0.05, 0.1, 0.2])
    assert fatrelu(x, 0.1).tolist() == [0.0, 0.0, 0.0, pytest.approx(0.2)]


def test_swap_to_relu_and_fatrelu_hooks(tokens, eval_seqs):
    model = train_tiny(tiny_config("silu", gated=True), tokens, steps=5)
    with pytest.raises(UnsupportedModelError, match="FATReLU needs a ReLU FFN"), fatrelu_hooks(model, 0.1):
        pass
    swap_activation(model, "relu")
    assert model.config.activation == "relu" and model.config.ffn_name == "ReGLU"
    ffn, x = model.layers[0].ffn, eval_seqs[:2, :-1]
    seen = {}
    h = ffn.hook_act.register_forward_hook(lambda _m, _i, a: seen.setdefault("a", a))
    g = ffn.hook_pre_act.register_forward_hook(lambda _m, _i, p: seen.setdefault("gate", p.clone()))
    with fatrelu_hooks(model, 0.1):
        model(x)
    h.remove(), g.remove()
    gate_active = seen["gate"] > 0.1
    assert torch.equal(seen["a"] != 0, gate_active & (seen["a"] != 0))  # nothing with gate ≤ T survives
    assert (seen["a"][~gate_active] == 0).all()


def test_activation_l1_loss(relu_model, eval_seqs):
    reg = ActivationL1([(10, 2.0)]).attach(relu_model)
    captured = []
    hs = [
        layer.ffn.hook_act.register_forward_hook(lambda _m, _i, a: captured.append(a))
        for layer in relu_model.layers
    ]
    relu_model(eval_seqs[:2, :-1])
    for h in hs:
        h.remove()
    expected = 2.0 * torch.stack([a.abs().mean() for a in captured]).mean()
    assert float(reg.loss(step=10).detach()) == pytest.approx(float(expected.detach()))
    reg.detach()
