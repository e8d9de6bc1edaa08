"""The training engine: DeepSpeed around a densa model. The ONLY module that imports deepspeed.

One `Engine.train_step(micro_batches)` is one optimizer step: forward, `engine.backward` and
`engine.step` per micro-batch (DeepSpeed owns gradient accumulation, DP reduction, ZeRO partitioning,
clipping and mixed precision), then one all-reduce that agrees across ranks on the mean loss, on whether
any rank saw a non-finite loss and on whether any rank was asked to stop.

Decisions worth knowing:
- The optimizer is a torch AdamW object (DeepSpeed's own AdamW JIT-builds a C++ op for minutes on CPU).
  Norms, biases and embeddings get no weight decay.
- The LR scheduler (LambdaLR over `densa.train.schedules`) is stepped here, not by DeepSpeed: DeepSpeed
  skips its scheduler on overflow steps, we want the LR to be a function of the step index only, and its
  state travels in densa's train state so resume restores it exactly.
- Non-finite loss: that micro-batch's loss is multiplied by NaN before backward, so every rank's
  gradients go non-finite together. ZeRO ≥ 1 then skips the update through DeepSpeed's own overflow check
  (bf16 needs `bf16.check_grad_overflow`, set here); under ZeRO-0 the torch optimizer's step is
  suppressed for that one DeepSpeed step.
- Checkpoints use DeepSpeed's save_checkpoint/load_checkpoint (per-rank ZeRO partitions handled for us);
  `densa.train.checkpoint` makes them atomic and adds densa's own state. DeepSpeed unpickles its files
  with weights_only=False: `weights_only_torch_load` makes those loads weights-only (densa.train.safe_load).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import random
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from densa.config.checks import derived_batch
from densa.config.deepspeed_config import build_deepspeed_config
from densa.config.schema import RunConfig
from densa.errors import CheckpointError
from densa.models.loss import causal_lm_loss
from densa.train import safe_load
from densa.train.eval import packed_inputs
from densa.train.safe_load import DEEPSPEED_GLOBALS
from densa.train.schedules import build_lr_lambda

DS_TAG = "deepspeed"  # sub-folder of a densa checkpoint that holds DeepSpeed's files
UNIVERSAL_TAG = "universal"  # sub-folder holding the same state as a DeepSpeed universal checkpoint
Batch = Mapping[str, torch.Tensor]
LossFn = Callable[[Callable[..., torch.Tensor], Batch], torch.Tensor]


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_s: float = 600.0) -> World:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on GPU).

    Without launcher variables this is a world of one (DeepSpeed would otherwise look for MPI). The
    timeout bounds every collective, so a rank blocked on a dead peer fails instead of hanging forever.
    It must bound the groups created later too: DeepSpeed runs its gradient all-reduce on a clone of the
    world (`dist.new_group(ranks)`, no timeout given), and torch gives such groups its 30-minute default,
    not the world's timeout; so the default for new groups is set to the same value here.
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        timeout = timedelta(seconds=timeout_s)
        c10d = dist.distributed_c10d  # what new_group(timeout=None) uses
        c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timeout
        deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed() -> None:
    """Tear down TP groups and the process group, and DeepSpeed's references to them (re-init is possible)."""
    if not dist.is_initialized():
        return
    from densa.models.parallel import destroy_tensor_parallel

    destroy_tensor_parallel()
    deepspeed.comm.destroy_process_group()


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases and embeddings are not weight-decayed."""
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name or "embed" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lm_loss(model: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
    """Default loss: next-token CE, masked by `loss_mask` when the batch has one (SFT); packed SFT
    rows also pass their `position_ids` and `doc_ids` to the model."""
    logits = model(batch["input_ids"], **packed_inputs(batch))
    return causal_lm_loss(logits, batch["labels"], batch.get("loss_mask"))


class _MegatronMPU:
    """megatron-core's parallel_state behind the older Megatron `mpu` API that DeepSpeed calls."""

    def __init__(self) -> None:
        from megatron.core import parallel_state

        self._ps = parallel_state

    def get_model_parallel_world_size(self) -> int:
        return self._ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_rank()

    def get_model_parallel_group(self):
        return self._ps.get_tensor_model_parallel_group()

    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_data_parallel_world_size(self) -> int:
        return self._ps.get_data_parallel_world_size()

    def get_data_parallel_rank(self) -> int:
        return self._ps.get_data_parallel_rank()

    def get_data_parallel_group(self):
        return self._ps.get_data_parallel_group()


@dataclass(frozen=True)
class StepOutput:
    loss: float
    """Mean loss over the step's micro-batches and DP ranks (NaN when the step was skipped)."""
    lr: float
    """Learning rate this step used."""
    grad_norm: float | None
    """Global gradient norm before clipping (None when skipped)."""
    applied: bool
    """False when the update was skipped (non-finite loss or fp16 overflow)."""
    nonfinite: bool
    """Some rank saw a non-finite loss."""
    stop: bool
    """Some rank asked to stop (signal)."""


