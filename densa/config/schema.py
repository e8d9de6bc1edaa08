"""The recipe schema: one frozen dataclass per YAML section, each field documented in one line.

`densa.config.load` turns a recipe into a `RunConfig`; docs/config_reference.md is generated from
these docstrings. Sections own their local checks in `__post_init__`; rules that span sections live in
`densa.config.checks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from densa.lora.config import LoRAConfig
from densa.models.config import ModelConfig
from densa.plugins.config import PluginConfig
from densa.sparse_moe.config import SSDConfig

# The `ssd:`, `lora:` and `plugin:` sections are the methods' own configs (one definition each, in
# densa/sparse_moe/config.py, densa/lora/config.py and densa/plugins/config.py).
SSDSection = SSDConfig
LoRASection = LoRAConfig


@dataclass(frozen=True, kw_only=True)
class RunSection:
    name: str = "run"
    """Run name, used in logs and the model card."""
    out_dir: str = "runs/run"
    """Run directory: resolved recipe, checkpoints, TensorBoard events, metrics.jsonl."""
    seed: int = 1234
    """Seed for model init, data order and dropout-free sampling."""


@dataclass(frozen=True, kw_only=True)
class DatasetSource:
    path: str
    """Prefix of a preprocessed dataset (`PREFIX.bin`, `PREFIX.idx`, `PREFIX.json`), or SFT data: a JSONL or
    parquet file, a `datasets` folder (save_to_disk) or a hub cache folder (datasets--ORG--NAME)."""
    weight: float = 1.0
    """Blending weight (normalised over the list)."""


@dataclass(frozen=True, kw_only=True)
class DataSection:
    train: tuple[DatasetSource, ...] = ()
    """Training datasets, blended by weight."""
    valid: tuple[DatasetSource, ...] = ()
    """Validation datasets (loss and perplexity at eval intervals)."""
    seq_len: int = 512
    """Tokens per training sample."""
    tokenizer: str | None = None
    """SentencePiece `.model` file or HF tokenizer folder; checked against each dataset's manifest."""
    format: Literal["pretrain", "sft"] = "pretrain"
    """`pretrain` (packed .bin/.idx) or `sft` (messages or prompt/response, loss on responses, from a JSONL
    or parquet file, a `datasets` save_to_disk folder or a hub cache folder)."""
    pack: bool = False
    """sft only: pack several examples into each row of seq_len tokens; attention and positions restart
    per example (block-diagonal causal mask), loss masks are kept. Off: one padded example per row."""


@dataclass(frozen=True, kw_only=True)
class InitSection:
    from_path: str | None = None
    """Start from an HF folder or a densa checkpoint instead of random init (YAML key: `from_path`). The
    `model:` section may then be left out or given in part: its fields are read from this folder, and
    fields given must agree with it (floats to a relative 1e-6), except max_seq_len, init_std,
    activation_threshold and extra."""
    freeze: tuple[str, ...] = ()
    """Glob patterns of parameter names to freeze (e.g. `embed_tokens.*`, `layers.*.attn.*`)."""


