import types

import pytest
import torch

from densa.sparsity import collect_ffn
from densa.sparsity.callback import ActivationL1Callback, ActivationRatioCallback
from densa.sparsity.prosparse import ActivationL1

from .conftest import tiny_config, train_tiny


def test_activation_ratio_logged_on_interval_steps(relu_model, eval_seqs):
    trainer = types.SimpleNamespace(model=relu_model)
    cb = ActivationRatioCallback(interval=2, max_tokens=10_000)
    cb.on_train_start(trainer)
    logged = []
    for step in range(3):
        metrics = {}
        cb.pre_step(trainer, step)
        relu_model(eval_seqs[:2, :-1])
        cb.post_step(trainer, step, metrics)
        logged.append(metrics)
    cb.on_train_end(trainer, 3)
    assert logged[0] == {} and logged[2] == {}  # armed on steps s with (s + 1) % interval == 0
    acts = collect_ffn(relu_model, eval_seqs[:2]).acts
    expected = [float((a != 0).float().mean()) for a in acts]
    assert logged[1]["sparsity/activation_ratio/layer_1"] == pytest.approx(expected[1])
    assert logged[1]["sparsity/activation_ratio"] == pytest.approx(sum(expected) / 2)
    assert not relu_model.layers[0].ffn.hook_act._forward_hooks  # hooks removed at the end


def test_activation_ratio_with_cett(relu_model, eval_seqs):
    trainer = types.SimpleNamespace(model=relu_model)
    cb = ActivationRatioCallback(interval=1, cett=0.1)
    cb.on_train_start(trainer)
    metrics = {}
    cb.pre_step(trainer, 0)
    relu_model(eval_seqs[:4, :-1])
    cb.post_step(trainer, 0, metrics)
    cb.on_train_end(trainer, 1)
    natural = 1 - collect_ffn(relu_model, eval_seqs[:4]).acts[0].eq(0).float().mean()
    assert 0.0 < metrics["sparsity/activation_ratio/layer_0"] < float(natural)


def test_l1_callback_gradient_equals_explicit_loss(tokens, eval_seqs):
    x = eval_seqs[:2]
    grads = []
    for mode in ("loss", "callback"):
        model = train_tiny(tiny_config("relu"), tokens, steps=0).train()
        lm = lambda m: torch.nn.functional.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())  # noqa: E731
        if mode == "loss":
            reg = ActivationL1([(4, 0.5)]).attach(model)
            loss = lm(model) + reg.loss(step=2)
            reg.detach()
        else:
            trainer = types.SimpleNamespace(model=model)
            cb = ActivationL1Callback([(4, 0.5)])
            cb.on_train_start(trainer)
            cb.pre_step(trainer, 2)
            loss = lm(model)
        loss.backward()
        grads.append(model.layers[0].ffn.up_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert not torch.allclose(grads[0], torch.zeros_like(grads[0]))