class Engine:
    """DeepSpeed engine + torch AdamW + LambdaLR for one `RunConfig`."""

    def __init__(self, cfg: RunConfig, model: nn.Module, world: World) -> None:
        self.cfg, self.world = cfg, world
        self.batch = derived_batch(cfg, world.world_size)
        self.zero_stage = cfg.parallel.zero_stage
        self.tp = cfg.parallel.tp
        ds_config = build_deepspeed_config(cfg, world.world_size)
        if cfg.parallel.precision == "bf16":
            ds_config["bf16"].setdefault("check_grad_overflow", True)
        o = cfg.optim
        optimizer = torch.optim.AdamW(
            param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps, foreach=False
        )
        mpu = _MegatronMPU() if self.tp > 1 else None
        self.ds, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config, mpu=mpu
        )
        if self.zero_stage == 3 and hasattr(model, "output_weight"):
            # The LM head reads output_weight outside the module that owns it; ZeRO-3 must gather it.
            deepspeed.zero.register_external_parameter(model, model.output_weight)
        self.torch_optimizer = optimizer
        # per-group settings (no weight decay for norms, ...), put back after a universal load (see `load`)
        self._group_settings = [
            {k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
            for g in optimizer.param_groups
        ]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, build_lr_lambda(cfg.schedule, cfg.train.steps)
        )
        self.device = self.ds.device

    # ------------------------------------------------------------------------------------ properties

    @property
    def module(self) -> nn.Module:
        return self.ds.module

    @property
    def dp_rank(self) -> int:
        return self.world.rank // self.tp

    @property
    def dp_size(self) -> int:
        return self.batch.dp

    @property
    def lr(self) -> float:
        return float(self.torch_optimizer.param_groups[0]["lr"])

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    # ------------------------------------------------------------------------------------ stepping

    def _to_device(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_step(
        self, micro_batches: list[Batch], loss_fn: LossFn = lm_loss, stop: bool = False
    ) -> StepOutput:
        """One optimizer step over this rank's `grad_accum` micro-batches."""
        if len(micro_batches) != self.batch.grad_accum:
            raise ValueError(f"expected {self.batch.grad_accum} micro-batches, got {len(micro_batches)}")
        self.ds.train()
        loss_sum, bad = 0.0, 0
        for i, batch in enumerate(micro_batches):
            loss = loss_fn(self.ds, self._to_device(batch))
            finite = bool(torch.isfinite(loss.detach()).all())
            if finite:
                loss_sum += float(loss.detach())
            else:
                bad += 1
                loss = loss * float("nan")  # poison this rank's grads so every rank skips the update
            self.ds.backward(loss)
            if i < len(micro_batches) - 1:
                self.ds.step()
        stats = torch.tensor([loss_sum / len(micro_batches), float(bad), float(stop)], dtype=torch.float64)
        dist.all_reduce(stats)
        nonfinite = stats[1].item() > 0
        lr = self.lr
        grad_norm = None
        if self.zero_stage == 0 and not nonfinite:
            grad_norm = self._grad_norm()
        if self.zero_stage == 0 and nonfinite:
            with _optimizer_step_skipped(self.torch_optimizer, self.module):
                self.ds.step()  # keeps DeepSpeed's micro-step and boundary counters in sync
        else:
            self.ds.step()
        applied = self.ds.was_step_applied() and not nonfinite
        if self.zero_stage > 0:
            if nonfinite and self.ds.was_step_applied():
                raise RuntimeError("DeepSpeed applied an update although a loss was non-finite")
            norm = self.ds.get_global_grad_norm()
            grad_norm = float(norm) if norm is not None and applied else None
        self.scheduler.step()
        loss = float("nan") if nonfinite else stats[0].item() / self.world.world_size
        return StepOutput(loss, lr, grad_norm, applied, nonfinite, stats[2].item() > 0)

    def _grad_norm(self) -> float:
        """Global grad norm for ZeRO-0 (DeepSpeed clips but does not report it); TP shards summed.

        Per-tensor norms come from one fused `_foreach_norm` pass in the grads' own dtype (no float64
        copies of the gradients); only the per-tensor norms are combined in float64."""
        sharded: list[torch.Tensor] = []
        replicated: list[torch.Tensor] = []
        for p in self.module.parameters():
            if p.grad is not None:
                (sharded if getattr(p, "tensor_model_parallel", False) else replicated).append(
                    p.grad.detach()
                )

        def sum_of_squares(grads: list[torch.Tensor]) -> torch.Tensor:
            if not grads:
                return torch.zeros((), dtype=torch.float64)
            norms = torch.stack(torch._foreach_norm(grads)).double().cpu()
            return norms.pow(2).sum()

        sharded_sq, replicated_sq = sum_of_squares(sharded), sum_of_squares(replicated)
        if self.tp > 1:
            from densa.models.parallel import tp_group

            dist.all_reduce(sharded_sq, group=tp_group())
        return math.sqrt(float(sharded_sq + replicated_sq))

    # ------------------------------------------------------------------------------------ eval

    def eval_losses(self, batches: list[Batch]) -> tuple[float, float]:
        """(sum of token losses, token count) over this rank's `batches`, summed over DP ranks."""
        from densa.train.eval import loss_sums

        self.ds.eval()
        total = loss_sums(self.ds, batches, self.device)
        self.ds.train()
        if self.tp > 1:  # TP replicas hold the same batches: count each DP rank once
            total /= self.tp
        dist.all_reduce(total)
        return total[0].item(), total[1].item()

    # ------------------------------------------------------------------------------------ state

    def save(self, folder: Path) -> None:
        """Collective: DeepSpeed's model + optimizer (+ ZeRO partitions) into `folder`/deepspeed."""
        self.ds.save_checkpoint(str(folder), tag=DS_TAG, save_latest=False)

    def load(self, folder: Path, universal: bool = False) -> None:
        """Load `folder`/deepspeed, or with `universal` the universal checkpoint in `folder`/universal
        (any DP size; see `convert_to_universal`)."""
        tag = UNIVERSAL_TAG if universal else DS_TAG
        config = self.ds._config  # DeepSpeed reads checkpoint.load_universal at load time only
        saved, config.load_universal_checkpoint = config.load_universal_checkpoint, universal
        try:
            with weights_only_torch_load():
                path, _ = self.ds.load_checkpoint(
                    str(folder), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
                )
        finally:
            config.load_universal_checkpoint = saved
        if path is None:
            raise CheckpointError(f"{folder}: DeepSpeed found no checkpoint under {tag}/")
        if universal:
            # DeepSpeed 0.19.8's ZeRO-3 universal load gives every param group group 0's settings (its weight
            # decay) and one shared `step` tensor, which Adam then increments once per group and step
            for group, settings in zip(self.torch_optimizer.param_groups, self._group_settings, strict=True):
                group.update(settings)
            for state in self.torch_optimizer.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].clone()

    def scheduler_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}

    def load_scheduler_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict({**state, "lr_lambdas": [None] * len(self.scheduler.lr_lambdas)})
        for group, lr in zip(self.torch_optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The tp = 1 model state on every rank (ZeRO-3 parameters gathered, TP shards joined)."""
        module = self.module
        if self.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                state = {k: v.detach().clone().cpu() for k, v in module.state_dict().items()}
        else:
            state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        if self.tp > 1:
            from densa.models.parallel import gather_state_dict

            state = gather_state_dict(state, module.config)
        return state

    # ------------------------------------------------------------------------------------ permuting

    def param_state_problem(self, param: nn.Parameter) -> str | None:
        """Why `permute_param_` cannot move `param`'s training state (None when it can)."""
        precision = self.cfg.parallel.precision
        stage = self.zero_stage
        if self.tp != 1 or stage == 3 or precision == "fp16" or (stage == 0 and precision == "bf16"):
            return (
                f"tp {self.tp}, ZeRO-{stage}, {precision}: only ZeRO-0 fp32 and ZeRO-1/2 (fp32 or bf16) at"
                " tp 1 hold every parameter whole with its fp32 master linked to it"
            )
        if self.zero_stage == 0 and all(param is not q for q in self._optimizer_tensors()):
            return "the optimizer does not hold it"
        return None

    def _optimizer_tensors(self) -> list[torch.Tensor]:
        """What the torch optimizer steps: the parameters (ZeRO-0) or this rank's flat fp32 partitions."""
        return [q for group in self.torch_optimizer.param_groups for q in group["params"]]

    @torch.no_grad()
    def permute_param_(self, param: nn.Parameter, index: torch.Tensor, dim: int) -> None:
        """param ← param.index_select(dim, index) in place, and the same for its fp32 master copy and every
        optimizer state tensor of its shape (Adam's exp_avg, exp_avg_sq), wherever they live: the torch
        optimizer's own state (ZeRO-0), or flat ZeRO-1/2 partitions and bf16 masters, read and written
        through DeepSpeed's safe_get/set_full_* (a collective: every rank calls this in the same order)."""
        index = index.to(param.device)
        param.copy_(param.index_select(dim, index))
        state = self.torch_optimizer.state
        if self.zero_stage == 0:  # fp32: the torch optimizer holds the parameter itself
            for value in state.get(param, {}).values():
                if _shaped_like(value, param):
                    value.copy_(value.index_select(dim, index))
            return
        from deepspeed.utils import safe_get_full_fp32_param as get_master
        from deepspeed.utils import safe_get_full_optimizer_state as get_state
        from deepspeed.utils import safe_set_full_fp32_param as set_master
        from deepspeed.utils import safe_set_full_optimizer_state as set_state

        set_master(param, get_master(param).index_select(dim, index))
        flat = self._optimizer_tensors()
        keys = {k for q in flat for k, v in state.get(q, {}).items() if _shaped_like(v, q)}
        if keys:  # DeepSpeed links the per-parameter views of the moments after its first step; link now
            self.ds.optimizer._lazy_init_hp_params_optimizer_state()
        for key in sorted(keys):
            set_state(param, get_state(param, key).index_select(dim, index), key)


def _shaped_like(value: Any, tensor: torch.Tensor) -> bool:
    return torch.is_tensor(value) and value.shape == tensor.shape


@contextlib.contextmanager
def _optimizer_step_skipped(optimizer: torch.optim.Optimizer, module: nn.Module) -> Iterator[None]:
    """ZeRO-0 has no overflow skip of its own: zero the poisoned grads (DeepSpeed's clipping still runs
    over them) and make the torch optimizer's step a no-op for one DeepSpeed step."""
    for p in module.parameters():
        if p.grad is not None:
            p.grad.zero_()
    had_own = "step" in vars(optimizer)  # LR schedulers patch `step` on the instance
    own = vars(optimizer).get("step")
    optimizer.step = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if had_own:
            optimizer.step = own
        else:
            del optimizer.step


# ---------------------------------------------------------------------------------------- process-wide


def all_reduce_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def barrier() -> None:
    dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def device_kind() -> str:
    """ "cuda" or "cpu": what this process trains on."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors, ints, floats and strings (loadable with weights_only)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next float or None)
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`'s output; also the numpy tuple older densa checkpoints stored."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = numpy_state["key"].numpy().astype(np.uint32)
        numpy_state = (
            numpy_state["bit_generator"],
            key,
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def memory_stats() -> dict[str, float]:
    """Resident set size (CPU) and peak accelerator memory, in GiB."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/statm") as f:
            out["mem/rss_gib"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except OSError:
        pass
    if torch.cuda.is_available():
        out["mem/gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


# Dense bf16 peak FLOP/s of common accelerators (vendor datasheets, without sparsity).
_GPU_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}
CPU_FLOPS_PER_CORE = 1e11  # ~AVX2: 2 FMA units x 8 fp32 lanes x 2 flops x ~3 GHz


def peak_flops() -> float:
    """Per-rank peak FLOP/s for MFU: $DENSA_PEAK_FLOPS, else a GPU table, else a CPU estimate."""
    if os.environ.get("DENSA_PEAK_FLOPS"):
        return float(os.environ["DENSA_PEAK_FLOPS"])
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, flops in _GPU_PEAK.items():
            if key in name:
                return flops
        return 100e12
    return torch.get_num_threads() * CPU_FLOPS_PER_CORE


def zero3_checkpoint_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """fp32 weights of a ZeRO-3 checkpoint (partitioned per rank), reassembled by DeepSpeed's zero_to_fp32."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with weights_only_torch_load():
        return dict(get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=DS_TAG))


def convert_to_universal(ds_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """DeepSpeed's ds_to_universal: ZeRO-1/2/3 partitions in `ds_dir` -> one file per parameter and
    optimizer state under `out_dir`/zero (loadable at any DP size), plus the mp_rank model files.

    In-process with one worker (no process pool), every read weights-only; its progress goes to stderr."""
    import argparse
    import sys

    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=str(ds_dir),
        output_folder=str(out_dir),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # densa models carry no Megatron universal_checkpoint_info
    )
    with weights_only_torch_load(), contextlib.redirect_stdout(sys.stderr):
        ds_to_universal.main(args)


def deepspeed_safe_globals() -> list[tuple[Any, str]]:
    """safe_load.DEEPSPEED_GLOBALS as (class, name) pairs for torch.serialization.safe_globals."""
    found = []
    for name in DEEPSPEED_GLOBALS:
        module, _, attr = name.rpartition(".")
        found.append((getattr(importlib.import_module(module), attr), name))
    return found


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Make every torch.load inside the block weights-only with DeepSpeed's allowlist.

    DeepSpeed's checkpoint engines and zero_to_fp32 call `torch.load(..., weights_only=False)`; rather
    than trusting each of its code paths, `torch.load` itself is replaced for the duration of the call
    (a refused file raises densa's CheckpointError out of DeepSpeed)."""
    allow = deepspeed_safe_globals()

    def load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **_):
        return safe_load.load(f, allow=allow, map_location=map_location, mmap=mmap)

    saved, torch.load = torch.load, load
    try:
        yield
    finally:
        torch.load = saved
