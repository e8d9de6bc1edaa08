"""Tensor parallelism on megatron-core's parallel layers; the only module that imports megatron.

Megatron-core's `ColumnParallelLinear` / `RowParallelLinear` and `parallel_state` run on CPU with gloo
when weights are allocated on CPU (`use_cpu_initialization`) and megatron does not initialise them
(`perform_initialization=False`): `Transformer.reset_parameters` owns initialisation, and at tp > 1 it
calls `init_from_full`, which draws the tp = 1 weights and keeps this rank's shard, as megatron's own CPU
initialisation does. Nothing here needs megatron's CUDA RNG tracker (`model_parallel_cuda_manual_seed`):
the tracker only matters for dropout inside TP regions and for GPU-side init, and the decoder has neither.

State-dict layout: a rank's shard of a fused projection is the concatenation of its local pieces, so
`qkv_proj` holds [q rows of its heads; k rows of its kv heads; v rows of its kv heads] and `gate_up_proj`
holds [gate rows of its neurons; up rows of its neurons]. `shard_state_dict` / `gather_state_dict` map
between that and the tp = 1 layout; keys are identical at every tp size.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from densa.models.config import ModelConfig

with warnings.catch_warnings():
    # megatron-core warns on import that Transformer Engine / Apex are absent; we use neither.
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|apex).*")
    warnings.filterwarnings("ignore", message=".*torch.jit.script_method.*", category=DeprecationWarning)
    from megatron.core import parallel_state
    from megatron.core.model_parallel_config import ModelParallelConfig
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.tensor_parallel.layers import (
        linear_with_grad_accumulation_and_async_allreduce,
        set_tensor_model_parallel_attributes,
    )

if TYPE_CHECKING:
    from densa.models.transformer import Transformer

__all__ = [
    "column_parallel_linear",
    "deepspeed_mpu",
    "destroy_tensor_parallel",
    "gather_state_dict",
    "init_from_full",
    "init_tensor_parallel",
    "row_parallel_linear",
    "shard_state_dict",
    "tp_group",
    "tp_rank",
    "tp_world_size",
]


# ---------------------------------------------------------------------------------------------- groups


def init_tensor_parallel(tp_size: int) -> None:
    """Create megatron's TP (and DP) groups on the already initialised default process group.

    Consecutive ranks form a TP group (megatron's order), so world_size must be a multiple of tp_size.
    Calling it again with the same tp_size is a no-op; a different size needs `destroy_tensor_parallel`.
    """
    if not dist.is_initialized():
        raise RuntimeError("init_tensor_parallel needs torch.distributed initialised first (gloo or nccl)")
    world = dist.get_world_size()
    if tp_size < 1 or world % tp_size:
        raise ValueError(f"tp_size ({tp_size}) must divide the world size ({world})")
    if parallel_state.model_parallel_is_initialized():
        current = parallel_state.get_tensor_model_parallel_world_size()
        if current != tp_size:
            raise RuntimeError(f"tensor parallelism is already initialised with tp={current}, not {tp_size}")
        return
    if dist.get_backend() == "gloo":
        # Megatron's one-time hint to set CUDA_DEVICE_MAX_CONNECTIONS is about GPU streams.
        linear_with_grad_accumulation_and_async_allreduce.warned = True
    # No extra gloo groups: on CPU the default group already is gloo, and each group costs a rendezvous.
    # Megatron gives its groups an explicit timeout (30 min unless told): use torch's default for new
    # groups instead, which densa.train.engine.init_distributed sets to the job's collective timeout.
    timeout = dist.distributed_c10d._get_default_timeout(dist.get_backend())
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp_size,
        create_gloo_process_groups=False,
        distributed_timeout_minutes=timeout.total_seconds() / 60,
    )


def destroy_tensor_parallel() -> None:
    parallel_state.destroy_model_parallel()


def tp_world_size() -> int:
    """TP size, or 1 when tensor parallelism was not initialised."""
    if not parallel_state.model_parallel_is_initialized():
        return 1
    return parallel_state.get_tensor_model_parallel_world_size()


def tp_rank() -> int:
    if not parallel_state.model_parallel_is_initialized():
        return 0
    return parallel_state.get_tensor_model_parallel_rank()


def tp_group() -> dist.ProcessGroup:
    _require_initialized()
    return parallel_state.get_tensor_model_parallel_group()


def deepspeed_mpu() -> object:
    """The model-parallel unit for `deepspeed.initialize(mpu=...)`: megatron's parallel_state."""
    _require_initialized()
    return parallel_state


def _require_initialized() -> None:
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("tensor parallelism is not initialised: call init_tensor_parallel(tp_size) first")


# ---------------------------------------------------------------------------------------------- layers


def _parallel_config() -> ModelParallelConfig:
    return ModelParallelConfig(
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        use_cpu_initialization=True,
        perform_initialization=False,
        params_dtype=torch.float32,
        sequence_parallel=False,
    )


class _TensorOnly:
    """Mixin: forward returns a tensor; the state dict holds `weight` (and `bias`) only, like nn.Linear."""

    # megatron's layers add an always-None `_extra_state` entry (TE compatibility) and a load pre-hook
    # that inserts it into the caller's dict; restoring nn.Module's defaults keeps keys equal to tp = 1.
    get_extra_state = nn.Module.get_extra_state
    set_extra_state = nn.Module.set_extra_state

    def _drop_extra_state_hook(self) -> None:
        self._load_state_dict_pre_hooks.clear()  # type: ignore[attr-defined]


class _ColumnParallel(_TensorOnly, ColumnParallelLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out, _ = super().forward(x)
        return out


class _RowParallel(_TensorOnly, RowParallelLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out, _ = super().forward(x)
        return out


def _mark_sharded(weight: torch.Tensor, partition_dim: int) -> None:
    """Megatron tags weights `tensor_model_parallel` only inside the init we skip; grad-norm code
    (DeepSpeed's clipping, our engine) needs the tag to sum shards instead of counting replicas once."""
    set_tensor_model_parallel_attributes(weight, True, partition_dim, 1)


def _no_init(_: torch.Tensor) -> None:
    """Megatron requires an init_method; initialisation is the model's job (see module docstring)."""


def column_parallel_linear(in_features: int, out_features: int, *, bias: bool) -> nn.Module:
    """Rank-local y = x W_rᵀ (+ b_r) with W_r = rows of W; input replicated, output stays sharded."""
    _require_initialized()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if out_features % tp:
        raise ValueError(f"column-parallel out_features ({out_features}) must be divisible by tp ({tp})")
    layer = _ColumnParallel(
        in_features,
        out_features,
        config=_parallel_config(),
        init_method=_no_init,
        bias=bias,
        gather_output=False,
    )
    layer._drop_extra_state_hook()
    _mark_sharded(layer.weight, partition_dim=0)
    return layer


def row_parallel_linear(in_features: int, out_features: int, *, bias: bool) -> nn.Module:
    """y = Σ_r x_r W_rᵀ (+ b) with W_r = columns of W; input sharded, output all-reduced (replicated)."""
    _require_initialized()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if in_features % tp:
        raise ValueError(f"row-parallel in_features ({in_features}) must be divisible by tp ({tp})")
    layer = _RowParallel(
        in_features,
        out_features,
        config=_parallel_config(),
        init_method=_no_init,
        bias=bias,
        input_is_parallel=True,
        skip_bias_add=False,
    )
    layer._drop_extra_state_hook()
    _mark_sharded(layer.weight, partition_dim=1)
    return layer


# ---------------------------------------------------------------------------------------------- sharding


def _shard_spec(key: str, config: ModelConfig) -> tuple[int, list[int]] | None:
    """(split dim, sizes of the fused sections along it) for a sharded key; None if replicated."""
    q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    if key.endswith(("attn.qkv_proj.weight", "attn.qkv_proj.bias")):
        return 0, [q, kv, kv]
    if key.endswith("ffn.gate_up_proj.weight"):
        return 0, [config.ffn_dim, config.ffn_dim]
    if key.endswith("ffn.up_proj.weight"):
        return 0, [config.ffn_dim]
    if key.endswith("attn.o_proj.weight"):
        return 1, [q]
    if key.endswith("ffn.down_proj.weight"):
        return 1, [config.ffn_dim]
    return None  # embeddings, norms, lm_head, o_proj/down_proj biases (none today): replicated


def _check_divisible(config: ModelConfig, tp_size: int) -> None:
    for name in ("n_heads", "n_kv_heads", "ffn_dim"):
        if getattr(config, name) % tp_size:
            raise ValueError(f"{name} ({getattr(config, name)}) must be divisible by tp ({tp_size})")


def shard_state_dict(
    full_sd: dict[str, torch.Tensor], config: ModelConfig, tp_rank: int, tp_size: int
) -> dict[str, torch.Tensor]:
    """Map a tp = 1 state dict (or gradient dict) to rank `tp_rank`'s shard; replicated entries are shared."""
    _check_divisible(config, tp_size)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in full_sd.items():
        spec = _shard_spec(key, config)
        if spec is None or tp_size == 1:
            out[key] = tensor
            continue
        dim, sizes = spec
        if tensor.shape[dim] != sum(sizes):
            raise ValueError(f"{key}: size {tensor.shape[dim]} along dim {dim}, expected {sum(sizes)}")
        pieces = [section.chunk(tp_size, dim)[tp_rank] for section in tensor.split(sizes, dim)]
        out[key] = torch.cat(pieces, dim).contiguous()
    return out


def _unshard(shards: list[torch.Tensor], dim: int, sizes: list[int]) -> torch.Tensor:
    """Inverse of the per-key slicing in shard_state_dict, given every rank's shard in rank order."""
    tp_size = len(shards)
    local = [s // tp_size for s in sizes]
    per_rank = [shard.split(local, dim) for shard in shards]
    sections = [torch.cat([per_rank[r][i] for r in range(tp_size)], dim) for i in range(len(sizes))]
    return torch.cat(sections, dim)


def join_shards(shards: list[dict[str, torch.Tensor]], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The tp = 1 state dict from every TP rank's state dict in rank order (offline: no process group)."""
    tp_size = len(shards)
    _check_divisible(config, tp_size)
    keys = list(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if list(shard) != keys:
            raise ValueError(f"TP rank {rank} holds other keys than rank 0")
    full = {}
    for key in keys:
        spec = _shard_spec(key, config)
        full[key] = (
            shards[0][key] if spec is None or tp_size == 1 else _unshard([s[key] for s in shards], *spec)
        )
    return full


def gather_state_dict(
    local_sd: dict[str, torch.Tensor],
    config: ModelConfig,
    *,
    group: dist.ProcessGroup | None = None,
    dst: int | None = None,
) -> dict[str, torch.Tensor] | None:
    """All-gather a rank's shard (state dict or gradient dict) into the tp = 1 layout.

    Collective over `group` (default: megatron's TP group): every rank must call it with the same keys.
    Returns the full dict on every rank, or only on group rank `dst` (None elsewhere) when `dst` is given.
    """
    group = group if group is not None else tp_group()
    tp_size = dist.get_world_size(group)
    _check_divisible(config, tp_size)
    full: dict[str, torch.Tensor] = {}
    for key, tensor in local_sd.items():
        spec = _shard_spec(key, config)
        if spec is None or tp_size == 1:
            full[key] = tensor.detach().clone()
            continue
        tensor = tensor.detach().contiguous()
        shards = [torch.empty_like(tensor) for _ in range(tp_size)]
        dist.all_gather(
            shards, tensor, group=group
        )  # gloo has all_gather for every dtype; gather is patchier
        full[key] = _unshard(shards, *spec)
    if dst is not None and dist.get_rank(group) != dst:
        return None
    return full


@torch.no_grad()
def init_from_full(model: Transformer) -> None:
    """Initialise a tp > 1 model as tp = 1 would be, then keep this rank's shard.

    Drawing each rank's shard with `normal_` would give identical shards on identically seeded ranks,
    a symmetry training never breaks. Every rank of a TP group must hold the same RNG state here.
    Costs one tp = 1 copy of the model in CPU memory for the duration of the call.
    """
    from densa.models.transformer import Transformer

    full = Transformer(model.config, tp_size=1).state_dict()
    model.load_state_dict(shard_state_dict(full, model.config, tp_rank(), model.tp_size))
