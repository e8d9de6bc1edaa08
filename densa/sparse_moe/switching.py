"""Dense ⇄ sparse switching of a whole densa Transformer, with optimizer state kept in step.

Dense → sparse: each layer's neurons are physically reordered so that every expert is a contiguous block
(rows of gate and up with one index, columns of down), the same index is applied to the optimizer's
per-parameter state (Adam exp_avg / exp_avg_sq, and any other state tensor shaped like the parameter),
and `layer.ffn` becomes a `MoEFeedForward` holding the very same Parameter objects. Reordering neurons does
not change the function (up to fp32 summation order in down_proj), so the switch is lossless.
Sparse → dense drops the router and puts the original FeedForward module back; the neuron order stays
permuted unless the caller passes the cumulative layouts to restore it.

Optimizer support: whatever holds the weights' training state is a `ParamState`: a torch optimizer whose
state is keyed by the model's parameters (torch AdamW, wrapped as `TorchOptimizerState`), or densa's
training engine (`densa.train.engine.Engine`), which also permutes the flat fp32 partitions of ZeRO-1/2 and
bf16's fp32 masters through DeepSpeed (those would otherwise overwrite the permuted weights on the next
step). `check_optimizer` refuses a holder that cannot move some FFN weight's state, saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from densa.models.hooks import HookPoint
from densa.sparse_moe.errors import MoEError, check_experts, check_top_k
from densa.sparse_moe.moe_ffn import MoEFeedForward
from densa.sparse_moe.moefication import Clustering, expert_permutation
from densa.sparse_moe.router import build_router


def ffn_modules(model: nn.Module) -> list[nn.Module]:
    """Every layer's `ffn` (dense FeedForward or MoEFeedForward), after checking it can be switched."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise MoEError(
            f"{type(model).__name__} has no `layers` ModuleList; SSD switching needs a densa Transformer"
        )
    if getattr(model, "tp_size", 1) != 1:
        raise MoEError(
            f"SSD switching supports tensor parallelism 1 only (model has tp_size={model.tp_size})"
        )
    ffns = []
    for i, layer in enumerate(layers):
        ffn = getattr(layer, "ffn", None)
        hooks = [getattr(ffn, name, None) for name in ("hook_pre_act", "hook_act")]
        if ffn is None or not all(isinstance(h, HookPoint) for h in hooks):
            raise MoEError(
                f"layer {i}: {type(ffn).__name__} has no FFN hook points (ffn.hook_pre_act / ffn.hook_act);"
                " switching needs densa.models.ffn.FeedForward layers"
            )
        names = ("gate_up_proj", "down_proj") if getattr(ffn, "gated", False) else ("up_proj", "down_proj")
        for name in names:
            if not isinstance(getattr(ffn, name, None), nn.Linear):
                raise MoEError(f"layer {i}: ffn.{name} is not an nn.Linear; cannot permute its neurons")
        ffns.append(ffn)
    return ffns


def is_sparse(model: nn.Module) -> bool:
    return any(isinstance(layer.ffn, MoEFeedForward) for layer in model.layers)


@runtime_checkable
class ParamState(Protocol):
    """Holds parameters' training state (optimizer moments, any fp32 master copy) and moves it with them."""

    def param_state_problem(self, param: torch.Tensor) -> str | None:
        """Why the state of `param` cannot be permuted (None when it can)."""

    def permute_param_(self, param: torch.Tensor, index: torch.Tensor, dim: int) -> None:
        """param ← param.index_select(dim, index) in place, with every state tensor of its shape."""


