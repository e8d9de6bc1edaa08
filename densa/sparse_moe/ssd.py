"""SSD (switchable sparse-dense learning) as a trainer callback.

Dense mode: every `interval` steps each layer is re-clustered (balanced k-means warm-started from the last
clustering) and the stability of the clustering (ARI or overlap with the previous one, mean over layers)
is logged. When it reaches `stability_threshold`, or at an explicit `switch_steps` entry, the model is
switched to sparse: neurons and Adam moments are permuted so experts are contiguous, and every FFN becomes
a top-k MoE with a centroid router trained through the straight-through weight (its own small Adam).
Sparse mode lasts `sparse_steps` steps (or until the next switch step), then the MoE is merged back
(lossless). The last `final_dense_fraction` of training is always dense.

Decisions are made in `post_step` (after the optimizer update), so the checkpoint written after that step
already holds the new mode. The model checkpoint never contains routers (they are not saved with the
model); the callback state does: mode, layouts, clusterings, routers, router optimizer, history. On resume
the (already permuted) weights are wrapped again without permuting.

Trainer protocol: `densa.train.callbacks.Callback`; the model is `trainer.engine.module` (or
`trainer.model`). The training state is moved with the weights by the engine itself when it is a
`ParamState` (densa's engine: ZeRO-0/1/2, fp32 or bf16, every call a collective on all ranks), else by
`trainer.engine.torch_optimizer` (or `trainer.optimizer`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from densa.sparse_moe.config import SSDConfig
from densa.sparse_moe.errors import MoEError, check_experts
from densa.sparse_moe.moe_ffn import MoEFeedForward
from densa.sparse_moe.moefication import Clustering, cluster_ffn
from densa.sparse_moe.router import build_router
from densa.sparse_moe.stability import stability
from densa.sparse_moe.switching import (
    Holder,
    ParamState,
    check_optimizer,
    compose,
    ffn_modules,
    to_dense,
    to_sparse,
)
from densa.train.callbacks import Callback

STATE_VERSION = 1


def _unwrap(trainer: Any) -> tuple[nn.Module, Holder | None]:
    engine = getattr(trainer, "engine", None)
    model = getattr(engine, "module", None) if engine is not None else getattr(trainer, "model", None)
    if isinstance(engine, ParamState):
        optimizer = engine
    elif engine is not None:
        optimizer = getattr(engine, "torch_optimizer", None)
    else:
        optimizer = getattr(trainer, "optimizer", None)
    while model is not None and not hasattr(model, "layers") and hasattr(model, "module"):
        model = model.module
    if model is None:
        raise MoEError("SSDCallback: the trainer exposes neither engine.module nor model")
    return model, optimizer


def _dist_world() -> int:
    return (
        torch.distributed.get_world_size()
        if torch.distributed.is_available() and torch.distributed.is_initialized()
        else 1
    )


class SSDCallback(Callback):
    """Switch between dense and sparse (MoE) training; see the module docstring."""

    def __init__(self, config: SSDConfig, *, total_steps: int | None = None) -> None:
        self.config = config
        self.total_steps = total_steps
        self.model: nn.Module | None = None
        self.optimizer: Holder | None = None
        self.mode = "dense"
        self.layouts: list[torch.Tensor] = []
        self.clusterings: list[Clustering] = []
        self.sparse_until = 0
        self.sparse_steps_done = 0
        self.history: list[dict[str, Any]] = []
        self.router_optimizer: torch.optim.Optimizer | None = None
        self._phase_load: list[torch.Tensor] = []
        self._router_grads: dict[torch.Tensor, torch.Tensor] = {}
        self._router_hooks: list[Any] = []
        self._pending: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return "ssd"

    # ---------------------------------------------------------------------------------- binding

    def bind(self, model: nn.Module, optimizer: Holder | None) -> None:
        ffns = ffn_modules(model)
        for ffn in ffns:
            check_experts(ffn.n_local_neurons, self.config.num_experts)
        if optimizer is not None:
            check_optimizer(model, optimizer)
        self.model, self.optimizer = model, optimizer
        if not self.layouts:
            self.layouts = [torch.arange(ffn.n_local_neurons) for ffn in ffns]
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None

    # `config.enabled` is the recipe's switch (densa.train.methods builds this callback only when it is
    # set); a callback built in Python always runs.

    def on_train_start(self, trainer: Any) -> None:
        if self.total_steps is None:
            self.total_steps = int(trainer.cfg.train.steps)
        if self.model is None:
            self.bind(*_unwrap(trainer))

    def on_checkpoint_load(self, trainer: Any, step: int, path: Any) -> None:
        self.bind(*_unwrap(trainer))

    # ---------------------------------------------------------------------------------- schedule

    @property
    def final_dense_start(self) -> int:
        total = self.total_steps if self.total_steps is not None else 2**62
        return int(round(total * (1.0 - self.config.final_dense_fraction)))

    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        if self.model is None:
            self.on_train_start(trainer)
        done = step + 1  # completed optimizer steps; a switch here applies from the next step on
        cfg = self.config
        explicit = done in cfg.switch_steps
        if self.mode == "sparse":
            self._router_step()
            self.sparse_steps_done += 1
            metrics.update(self._load_metrics())
            if explicit or done >= self.sparse_until or done >= self.final_dense_start:
                self.switch_to_dense(done)
        else:
            if (cfg.interval and done % cfg.interval == 0) or explicit:
                value = self.recluster(done)
                if value is not None:
                    metrics[f"ssd/stability_{cfg.stability_metric}"] = value
                metrics["ssd/inertia"] = sum(c.inertia for c in self.clusterings) / len(self.clusterings)
                stable = value is not None and value >= cfg.stability_threshold
                if done < self.final_dense_start and (explicit or stable):
                    self.switch_to_sparse(done)
        metrics["ssd/sparse"] = 1.0 if self.mode == "sparse" else 0.0
        metrics["ssd/sparse_step_fraction"] = self.sparse_steps_done / done

    # ---------------------------------------------------------------------------------- actions

    def recluster(self, step: int) -> float | None:
        """Re-cluster every layer; returns the mean stability against the last clustering (None at first)."""
        cfg = self.config
        previous = self.clusterings
        new = []
        for i, ffn in enumerate(ffn_modules(self.model)):
            prev = previous[i] if previous else None
            c = cluster_ffn(
                ffn, cfg.num_experts, method=cfg.method, previous=prev, seed=cfg.seed, iters=cfg.kmeans_iters
            )
            new.append(self._broadcast(c))
        value = None
        if previous:
            value = sum(
                stability(p.labels, c.labels, cfg.stability_metric)
                for p, c in zip(previous, new, strict=True)
            )
            value /= len(new)
        self.clusterings = new
        self.history.append(
            {"step": step, "event": "cluster", "stability": value, "inertia": [c.inertia for c in new]}
        )
        return value

    def switch_to_sparse(self, step: int, routers: list[nn.Module] | None = None) -> None:
        if not self.clusterings:
            self.recluster(step)
        perms = to_sparse(
            self.model,
            self.clusterings,
            self.config.top_k,
            optimizer=self.optimizer,
            router=self.config.router,
            routers=routers,
            persist_router=False,
        )
        self.layouts = [compose(lay, p) for lay, p in zip(self.layouts, perms, strict=True)]
        self.clusterings = [c.permuted(p) for c, p in zip(self.clusterings, perms, strict=True)]
        self.mode = "sparse"
        base = self.sparse_until if routers is not None else step + self.config.sparse_steps
        self.sparse_until = min(
            base if self.config.sparse_steps else self.final_dense_start, self.final_dense_start
        )
        self._phase_load = [torch.zeros(self.config.num_experts, dtype=torch.float64) for _ in perms]
        self._make_router_optimizer()
        if routers is None:
            self.history.append({"step": step, "event": "to_sparse", "until": self.sparse_until})

    def switch_to_dense(self, step: int) -> None:
        to_dense(self.model, optimizer=self.optimizer)
        self.mode = "dense"
        self.router_optimizer = None
        self._drop_router_hooks()
        loads = [(load / load.sum().clamp_min(1)).tolist() for load in self._phase_load]
        self.history.append({"step": step, "event": "to_dense", "expert_load": loads})
        self._phase_load = []

    # ---------------------------------------------------------------------------------- helpers

    def _moe_layers(self) -> list[MoEFeedForward]:
        return [layer.ffn for layer in self.model.layers if isinstance(layer.ffn, MoEFeedForward)]

    def _make_router_optimizer(self) -> None:
        params = [p for moe in self._moe_layers() for p in moe.router.parameters()]
        lr = self.config.router_lr
        self._drop_router_hooks()
        for p in params:
            p.requires_grad_(lr > 0)
            if lr > 0:
                self._router_hooks.append(p.register_post_accumulate_grad_hook(self._take_router_grad))
        self.router_optimizer = torch.optim.Adam(params, lr=lr) if lr > 0 else None

    def _take_router_grad(self, param: torch.Tensor) -> None:
        """Move a router gradient out of the model as backward makes it. The routers sit in the model in
        sparse mode, so DeepSpeed would otherwise count them in its clipping norm and, under ZeRO-0, drop
        them in its zero_grad before `post_step` steps the routers (which then never trained)."""
        held = self._router_grads.get(param)
        self._router_grads[param] = param.grad if held is None else held + param.grad
        param.grad = None

    def _drop_router_hooks(self) -> None:
        for hook in self._router_hooks:
            hook.remove()
        self._router_hooks, self._router_grads = [], {}

    def _router_step(self) -> None:
        if self.router_optimizer is None:
            return
        world = _dist_world()
        for group in self.router_optimizer.param_groups:
            for p in group["params"]:
                p.grad = self._router_grads.pop(p, None)
                if p.grad is not None and world > 1:  # routers are outside the engine: average them ourselves
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
        self.router_optimizer.step()
        self.router_optimizer.zero_grad(set_to_none=True)

    def _load_metrics(self) -> dict[str, float]:
        cvs, peaks = [], []
        for i, moe in enumerate(self._moe_layers()):
            load = moe.pop_load()
            self._phase_load[i] += load.cpu()
            mean = load.mean().clamp_min(1e-12)
            cvs.append(float(load.std(unbiased=False) / mean))
            peaks.append(float(load.max() / mean))
        return {"ssd/load_cv": sum(cvs) / len(cvs), "ssd/load_max_over_mean": max(peaks)} if cvs else {}

    def _broadcast(self, c: Clustering) -> Clustering:
        """All ranks must use rank 0's labels: bitwise-equal clusterings are not guaranteed across hosts."""
        if _dist_world() == 1:
            return c
        labels = c.labels.clone()
        torch.distributed.broadcast(labels, src=0)
        return (
            Clustering(labels, c.centroids, c.inertia, c.row_norm, c.method)
            if not torch.equal(labels, c.labels)
            else c
        )

    # ---------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        routers = None
        if self.mode == "sparse":
            routers = [
                {k: v.detach().cpu().clone() for k, v in m.router.state_dict().items()}
                for m in self._moe_layers()
            ]
        return {
            "version": STATE_VERSION,
            "config": asdict(self.config),
            "mode": self.mode,
            "layouts": [lay.cpu().clone() for lay in self.layouts],
            "clusterings": [asdict(c) for c in self.clusterings],
            "sparse_until": self.sparse_until,
            "sparse_steps_done": self.sparse_steps_done,
            "history": list(self.history),
            "routers": routers,
            "router_optimizer": self.router_optimizer.state_dict()
            if self.router_optimizer is not None
            else None,
            "phase_load": [t.clone() for t in self._phase_load],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise MoEError(f"SSD callback state version {state.get('version')} is not {STATE_VERSION}")
        if self.model is None:
            self._pending = state
        else:
            self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
        if any(isinstance(layer.ffn, MoEFeedForward) for layer in self.model.layers):
            to_dense(self.model)  # e.g. loading into a model that is sparse right now
        self.layouts = [t.clone() for t in state["layouts"]]
        self.clusterings = [Clustering(**c) for c in state["clusterings"]]
        self.sparse_until = state["sparse_until"]
        self.sparse_steps_done = state["sparse_steps_done"]
        self.history = list(state["history"])
        self.mode = "dense"
        if state["mode"] == "sparse":
            # Weights and optimizer state were saved already permuted: wrap them with identity order.
            routers = []
            for c, rstate in zip(self.clusterings, state["routers"], strict=True):
                router = build_router(self.config.router, c)
                router.load_state_dict(rstate)
                routers.append(router)
            self.switch_to_sparse(-1, routers=routers)
            if state["router_optimizer"] is not None and self.router_optimizer is not None:
                self.router_optimizer.load_state_dict(state["router_optimizer"])
            self._phase_load = [t.clone() for t in state["phase_load"]]
