"""The MoE FFN as a view of a dense FFN whose neurons are ordered expert by expert.

Expert e is neurons e·m … (e+1)·m − 1 of the (already permuted) dense weights: no parameter is copied, so
the dense and sparse modes share the same Parameter objects, optimizer state and checkpoint keys. Each
token runs its top-k experts by router score, combined with SSD's straight-through weight

    w = 1 + (p − stopgrad(p)),   p = softmax over the top-k router logits,

which is exactly 1 in the forward (the output is the dense FFN restricted to the chosen neurons; at k = E
it is the dense FFN) while the router still gets the gradient of p. Dropless, no capacity limit.
By default the router reads a detached copy of the input, so the gradient reaching the rest of the model is
exactly that of the dense FFN restricted to the chosen experts (sparse training at k = E is dense
training); `router_input_grad=True` also lets the router's gradient flow into the residual stream, as
FastMoE's gate in the SSD reference code does.
Only the chosen experts are computed, forward and backward (`densa.sparse_moe.grouped`).

Hook points: the module keeps the dense FFN's `hook_pre_act` / `hook_act` objects (they come back with
the dense module) but does not call them: in sparse mode activations exist per expert, not per neuron.
"""

from __future__ import annotations

import torch
from torch import nn

from densa.sparse_moe.errors import MoEError, check_experts, check_top_k
from densa.sparse_moe.grouped import dispatch, grouped_cols_combine, grouped_rows, sort_slots


class MoEFeedForward(nn.Module):
    """Sparse view of `ffn` (a densa FeedForward) with `num_experts` contiguous experts and a router."""

    def __init__(
        self,
        ffn: nn.Module,
        num_experts: int,
        top_k: int,
        router: nn.Module,
        *,
        persist_router: bool = True,
        router_input_grad: bool = False,
    ):
        super().__init__()
        self.gated = ffn.gated
        self.activation = ffn.activation
        self.act_fn = ffn.act_fn
        self.n_local_neurons = ffn.n_local_neurons
        self.expert_size = check_experts(ffn.n_local_neurons, num_experts)
        self.num_experts = num_experts
        self.top_k = check_top_k(top_k, num_experts)
        if self.gated:
            self.gate_up_proj = ffn.gate_up_proj
        else:
            self.up_proj = ffn.up_proj
        self.down_proj = ffn.down_proj
        self.hook_pre_act = ffn.hook_pre_act
        self.hook_act = ffn.hook_act
        self.router = router
        self._dense = (ffn,)  # a tuple hides it from nn.Module: its submodules are already ours
        self.persist_router = persist_router
        self.router_input_grad = router_input_grad
        # Router weights are not part of the model while training with SSD (the callback keeps them), so
        # sparse-mode checkpoints load into a dense model; MoE inference checkpoints do keep them.
        self.register_state_dict_post_hook(_drop_router_keys)
        self.register_load_state_dict_post_hook(_ignore_missing_router)
        self.register_buffer("expert_load", torch.zeros(num_experts, dtype=torch.float64), persistent=False)

    @property
    def dense(self) -> nn.Module:
        """The dense FeedForward this view was made from (same parameters)."""
        return self._dense[0]

    def set_top_k(self, top_k: int) -> None:
        self.top_k = check_top_k(top_k, self.num_experts)

    def pop_load(self) -> torch.Tensor:
        """Tokens routed to each expert since the last call ([E] float64), then reset."""
        load = self.expert_load.clone()
        self.expert_load.zero_()
        return load

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = self.router(flat if self.router_input_grad else flat.detach())
        top, experts = logits.topk(self.top_k, dim=-1)
        p = torch.softmax(top.float(), dim=-1).to(x.dtype)
        out = self.experts_forward(flat, experts, p)
        return out.reshape(shape)

    def experts_forward(self, x: torch.Tensor, experts: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Σ_j w[n, j] · expert_{experts[n, j]}(x[n]), w = 1 + p − stopgrad(p); experts and p are [N, k]."""
        slots = sort_slots(experts, self.num_experts)
        with torch.no_grad():
            self.expert_load += slots.counts.to(self.expert_load.dtype)
        xs = dispatch(x, slots)
        if self.gated:
            gate, up = grouped_rows(xs, self.gate_up_proj.weight, slots, groups=2)
            hidden = self.act_fn(gate) * up
        else:
            (pre,) = grouped_rows(xs, self.up_proj.weight, slots)
            hidden = self.act_fn(pre)
        return grouped_cols_combine(hidden, self.down_proj.weight, p, slots)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, expert_size={self.expert_size}, top_k={self.top_k}"


def _drop_router_keys(module: MoEFeedForward, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    if not module.persist_router:
        for key in [k for k in state_dict if k.startswith(prefix + "router.")]:
            del state_dict[key]


def _ignore_missing_router(module: MoEFeedForward, incompatible) -> None:
    if not module.persist_router:
        router_keys = [k for k in incompatible.missing_keys if ".router." in k or k.startswith("router.")]
        for key in router_keys:
            incompatible.missing_keys.remove(key)


def dense_masked_reference(
    ffn: nn.Module, x: torch.Tensor, experts: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """The same function computed densely: every neuron, then activations scaled by their expert's weight
    (0 if not chosen). For tests and for checking a kernel against the definition."""
    if experts.shape != weight.shape:
        raise MoEError(f"experts {tuple(experts.shape)} and weight {tuple(weight.shape)} differ in shape")
    num_experts = ffn.num_experts
    flat = x.reshape(-1, x.shape[-1])
    scale = torch.zeros(flat.shape[0], num_experts, dtype=weight.dtype, device=x.device)
    scale = scale.scatter_add(1, experts, weight)
    if ffn.gated:
        gate, up = torch.nn.functional.linear(flat, ffn.gate_up_proj.weight).chunk(2, dim=-1)
        hidden = ffn.act_fn(gate) * up
    else:
        hidden = ffn.act_fn(torch.nn.functional.linear(flat, ffn.up_proj.weight))
    hidden = hidden * scale.repeat_interleave(ffn.expert_size, dim=1)
    return torch.nn.functional.linear(hidden, ffn.down_proj.weight).reshape(x.shape)