def _param_ids(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


class TorchOptimizerState:
    """A torch optimizer whose state is keyed by the model's own parameters (torch AdamW, Adam, SGD)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def param_state_problem(self, param: torch.Tensor) -> str | None:
        return None if id(param) in _param_ids(self.optimizer) else "the optimizer does not hold it"

    @torch.no_grad()
    def permute_param_(self, param: torch.Tensor, index: torch.Tensor, dim: int) -> None:
        param.copy_(param.index_select(dim, index.to(param.device)))
        permute_optimizer_state_(self.optimizer, param, index, dim)


Holder = torch.optim.Optimizer | ParamState


def param_state(optimizer: Holder | None) -> ParamState | None:
    """`optimizer` as a ParamState (a torch optimizer is wrapped; an engine is one already)."""
    if optimizer is None or isinstance(optimizer, ParamState):
        return optimizer
    if isinstance(optimizer, torch.optim.Optimizer):
        return TorchOptimizerState(optimizer)
    raise MoEError(
        f"{type(optimizer).__name__} is neither a torch optimizer nor a ParamState (param_state_problem,"
        " permute_param_); SSD cannot move its state with the weights"
    )


def check_optimizer(model: nn.Module, optimizer: Holder) -> None:
    """Raise unless `optimizer` can permute the training state of every FFN weight with the weight."""
    holder = param_state(optimizer)
    for i, ffn in enumerate(ffn_modules(model)):
        for name, param in ffn.named_parameters():
            problem = None if name.startswith("router.") else holder.param_state_problem(param)
            if problem is not None:
                raise MoEError(
                    f"layer {i}: cannot permute ffn.{name} with its training state: {problem} (SSD reorders"
                    " each FFN weight together with its optimizer moments and fp32 master copy)"
                )


def permute_optimizer_state_(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, index: torch.Tensor, dim: int
) -> list[str]:
    """Reorder, in place, every state tensor of `param` shaped like it (exp_avg, exp_avg_sq, ...).

    Scalars such as `step` are left alone. Returns the state keys that were permuted.
    """
    if id(param) not in _param_ids(optimizer):
        raise MoEError("the optimizer does not hold this parameter; cannot permute its state")
    done = []
    for key, value in optimizer.state.get(param, {}).items():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.copy_(value.index_select(dim, index.to(value.device)))
            done.append(key)
    return done


@torch.no_grad()
def permute_param_(
    param: torch.Tensor, index: torch.Tensor, dim: int, optimizer: Holder | None = None
) -> None:
    """param ← param.index_select(dim, index) in place (same Parameter object), and its training state."""
    holder = param_state(optimizer)
    if holder is None:
        param.copy_(param.index_select(dim, index.to(param.device)))
    else:
        holder.permute_param_(param, index, dim)


def permute_ffn_(ffn: nn.Module, perm: torch.Tensor, optimizer: Holder | None = None) -> None:
    """Reorder an FFN's neurons: new neuron i is old neuron perm[i] (gate and up rows share the index)."""
    n = ffn.n_local_neurons
    if perm.shape != (n,):
        raise MoEError(f"permutation has shape {tuple(perm.shape)}, expected ({n},)")
    perm = perm.long()
    if ffn.gated:
        permute_param_(ffn.gate_up_proj.weight, torch.cat([perm, perm + n]), 0, optimizer)
    else:
        permute_param_(ffn.up_proj.weight, perm, 0, optimizer)
    permute_param_(ffn.down_proj.weight, perm, 1, optimizer)


def compose(layout: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Cumulative layout after applying `perm`: layout[i] = original index of the neuron now at i."""
    return layout[perm.to(layout.device)]


def to_sparse(
    model: nn.Module,
    clusterings: Sequence[Clustering],
    top_k: int,
    *,
    optimizer: Holder | None = None,
    router: str = "centroid",
    routers: Sequence[nn.Module] | None = None,
    persist_router: bool = True,
) -> list[torch.Tensor]:
    """Make every layer's FFN an MoE over the clustering's experts; returns each layer's permutation.

    With `routers` given, they are used as-is (e.g. restored from a checkpoint) instead of being built
    from the clusterings. Everything is validated before anything is changed.
    """
    ffns = ffn_modules(model)
    if len(clusterings) != len(ffns):
        raise MoEError(f"got {len(clusterings)} clusterings for {len(ffns)} layers")
    for i, (ffn, c) in enumerate(zip(ffns, clusterings, strict=True)):
        if isinstance(ffn, MoEFeedForward):
            raise MoEError(f"layer {i} is already sparse; switch to dense first")
        check_experts(ffn.n_local_neurons, c.num_experts)
        check_top_k(top_k, c.num_experts)
        if c.labels.shape != (ffn.n_local_neurons,):
            raise MoEError(
                f"layer {i}: clustering covers {c.labels.numel()} neurons, ffn has {ffn.n_local_neurons}"
            )
    if optimizer is not None:
        check_optimizer(model, optimizer)
    perms = []
    for i, (layer, c) in enumerate(zip(model.layers, clusterings, strict=True)):
        ffn = layer.ffn
        perm = expert_permutation(c.labels)
        permute_ffn_(ffn, perm, optimizer)
        r = routers[i] if routers is not None else build_router(router, c)
        r = r.to(device=ffn.down_proj.weight.device)
        layer.ffn = MoEFeedForward(ffn, c.num_experts, top_k, r, persist_router=persist_router)
        perms.append(perm)
    return perms


def to_dense(
    model: nn.Module,
    *,
    optimizer: Holder | None = None,
    restore: Sequence[torch.Tensor] | None = None,
) -> list[nn.Module]:
    """Put the dense FeedForward back in every MoE layer; returns the routers that were dropped.

    restore: each layer's cumulative layout (original index of the neuron at each position); when given,
    the neurons (and optimizer state) are put back in their original order.
    """
    ffns = ffn_modules(model)
    if restore is not None and len(restore) != len(ffns):
        raise MoEError(f"got {len(restore)} layouts for {len(ffns)} layers")
    if optimizer is not None:
        check_optimizer(model, optimizer)
    routers = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer.ffn, MoEFeedForward):
            routers.append(layer.ffn.router)
            layer.ffn = layer.ffn.dense
        if restore is not None:
            permute_ffn_(layer.ffn, torch.argsort(restore[i]), optimizer)
    return routers


def set_top_k(model: nn.Module, top_k: int) -> None:
    """Change k in every MoE layer (e.g. to measure quality against k/E)."""
    for layer in model.layers:
        if isinstance(layer.ffn, MoEFeedForward):
            layer.ffn.set_top_k(top_k)
