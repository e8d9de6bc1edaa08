"""The DeepSpeed config, generated from the recipe (a pure dict: nothing here imports deepspeed).

Batch sizes, clipping, ZeRO stage and precision come from the recipe only, so they can never disagree
with what the trainer computes. The recipe's `deepspeed:` mapping is deep-merged on top: it may add keys
(e.g. `zero_optimization.overlap_comm`, `fp16.initial_scale_power`) but a value that contradicts a
generated one is a `ConfigError` naming the key, both values and the recipe field to change instead.
"""

from __future__ import annotations

import copy
from typing import Any

from densa.config.checks import Problem, derived_batch
from densa.config.errors import ConfigError
from densa.config.schema import RunConfig

# Generated keys (dotted) → the recipe field that decides them; these may not be contradicted.
_OWNERS = {
    "train_batch_size": "batch.global_tokens / data.seq_len",
    "train_micro_batch_size_per_gpu": "batch.micro_batch",
    "gradient_accumulation_steps": "batch.global_tokens, batch.micro_batch and the world size",
    "gradient_clipping": "optim.grad_clip",
    "zero_optimization.stage": "parallel.zero_stage",
    "bf16.enabled": "parallel.precision",
    "fp16.enabled": "parallel.precision",
    "fp16.loss_scale": "parallel.precision (fp16 always uses dynamic loss scaling)",
}
_BATCH_KEYS = ("train_batch_size", "gradient_accumulation_steps")  # depend on the world size
# Owned by the trainer, which builds the optimizer and LR schedule from the optim and schedule sections.
_RESERVED = {"optimizer": "optim", "scheduler": "schedule"}


def _generated(cfg: RunConfig, world_size: int) -> dict[str, Any]:
    batch = derived_batch(cfg, world_size)
    precision = cfg.parallel.precision
    fp16: dict[str, Any] = {"enabled": precision == "fp16"}
    if precision == "fp16":
        fp16["loss_scale"] = 0  # 0 = dynamic loss scaling
    return {
        "train_batch_size": batch.global_samples,
        "train_micro_batch_size_per_gpu": batch.micro_batch,
        "gradient_accumulation_steps": batch.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": fp16,
        # Defaults the recipe may change: densa logs its own metrics, so DeepSpeed's are silenced.
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


def _merge(generated: dict[str, Any], extra: dict[str, Any], prefix: str, out: list[Problem]) -> None:
    for key, value in extra.items():
        path = f"{prefix}{key}"
        if not prefix and key in _RESERVED:
            section = _RESERVED[key]
            out.append(
                Problem(
                    f"deepspeed.{key}",
                    f"is built by the trainer from the {section} section; set {section}.* instead",
                )
            )
        elif isinstance(value, dict) and isinstance(generated.get(key), dict):
            _merge(generated[key], value, f"{path}.", out)
        elif isinstance(generated.get(key), dict):
            out.append(
                Problem(f"deepspeed.{path}", f"expected a mapping (it holds generated keys), got {value!r}")
            )
        elif key in generated and path in _OWNERS and not _same(value, generated[key]):
            out.append(
                Problem(
                    f"deepspeed.{path}",
                    f"{value!r} contradicts the generated value {generated[key]!r} (set by {_OWNERS[path]})",
                )
            )
        else:
            generated[key] = copy.deepcopy(value)


def _same(a: Any, b: Any) -> bool:
    # bool and int are different things in a config (`enabled: 1` is not `enabled: true`)
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _build(cfg: RunConfig, world_size: int, skip_batch: bool) -> tuple[dict[str, Any], list[Problem]]:
    generated = _generated(cfg, world_size)
    extra = dict(cfg.deepspeed)
    if skip_batch:  # without a world size the batch keys cannot be compared yet
        extra = {k: v for k, v in extra.items() if k not in _BATCH_KEYS}
    problems: list[Problem] = []
    _merge(generated, extra, "", problems)
    return generated, problems


def deepspeed_problems(cfg: RunConfig, world_size: int | None) -> list[Problem]:
    """Contradictions between the recipe's `deepspeed:` mapping and the generated config."""
    if world_size is None:
        return _build(cfg, cfg.parallel.tp, skip_batch=True)[1]
    return _build(cfg, world_size, skip_batch=False)[1]


def build_deepspeed_config(cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """The config dict for `deepspeed.initialize(config=...)` when running on `world_size` ranks."""
    config, problems = _build(cfg, world_size, skip_batch=False)
    if problems:
        raise ConfigError([f"{p.path}: {p.message}" for p in problems])
    return config
