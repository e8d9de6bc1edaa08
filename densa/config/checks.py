"""Rules that span recipe sections, collected and raised together.

`cross_section_problems(cfg)` runs everything that needs only the recipe; given a world size it adds
the batch arithmetic for that data-parallel size and the TP/world-size fit; given a device it adds
device rules (fp16 needs a GPU). `load_recipe` runs the recipe-only rules; the trainer and `densa
launch` call `validate(cfg, world_size, device=...)` once the world is known.
"""

from __future__ import annotations

from typing import NamedTuple

from densa.config.errors import ConfigError
from densa.config.schema import RunConfig
from densa.models.config import ACTIVATIONS, ROPE_SCALING_TYPES

# String fields with a closed set of values (dotted path, list indices dropped). The loader matches
# them case-insensitively and suggests the closest; `cross_section_problems` re-checks them for configs
# built in Python.
CHOICES: dict[str, tuple[str, ...]] = {
    "schedule.kind": ("constant", "linear", "cosine", "wsd"),
    "schedule.decay_shape": ("linear", "cosine", "exp", "1-sqrt"),
    "data.format": ("pretrain", "sft"),
    "parallel.precision": ("fp32", "bf16", "fp16"),
    "parallel.launcher": ("deepspeed", "torchrun"),
    "model.activation": ACTIVATIONS,
    "model.rope_scaling.type": ROPE_SCALING_TYPES,
}


class Problem(NamedTuple):
    path: str
    """Dotted recipe path the problem is about ("" for the recipe as a whole)."""
    message: str


class DerivedBatch(NamedTuple):
    dp: int
    """Data-parallel size: world_size / tp."""
    grad_accum: int
    """Micro-batches per rank per optimizer step."""
    micro_batch: int
    """Sequences per forward/backward per rank."""
    global_samples: int
    """Sequences per optimizer step across all ranks (DeepSpeed's train_batch_size)."""


def _batch_problems(cfg: RunConfig, world_size: int | None) -> list[Problem]:
    tp, seq, micro, tokens = cfg.parallel.tp, cfg.data.seq_len, cfg.batch.micro_batch, cfg.batch.global_tokens
    if min(tp, seq, micro, tokens) <= 0:
        return []  # reported by the positivity rules
    if world_size is not None:
        if world_size <= 0:
            return [Problem("", f"world size must be > 0, got {world_size}")]
        if world_size % tp:
            return [Problem("parallel.tp", f"world size {world_size} is not divisible by tp={tp}")]
    dp = 1 if world_size is None else world_size // tp
    unit = seq * micro * dp
    if tokens % unit == 0:
        return []
    lower, upper = tokens // unit * unit, (tokens // unit + 1) * unit
    nearest = f"{lower} or {upper}" if lower else f"{upper}"
    return [
        Problem(
            "batch.global_tokens",
            f"{tokens} is not divisible by data.seq_len × batch.micro_batch × dp"
            f" = {seq} × {micro} × {dp} = {unit} (nearest valid: {nearest})",
        )
    ]


def derived_batch(cfg: RunConfig, world_size: int) -> DerivedBatch:
    """Data-parallel size, gradient accumulation and global batch in sequences for `world_size` ranks."""
    problems = _batch_problems(cfg, world_size)
    if problems:
        raise ConfigError([f"{p.path}: {p.message}" if p.path else p.message for p in problems])
    dp = world_size // cfg.parallel.tp
    global_samples = cfg.batch.global_tokens // cfg.data.seq_len
    return DerivedBatch(
        dp, global_samples // (cfg.batch.micro_batch * dp), cfg.batch.micro_batch, global_samples
    )


def _schedule_problems(cfg: RunConfig) -> list[Problem]:
    s, steps = cfg.schedule, cfg.train.steps
    out = []
    if s.warmup_steps < 0:
        out.append(Problem("schedule.warmup_steps", f"must be >= 0, got {s.warmup_steps}"))
    if not 0.0 <= s.min_lr_ratio <= 1.0:
        out.append(Problem("schedule.min_lr_ratio", f"must be in [0, 1], got {s.min_lr_ratio}"))
    if s.kind != "wsd" and s.decay_steps is not None:
        out.append(
            Problem("schedule.decay_steps", f"only used when schedule.kind is wsd (kind is {s.kind!r})")
        )
    if s.kind == "wsd":
        if s.decay_steps is not None and s.decay_steps <= 0:
            out.append(Problem("schedule.decay_steps", f"must be > 0, got {s.decay_steps}"))
        if not 0.0 < s.decay_fraction <= 1.0:
            out.append(Problem("schedule.decay_fraction", f"must be in (0, 1], got {s.decay_fraction}"))
        if s.decay_shape == "exp" and s.min_lr_ratio <= 0:
            out.append(
                Problem("schedule.min_lr_ratio", "exp decay interpolates geometrically and needs a ratio > 0")
            )
        decay = s.decay_length(steps)
        if steps > 0 and s.warmup_steps + decay > steps:
            out.append(
                Problem(
                    "schedule.warmup_steps",
                    f"warmup ({s.warmup_steps}) + decay ({decay}) = {s.warmup_steps + decay}"
                    f" exceeds train.steps ({steps})",
                )
            )
    elif steps > 0 and s.warmup_steps > steps:
        out.append(
            Problem("schedule.warmup_steps", f"warmup ({s.warmup_steps}) exceeds train.steps ({steps})")
        )
    return out


