import copy
import io
import types

import pytest
import torch

from densa.sparse_moe import MoEError, MoEFeedForward, SSDCallback, SSDConfig, is_sparse

from .conftest import tiny_model

CONFIG = dict(
    num_experts=8, top_k=2, interval=2, stability_threshold=0.5, sparse_steps=3, final_dense_fraction=0.25
)


def trainer_for(model, steps=12, lr=1e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    cfg = types.SimpleNamespace(train=types.SimpleNamespace(steps=steps))
    return types.SimpleNamespace(model=model, optimizer=opt, cfg=cfg)


def run(trainer, cb, start, stop, log):
    gen = torch.Generator().manual_seed(100 + start)
    for step in range(start, stop):
        cb.pre_step(trainer, step)
        tokens = torch.randint(0, 64, (2, 9), generator=gen)
        logits = trainer.model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        metrics = {}
        cb.post_step(trainer, step, metrics)
        log.append((step, is_sparse(trainer.model), metrics))


def test_schedule_stability_switch_sparse_phase_and_final_dense():
    trainer = trainer_for(tiny_model(False, "relu"))
    cb = SSDCallback(SSDConfig(**CONFIG, switch_steps=(8,)))
    cb.on_train_start(trainer)
    log = []
    run(trainer, cb, 0, 12, log)
    modes = [sparse for _, sparse, _ in log]
    # done=2: first clustering (no stability yet); done=4: stable -> sparse for 3 steps (until done=7);
    # done=8: explicit switch step -> sparse again, cut at the final dense phase (done=9).
    assert modes == [False, False, False, True, True, True, False, True, False, False, False, False]
    assert "ssd/stability_ari" not in log[1][2] and log[3][2]["ssd/stability_ari"] >= 0.5
    assert {"ssd/load_cv", "ssd/load_max_over_mean"} <= log[4][2].keys()
    assert log[-1][2]["ssd/sparse_step_fraction"] == pytest.approx(4 / 12)
    events = [(h["step"], h["event"]) for h in cb.history]
    assert events == [
        (2, "cluster"),
        (4, "cluster"),
        (4, "to_sparse"),
        (7, "to_dense"),
        (8, "cluster"),
        (8, "to_sparse"),
        (9, "to_dense"),
        (10, "cluster"),
        (12, "cluster"),
    ]
    loads = cb.history[3]["expert_load"]
    assert len(loads) == 2 and all(sum(layer) == pytest.approx(1.0) for layer in loads)
    # The router learned in the sparse phases (its own Adam), the model's FFNs are dense again.
    assert not any(isinstance(layer.ffn, MoEFeedForward) for layer in trainer.model.layers)


def test_checkpoint_round_trip_resumes_sparse_phase_bit_identically():
    config = SSDConfig(**CONFIG)
    trainer = trainer_for(tiny_model(True, "silu"))
    cb = SSDCallback(config)
    cb.on_train_start(trainer)
    log = []
    run(trainer, cb, 0, 5, log)  # sparse from done=4
    assert cb.mode == "sparse" and is_sparse(trainer.model)

    # "Checkpoint": model + optimizer state as a trainer saves them, callback state through torch.save.
    model_state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert not any(".router." in k for k in model_state)  # routers live in the callback state
    opt_state = copy.deepcopy(trainer.optimizer.state_dict())
    buf = io.BytesIO()
    torch.save(cb.state_dict(), buf)

    resumed = trainer_for(tiny_model(True, "silu", seed=123))
    resumed.model.load_state_dict(
        model_state, strict=True
    )  # a sparse-mode checkpoint loads into a dense model
    resumed.optimizer.load_state_dict(opt_state)
    cb2 = SSDCallback(config)
    buf.seek(0)
    cb2.load_state_dict(torch.load(buf, weights_only=False))
    cb2.on_checkpoint_load(resumed, 5, None)
    cb2.on_train_start(resumed)
    assert cb2.mode == "sparse" and is_sparse(resumed.model)
    assert all(torch.equal(a, b) for a, b in zip(cb.layouts, cb2.layouts, strict=True))
    a_router = trainer.model.layers[0].ffn.router.weight
    assert torch.equal(a_router, resumed.model.layers[0].ffn.router.weight)

    log_a, log_b = [], []
    run(trainer, cb, 5, 10, log_a)  # crosses the switch back to dense (done=7) and a re-clustering
    run(resumed, cb2, 5, 10, log_b)
    assert [m for _, m, _ in log_a] == [m for _, m, _ in log_b]
    for (name, a), b in zip(trainer.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert cb.history == cb2.history


def test_bad_config_and_model():
    with pytest.raises(MoEError, match=r"ssd.top_k: must be in 1..ssd.num_experts \(8\), got 9"):
        SSDConfig(num_experts=8, top_k=9)
    with pytest.raises(MoEError, match="ssd.stability_metric: 'nmi' is not one of"):
        SSDConfig(num_experts=8, top_k=2, stability_metric="nmi")
    cb = SSDCallback(SSDConfig(num_experts=6, top_k=2))
    with pytest.raises(MoEError, match=r"num_experts \(6\) must divide ffn_dim \(64\)"):
        cb.on_train_start(trainer_for(tiny_model()))