@dataclass(frozen=True, kw_only=True)
class OptimSection:
    lr: float = 3e-4
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay (not applied to norms, biases and embeddings)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables."""


@dataclass(frozen=True, kw_only=True)
class ScheduleSection:
    kind: Literal["constant", "linear", "cosine", "wsd"] = "cosine"
    """constant, linear, cosine or wsd (warmup-stable-decay)."""
    warmup_steps: int = 0
    """Linear warmup from 0 to the peak LR."""
    decay_steps: int | None = None
    """wsd only: length of the final decay phase (default: decay_fraction of the total)."""
    decay_fraction: float = 0.1
    """wsd only: decay phase as a fraction of train.steps when decay_steps is not given."""
    decay_shape: Literal["linear", "cosine", "exp", "1-sqrt"] = "linear"
    """wsd only: linear, cosine, exp or 1-sqrt."""
    min_lr_ratio: float = 0.1
    """Final LR as a fraction of the peak (linear, cosine, wsd)."""

    def decay_length(self, total_steps: int) -> int:
        """wsd: steps in the decay phase: decay_steps, else decay_fraction of total_steps (at least 1)."""
        if self.decay_steps is not None:
            return self.decay_steps
        return max(1, round(self.decay_fraction * total_steps))


@dataclass(frozen=True, kw_only=True)
class BatchSection:
    global_tokens: int = 65536
    """Tokens per optimizer step across all ranks: the one place batch size is given."""
    micro_batch: int = 4
    """Sequences per forward/backward per rank; gradient accumulation is derived."""


@dataclass(frozen=True, kw_only=True)
class TrainSection:
    steps: int = 1000
    """Optimizer steps to run."""
    max_bad_steps: int = 5
    """Stop after this many consecutive steps with a NaN/inf loss (each is skipped and counted)."""
    compile: bool = False
    """torch.compile the model (`nn.Module.compile`: checkpoints keep their keys); the first steps compile."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    """torch.compile mode, with train.compile: true."""


@dataclass(frozen=True, kw_only=True)
class ParallelSection:
    tp: int = 1
    """Tensor-parallel size (megatron-core parallel_state)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0, 1, 2 or 3."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """fp32, bf16, or fp16 (GPU only, with loss scaling)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward."""
    launcher: Literal["deepspeed", "torchrun"] = "deepspeed"
    """deepspeed or torchrun, for `densa launch`."""


@dataclass(frozen=True, kw_only=True)
class CheckpointSection:
    interval: int = 500
    """Save every this many steps (and at the end)."""
    keep_last: int = 3
    """Keep only the newest k checkpoints."""
    resume: str = "auto"
    """auto (newest complete checkpoint in the run dir), none, or a checkpoint path."""


@dataclass(frozen=True, kw_only=True)
class WandbSection:
    """Weights & Biases logging next to TensorBoard (needs `pip install wandb`); off while project is null.
    The W&B run lives in RUN_DIR/wandb and is continued on resume (its id is kept in RUN_DIR/wandb_run_id)."""

    project: str | None = None
    """W&B project to log to; null: no W&B logging."""
    entity: str | None = None
    """W&B team or user (null: your default entity)."""
    mode: Literal["online", "offline", "disabled"] = "online"
    """online, offline (write RUN_DIR/wandb for a later `wandb sync`) or disabled. WANDB_MODE overrides."""


@dataclass(frozen=True, kw_only=True)
class LoggingSection:
    log_interval: int = 10
    """Steps between metric records (console, metrics.jsonl, TensorBoard)."""
    tensorboard: bool = True
    """Write TensorBoard events to RUN_DIR/tensorboard."""
    progress: bool = True
    """Progress bar with ETA on rank 0."""
    wandb: WandbSection = field(default_factory=WandbSection)
    """Weights & Biases logging (see below)."""


@dataclass(frozen=True, kw_only=True)
class EvalSection:
    interval: int = 0
    """Steps between validation passes; 0 evaluates only at the end."""
    max_batches: int = 16
    """Micro-batches per validation pass."""


@dataclass(frozen=True, kw_only=True)
class ExportSection:
    hf_dir: str | None = None
    """Export the final model to this HF folder (with tokenizer) when training ends. Usually `RUN/hf`; it
    must not be the run dir, contain it or lie inside `RUN/checkpoints`, nor be, contain or lie inside
    `init.from_path` or `data.tokenizer`. An existing folder is replaced only when densa wrote it (a
    re-run re-exports); any other non-empty folder fails the recipe check before training starts."""


@dataclass(frozen=True, kw_only=True)
class ProSparseSection:
    """ProSparse finetuning (docs/sparsity.md): ReLU swap, progressive L1, optional FATReLU; tp = 1."""

    enabled: bool = False
    """Swap the FFN activation of the loaded model to ReLU (weights kept) and train with the L1 schedule."""
    activation: Literal["relu", "fatrelu"] = "relu"
    """relu, or fatrelu (ReLU that also zeroes pre-activations ≤ fatrelu_threshold during training)."""
    fatrelu_threshold: float = 0.0
    """FATReLU threshold T ≥ 0 (activation: fatrelu only). Applied by hooks during training; the run's
    checkpoints and exports record it as the trained model's activation_threshold, so they compute the same
    FATReLU."""
    l1_stages: tuple[tuple[int, float], ...] = ()
    """Progressive L1 as [[end_step, lambda], ...]: λ rises on a quarter sine to each stage's lambda by its
    end step (ends increasing), then stays; empty: no L1."""


@dataclass(frozen=True, kw_only=True)
class SparsitySection:
    """Live activation-sparsity tracking and ProSparse (densa.sparsity.callback)."""

    track_interval: int = 0
    """Log `sparsity/activation_ratio` (mean and per layer) every this many steps; 0: off."""
    track_threshold: float = 0.0
    """A neuron is active when |a_i|·‖W_down[:, i]‖ exceeds this (0: non-zero activations)."""
    track_cett: float | None = None
    """Instead of track_threshold: the layer threshold whose CETT is this value (in [0, 1])."""
    prosparse: ProSparseSection = field(default_factory=ProSparseSection)
    """ProSparse finetuning (see below)."""


@dataclass(frozen=True, kw_only=True)
class RetainingHeadsSection:
    """Locret retaining-head training (docs/locret.md): the backbone from init.from_path stays frozen,
    heads are attached before the engine is built and trained with the CIS loss on SFT batches (answer =
    the response), token-level `.bin/.idx` rows (answer = the last answer_tokens) or rows of a task."""

    enabled: bool = False
    """Make this a retaining-head run (needs init.from_path and tp = 1)."""
    task: Literal["none", "mqar", "passkey", "first_occurrence"] = "none"
    """Train on rows of this densa.longctx.tasks generator at data.seq_len (seeded from run.seed; data.train
    is not read) instead of data.train; the model's vocabulary must hold the task's 259 tokens."""
    answer_tokens: int = 0
    """> 0: the last this many tokens of each row are the answer queries and the tokens before them the
    context the heads score (needed for data.format pretrain, token-level .bin/.idx rows, which mark no
    answer; e.g. 64); 0: the answer is what the rows mark (SFT loss_mask, a task's answer positions)."""
    hidden: int = 1024
    """Hidden units of each layer's head MLP."""
    smoothness_alpha: float = 0.0025
    """Weight of the adjacent-token smoothness term of the loss."""
    out_file: str = "retaining_heads.safetensors"
    """Heads file written at the end of training, relative to run.out_dir."""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A whole recipe."""

    run: RunSection = field(default_factory=RunSection)
    model: ModelConfig
    init: InitSection = field(default_factory=InitSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    batch: BatchSection = field(default_factory=BatchSection)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    eval: EvalSection = field(default_factory=EvalSection)
    export: ExportSection = field(default_factory=ExportSection)
    ssd: SSDConfig = field(default_factory=SSDConfig)
    sparsity: SparsitySection = field(default_factory=SparsitySection)
    retaining_heads: RetainingHeadsSection = field(default_factory=RetainingHeadsSection)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    plugin: PluginConfig = field(default_factory=PluginConfig)
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """Extra DeepSpeed config keys; may add to, never contradict, the generated config."""