def _data_problems(cfg: RunConfig, training: bool) -> list[Problem]:
    d, out = cfg.data, []
    if training and not d.train:
        out.append(Problem("data.train", "no training datasets (add at least one {path: PREFIX})"))
    if cfg.eval.interval > 0 and not d.valid:
        out.append(Problem("eval.interval", f"is {cfg.eval.interval} but data.valid is empty"))
    for name, sources in (("train", d.train), ("valid", d.valid)):
        for i, src in enumerate(sources):
            where = f"data.{name}.{i}"
            if src.weight <= 0:
                out.append(Problem(f"{where}.weight", f"must be > 0, got {src.weight}"))
            if not src.path:
                out.append(Problem(f"{where}.path", "is empty"))
            elif d.format == "sft" and not src.path.endswith(".jsonl"):
                out.append(
                    Problem(f"{where}.path", f"data.format is sft, expected a .jsonl file, got {src.path!r}")
                )
            elif d.format == "pretrain" and src.path.endswith((".bin", ".idx", ".json", ".jsonl")):
                out.append(
                    Problem(
                        f"{where}.path",
                        f"give the dataset prefix without extension (data.format is pretrain): {src.path!r}",
                    )
                )
    return out


# (dotted path, minimum, inclusive) for the numbers that must be positive or non-negative.
_BOUNDS = (
    ("data.seq_len", 1),
    ("batch.global_tokens", 1),
    ("batch.micro_batch", 1),
    ("train.steps", 1),
    ("train.max_bad_steps", 0),
    ("parallel.tp", 1),
    ("checkpoint.interval", 1),
    ("checkpoint.keep_last", 1),
    ("logging.log_interval", 1),
    ("eval.interval", 0),
    ("eval.max_batches", 1),
    ("optim.weight_decay", 0),
    ("optim.grad_clip", 0),
    ("run.seed", 0),
)


def _get(cfg: object, path: str) -> object:
    for part in path.split("."):
        cfg = getattr(cfg, part, None)
    return cfg


def cross_section_problems(
    cfg: RunConfig, world_size: int | None = None, *, device: str | None = None, training: bool = True
) -> list[Problem]:
    """Every rule violated by `cfg` (and, if given, by running it on `world_size` ranks of `device`)."""
    out: list[Problem] = []
    for path, choices in CHOICES.items():
        value = _get(cfg, path)
        if value is not None and value not in choices:
            out.append(Problem(path, f"{value!r} is not one of {', '.join(choices)}"))
    for path, low in _BOUNDS:
        value = _get(cfg, path)
        if isinstance(value, (int, float)) and value < low:
            out.append(Problem(path, f"must be {'> 0' if low == 1 else '>= 0'}, got {value}"))
    if cfg.optim.lr <= 0:
        out.append(Problem("optim.lr", f"must be > 0, got {cfg.optim.lr}"))
    if cfg.optim.eps <= 0:
        out.append(Problem("optim.eps", f"must be > 0, got {cfg.optim.eps}"))
    for i, beta in enumerate(cfg.optim.betas):
        if not 0.0 <= beta < 1.0:
            out.append(Problem(f"optim.betas.{i}", f"must be in [0, 1), got {beta}"))
    if cfg.parallel.zero_stage not in (0, 1, 2, 3):
        out.append(Problem("parallel.zero_stage", f"must be 0, 1, 2 or 3, got {cfg.parallel.zero_stage}"))
    tp = cfg.parallel.tp
    if tp > 1:
        for name in ("n_heads", "n_kv_heads", "ffn_dim"):
            value = getattr(cfg.model, name)
            if value % tp:
                out.append(Problem(f"model.{name}", f"{value} is not divisible by parallel.tp={tp}"))
    if device is not None and device != "cuda" and cfg.parallel.precision == "fp16":
        out.append(
            Problem("parallel.precision", f"fp16 needs a GPU (this run is on {device}); use bf16 or fp32")
        )
    if not cfg.run.name:
        out.append(Problem("run.name", "is empty"))
    if not cfg.checkpoint.resume:
        out.append(Problem("checkpoint.resume", "is empty (use auto, none or a checkpoint path)"))
    for i, pattern in enumerate(cfg.init.freeze):
        if not pattern:
            out.append(Problem(f"init.freeze.{i}", "is an empty pattern"))
    out += _schedule_problems(cfg)
    out += _data_problems(cfg, training)
    out += _batch_problems(cfg, world_size)
    if not out:  # the generated DeepSpeed config is only meaningful for an otherwise valid recipe
        from densa.config.deepspeed_config import deepspeed_problems

        out += deepspeed_problems(cfg, world_size)
    return out


def validate(
    cfg: RunConfig,
    world_size: int | None = None,
    *,
    device: str | None = None,
    training: bool = True,
    source: str = "recipe",
) -> None:
    """Raise one `ConfigError` listing every problem `cross_section_problems` finds."""
    problems = cross_section_problems(cfg, world_size, device=device, training=training)
    if problems:
        raise ConfigError(
            [f"{source}: {p.path}: {p.message}" if p.path else f"{source}: {p.message}" for p in problems]
        )
