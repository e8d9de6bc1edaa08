"""Rules that span recipe sections, collected and raised together.

`cross_section_problems(cfg)` runs everything that needs only the recipe; given a world size it adds
the batch arithmetic for that data-parallel size and the TP/world-size fit, and (the run being about to
start) that `export.hf_dir` is not a folder densa did not write; given a device it adds device rules
(fp16 needs a GPU). `load_recipe` runs the recipe-only rules; the trainer and `densa
launch` call `validate(cfg, world_size, device=...)` once the world is known.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import NamedTuple

from densa.config.errors import ConfigError
from densa.config.schema import RunConfig
from densa.models.config import ACTIVATIONS, ROPE_SCALING_TYPES

# String fields of ModelConfig with a closed set of values (densa.models keeps them as tuples). The
# sections' own choice fields are `Literal[...]` types instead; the loader reads both, matching
# case-insensitively and suggesting the closest, and `cross_section_problems` re-checks both for configs
# built in Python.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.activation": ACTIVATIONS,
    "model.rope_scaling.type": ROPE_SCALING_TYPES,
}


def literal_choices(tp: object) -> tuple[str, ...] | None:
    """The allowed values of a `Literal[...]` type (None for any other type)."""
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def _literal_problems(obj: object, prefix: str) -> list[Problem]:
    """Literal-typed fields whose value is not one of the choices, through nested sections."""
    out: list[Problem] = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value, path = getattr(obj, f.name), f"{prefix}{f.name}"
        choices = literal_choices(hints[f.name])
        if choices is not None and value not in choices:
            out.append(Problem(path, f"{value!r} is not one of {', '.join(choices)}"))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            out += _literal_problems(value, f"{path}.")
    return out


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
    task_rows = cfg.retaining_heads.enabled and cfg.retaining_heads.task != "none"  # generated, not read
    task_rows = task_rows or cfg.plugin.enabled  # map-tuning rows come from plugin.kb / plugin.examples
    if training and not d.train and not task_rows:
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
            elif d.format == "sft" and not _sft_path_ok(src.path):
                out.append(
                    Problem(
                        f"{where}.path",
                        "data.format is sft, expected a .jsonl or .parquet file or an existing datasets "
                        f"or hub cache folder, got {src.path!r}",
                    )
                )
            elif d.format == "pretrain" and src.path.endswith((".bin", ".idx", ".json", ".jsonl")):
                out.append(
                    Problem(
                        f"{where}.path",
                        f"give the dataset prefix without extension (data.format is pretrain): {src.path!r}",
                    )
                )
    if d.pack and d.format != "sft":
        out.append(
            Problem("data.pack", "packs SFT examples (format sft); pretraining data is packed already")
        )
    if d.pack and cfg.retaining_heads.enabled:  # heads_loss runs the model without the packing inputs
        out.append(Problem("data.pack", "cannot be combined with retaining_heads.enabled"))
    return out


def _sft_path_ok(path: str) -> bool:
    """A JSONL/parquet file name, or a folder that exists (a datasets or hub cache folder)."""
    if path.endswith((".jsonl", ".json", ".ndjson", ".parquet")):
        return True
    return Path(path).is_dir()


def _ssd_problems(cfg: RunConfig) -> list[Problem]:
    """The SSD rules that need the rest of the recipe; single-field rules are SSDConfig.problems()."""
    s, p = cfg.ssd, cfg.parallel
    out = [Problem(f"ssd.{name}", message) for name, message in s.problems()]
    if s.num_experts >= 1 and cfg.model.ffn_dim % s.num_experts:
        out.append(
            Problem("ssd.num_experts", f"{s.num_experts} does not divide model.ffn_dim ({cfg.model.ffn_dim})")
        )
    # The switch permutes each FFN weight with its Adam moments and fp32 master (densa.train.engine.Engine
    # .permute_param_): that needs whole weights on every rank and DeepSpeed's per-parameter master links.
    if p.tp != 1:
        out.append(
            Problem(
                "parallel.tp",
                f"ssd.enabled needs tp = 1, got {p.tp}: a TP rank holds 1/tp of every FFN's neurons, and SSD"
                " clusters and routes over all of a layer's neurons (experts split across TP ranks are not"
                " implemented)",
            )
        )
    if p.zero_stage == 3:
        out.append(
            Problem(
                "parallel.zero_stage",
                "ssd.enabled needs ZeRO stage 0, 1 or 2, got 3: ZeRO-3 partitions the weights themselves,"
                " which SSD clusters and permutes whole",
            )
        )
    if p.precision == "fp16":
        out.append(Problem("parallel.precision", "ssd.enabled needs fp32 or bf16, got fp16 (untested)"))
    elif p.precision == "bf16" and p.zero_stage == 0:
        out.append(
            Problem(
                "parallel.precision",
                "ssd.enabled with bf16 needs parallel.zero_stage 1 or 2, got 0: DeepSpeed's ZeRO-0 bf16"
                " optimizer keeps its fp32 masters in flat buffers with no per-parameter link that SSD could"
                " permute",
            )
        )
    for i, step in enumerate(s.switch_steps):
        if not 1 <= step <= cfg.train.steps:
            out.append(
                Problem(f"ssd.switch_steps.{i}", f"{step} is outside 1..train.steps ({cfg.train.steps})")
            )
    if s.interval == 0 and not s.switch_steps:
        out.append(
            Problem("ssd.interval", "is 0 and ssd.switch_steps is empty: the model would never switch")
        )
    return out


def _sparsity_problems(cfg: RunConfig) -> list[Problem]:
    s, ps, out = cfg.sparsity, cfg.sparsity.prosparse, []
    if s.track_cett is not None:
        if not 0.0 <= s.track_cett <= 1.0:
            out.append(Problem("sparsity.track_cett", f"must be in [0, 1], got {s.track_cett}"))
        if s.track_threshold != 0:
            out.append(
                Problem("sparsity.track_threshold", "give either track_threshold or track_cett, not both")
            )
    if s.track_interval > 0 and cfg.parallel.tp != 1:  # neuron norms need the whole W_down
        out.append(
            Problem("sparsity.track_interval", f"tracking needs parallel.tp = 1, got {cfg.parallel.tp}")
        )
    if not ps.enabled:
        return out
    if cfg.parallel.tp != 1:
        out.append(Problem("sparsity.prosparse.enabled", f"needs parallel.tp = 1, got {cfg.parallel.tp}"))
    if cfg.parallel.precision == "fp16" and ps.l1_stages:  # the injected L1 gradient would skip loss scaling
        out.append(
            Problem("sparsity.prosparse.l1_stages", "the L1 gradient is not loss-scaled: use bf16 or fp32")
        )
    if ps.fatrelu_threshold < 0:
        out.append(
            Problem("sparsity.prosparse.fatrelu_threshold", f"must be >= 0, got {ps.fatrelu_threshold}")
        )
    elif ps.fatrelu_threshold and ps.activation != "fatrelu":
        out.append(
            Problem(
                "sparsity.prosparse.fatrelu_threshold",
                f"only used with activation: fatrelu (is {ps.activation})",
            )
        )
    prev = 0
    for i, (end, lam) in enumerate(ps.l1_stages):
        if end <= prev:
            out.append(Problem(f"sparsity.prosparse.l1_stages.{i}", f"end step {end} must exceed {prev}"))
        if lam < 0:
            out.append(Problem(f"sparsity.prosparse.l1_stages.{i}", f"lambda must be >= 0, got {lam}"))
        prev = max(prev, end)
    if cfg.ssd.enabled:  # sparse (MoE) mode bypasses hook_act: the L1 and the ReLU swap would not apply
        out.append(Problem("sparsity.prosparse.enabled", "cannot be combined with ssd.enabled"))
    return out


def _heads_problems(cfg: RunConfig, training: bool) -> list[Problem]:
    out = []
    if not cfg.init.from_path:
        out.append(Problem("init.from_path", "retaining_heads.enabled needs a trained backbone to load"))
    if cfg.parallel.tp != 1:
        out.append(Problem("parallel.tp", f"retaining_heads.enabled needs tp = 1, got {cfg.parallel.tp}"))
    rh = cfg.retaining_heads
    if rh.answer_tokens >= cfg.data.seq_len:
        out.append(Problem("retaining_heads.answer_tokens", f"must be < data.seq_len ({cfg.data.seq_len})"))
    if training and rh.task == "none" and cfg.data.format == "pretrain" and rh.answer_tokens == 0:
        out.append(  # a pretraining row's loss_mask is all ones: it marks no answer span
            Problem(
                "retaining_heads.answer_tokens",
                "token-level data (data.format pretrain) marks no answer: set how many final tokens of each"
                " row are the answer (e.g. 64), or use sft data or retaining_heads.task",
            )
        )
    if cfg.export.hf_dir:  # the backbone does not change; the heads go to retaining_heads.out_file
        out.append(
            Problem("export.hf_dir", "a retaining-head run writes retaining_heads.out_file, not an HF folder")
        )
    if not cfg.retaining_heads.out_file:
        out.append(Problem("retaining_heads.out_file", "is empty"))
    # both train the backbone, which a retaining-head run freezes
    return out + _not_with(
        cfg, "retaining_heads.enabled", ("ssd", "sparsity.prosparse"), "the backbone is frozen"
    )


def _section(cfg: RunConfig, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _not_with(cfg: RunConfig, method: str, others: tuple[str, ...], why: str) -> list[Problem]:
    """`OTHER.enabled: cannot be combined with METHOD (why)` for each switched-on section in `others`."""
    return [
        Problem(f"{other}.enabled", f"cannot be combined with {method} ({why})")
        for other in others
        if _section(cfg, other).enabled
    ]


def _lora_problems(cfg: RunConfig) -> list[Problem]:
    out = []
    if not cfg.init.from_path:
        out.append(Problem("init.from_path", "lora.enabled needs a model to load (the weights LoRA adapts)"))
    if cfg.parallel.tp != 1:
        out.append(Problem("parallel.tp", f"lora.enabled needs tp = 1, got {cfg.parallel.tp}"))
    if cfg.parallel.zero_stage == 3:  # ZeRO-3 partitions the base weights the adapters wrap: untested
        out.append(Problem("parallel.zero_stage", "lora.enabled runs with ZeRO 0, 1 or 2, not 3"))
    ffn = "gate_up_proj" if cfg.model.gated else "up_proj"
    for bad in ({"gate_up_proj", "up_proj"} - {ffn}) & set(cfg.lora.target_modules):
        gated = str(cfg.model.gated).lower()
        out.append(Problem("lora.target_modules", f"{bad}: this model (model.gated: {gated}) has {ffn}"))
    # each trains or re-shapes the base weights, which LoRA keeps frozen
    others = ("ssd", "sparsity.prosparse", "retaining_heads")
    return out + _not_with(cfg, "lora.enabled", others, "the model's weights are frozen")


def _plugin_problems(cfg: RunConfig) -> list[Problem]:
    out = []
    if not cfg.init.from_path:
        out.append(Problem("init.from_path", "plugin.enabled needs the (frozen) model to load"))
    if not cfg.data.tokenizer:
        out.append(Problem("data.tokenizer", "plugin.enabled needs the model's tokenizer to encode examples"))
    if cfg.parallel.tp != 1:
        out.append(Problem("parallel.tp", f"plugin.enabled needs tp = 1, got {cfg.parallel.tp}"))
    if cfg.parallel.zero_stage == 3:  # the loss calls the module directly: no ZeRO-3 gathering
        out.append(Problem("parallel.zero_stage", "plugin.enabled runs with ZeRO 0, 1 or 2, not 3"))
    if cfg.export.hf_dir:  # the model does not change; the mapper goes to plugin.out_file
        out.append(Problem("export.hf_dir", "a map-tuning run writes plugin.out_file, not an HF folder"))
    if cfg.data.pack:
        out.append(Problem("data.pack", "cannot be combined with plugin.enabled"))
    others = ("ssd", "sparsity.prosparse", "retaining_heads", "lora")
    return out + _not_with(cfg, "plugin.enabled", others, "the model is frozen")


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
    ("sparsity.track_interval", 0),
    ("sparsity.track_threshold", 0),
    ("retaining_heads.hidden", 1),
    ("retaining_heads.smoothness_alpha", 0),
    ("retaining_heads.answer_tokens", 0),
)


def _export_problems(cfg: RunConfig, about_to_run: bool) -> list[Problem]:
    """export.hf_dir must not replace what the run reads or writes (densa.outputs); about to run, it must
    also be new, empty or a folder densa wrote (a re-run replaces its own export)."""
    from pathlib import Path

    from densa.outputs import Source, destination_problem, replace_problem

    hf_dir = cfg.export.hf_dir
    if not hf_dir:
        return []
    sources = [Source("run directory", cfg.run.out_dir, "run")]
    if cfg.init.from_path:
        init = Path(cfg.init.from_path)
        sources.append(Source("init.from_path", init, "run" if (init / "checkpoints").is_dir() else "folder"))
    if cfg.data.tokenizer:
        tok = Path(cfg.data.tokenizer)
        sources.append(Source("data.tokenizer", tok, "folder" if tok.is_dir() else "file"))
    problem = destination_problem(hf_dir, sources)
    if problem:
        example = Path(cfg.run.out_dir) / "hf"
        return [
            Problem(
                "export.hf_dir",
                f"{problem}; the export at the end of training would replace it."
                f" Choose another export.hf_dir, such as {example}",
            )
        ]
    why = replace_problem(hf_dir, overwrite=True, name="export.hf_dir") if about_to_run else None
    return [Problem("export.hf_dir", why)] if why else []


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
    out += _literal_problems(cfg, "")
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
    if cfg.train.compile and (tp > 1 or cfg.parallel.zero_stage == 3):
        out.append(Problem("train.compile", "is tested with parallel.tp = 1 and ZeRO 0, 1 or 2 only"))
    if not cfg.train.compile and cfg.train.compile_mode != "default":
        out.append(Problem("train.compile_mode", "has no effect without train.compile: true"))
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
    if cfg.ssd.enabled:
        out += _ssd_problems(cfg)
    out += _sparsity_problems(cfg)
    out += _export_problems(cfg, about_to_run=world_size is not None)
    if cfg.retaining_heads.enabled:
        out += _heads_problems(cfg, training)
    if cfg.lora.enabled:
        out += _lora_problems(cfg)
    if cfg.plugin.enabled:
        out += _plugin_problems(cfg)
    out += _switched_off_problems(cfg)
    if not out:  # the generated DeepSpeed config is only meaningful for an otherwise valid recipe
        from densa.config.deepspeed_config import deepspeed_problems

        out += deepspeed_problems(cfg, world_size)
    return out


SWITCHED_SECTIONS = ("ssd", "retaining_heads", "lora", "plugin", "sparsity.prosparse")


def _switched_off_problems(cfg: RunConfig) -> list[Problem]:
    """A method section with settings but `enabled: false` does nothing; `lora: {rank: 16}` would
    otherwise train every weight without a word."""
    out = []
    for name in SWITCHED_SECTIONS:
        section = _section(cfg, name)
        if section.enabled:
            continue
        default = type(section)()
        changed = [
            f.name
            for f in dataclasses.fields(section)
            if getattr(section, f.name) != getattr(default, f.name)
        ]
        if changed:
            keys = ", ".join(f"{name}.{key}" for key in changed)
            out.append(
                Problem(
                    f"{name}.enabled",
                    f"is false, so {keys} {'has' if len(changed) == 1 else 'have'} no effect"
                    f" (set {name}.enabled: true, or remove {'it' if len(changed) == 1 else 'them'})",
                )
            )
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
