"""`InferenceEngine`: batched generation over a loaded densa Transformer, with dense, sparse-FFN and MoE FFNs
and optional KV policies.

Batching. The densa attention (SDPA, causal, no attention mask) cannot take left-padded prompts: a pad key
would be attended. So prompts are grouped by token length; each group is one batch (prefill and every
decode step stacked, all rows at the same position), and groups run one after another. Within a group no
row sees another, so batched output equals one-by-one output (up to float summation order).

Sampling. Each prompt draws from its own torch.Generator seeded with `seed`, so a prompt's sample depends
only on (prompt, seed), never on which other prompts share its batch.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from densa.inference.loading import LoadedModel, load_for_inference
from densa.inference.moe_path import moe_kernels_installed
from densa.inference.sparse_path import calibrate, layer_thresholds_from, sparse_ffn_installed
from densa.models.generation import sample_next
from densa.models.transformer import Transformer


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True
    add_bos: bool = True
    """Prepend the tokenizer's BOS to text prompts (as HF Llama tokenizers do)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("need max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1")


@dataclass
class Generation:
    prompt_ids: list[int]
    token_ids: list[int]
    """New tokens, EOS excluded."""
    finish_reason: Literal["eos", "length"]
    text: str | None = None


@dataclass
class GenerationStats:
    prompts: int = 0
    groups: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    activation_ratio: list[float] | None = None
    """Per layer, during sparse decode steps (when `track_sparsity`)."""
    read_ratio: list[float] | None = None
    """Per layer, fraction of neurons read per sparse decode step (1.0 without predictors)."""
    predictor_recall: list[float] | None = None
    """Per layer, fraction of truly active neurons the predictors selected (1.0 without predictors)."""
    kv: list[Any] = field(default_factory=list)
    """densa.longctx PolicyStats per group, when a KV policy ran."""

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of prefill + decode."""
        return self.new_tokens / max(self.prefill_s + self.decode_s, 1e-9)

    @property
    def decode_tokens_per_s(self) -> float:
        return self.new_tokens / max(self.decode_s, 1e-9)


@dataclass
class GenerationOutput:
    generations: list[Generation]
    stats: GenerationStats


Step = Callable[[torch.Tensor], torch.Tensor]


class InferenceEngine:
    def __init__(self, model: Transformer, tokenizer: Any | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.thresholds: list[float] | None = None
        self.predictors: list[torch.nn.Module] | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        tokenizer: str | os.PathLike | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        moe_top_k: int | None = None,
        sparsity: Any | None = "auto",
        predictors: str | os.PathLike | None = "auto",
    ) -> InferenceEngine:
        """From an HF / densa / MoE folder.

        sparsity: thresholds, a SparsityReport or a sparsity.json for `generate(ffn="sparse")`; predictors:
        a predictors file (`densa sparsity predictors`) for the predicted sparse path. "auto" (default):
        the folder's own sparsity.json / predictors.safetensors (as `densa export` writes them), if any.
        """
        loaded: LoadedModel = load_for_inference(
            path, tokenizer=tokenizer, dtype=dtype, device=device, moe_top_k=moe_top_k
        )
        engine = cls(loaded.model, loaded.tokenizer)
        folder = Path(path)
        if isinstance(sparsity, str) and sparsity == "auto":
            sparsity = folder / "sparsity.json" if (folder / "sparsity.json").is_file() else None
        if isinstance(predictors, str) and predictors == "auto":
            found = folder / "predictors.safetensors"
            predictors = found if found.is_file() else None
        if sparsity is not None:
            engine.set_sparsity(sparsity)
        if predictors is not None:
            engine.set_predictors(predictors)
        return engine

    # -- FFN execution paths -----------------------------------------------------------------------

    @property
    def is_moe(self) -> bool:
        from densa.sparse_moe import is_sparse

        return is_sparse(self.model)

    def set_moe_top_k(self, top_k: int) -> None:
        from densa.sparse_moe import set_top_k

        if not self.is_moe:
            raise ValueError("set_moe_top_k needs an MoE model (an MoE folder from `densa moefy`)")
        set_top_k(self.model, top_k)

    def set_sparsity(self, source: Any) -> list[float]:
        """Layer CETT thresholds from a list, a SparsityReport or a sparsity.json path."""
        thresholds = layer_thresholds_from(source)
        if len(thresholds) != self.model.config.n_layers:
            raise ValueError(f"{len(thresholds)} thresholds for {self.model.config.n_layers} layers")
        self.thresholds = thresholds
        return thresholds

    def calibrate_sparsity(
        self, seqs: torch.Tensor, *, p: float | None = None, cett_target: float | None = None
    ) -> list[float]:
        """CETT-calibrate thresholds on token sequences [N, seq_len + 1] (PPL-p% or a fixed CETT target)."""
        self.thresholds = calibrate(self.model, seqs, p=p, cett_target=cett_target)
        return self.thresholds

    def set_predictors(self, source: str | os.PathLike | Sequence[torch.nn.Module] | None) -> None:
        """Per-layer neuron predictors (a file from `save_predictors`, or modules); None clears them.

        With predictors, `generate(ffn="sparse")` reads only the predicted rows of every FFN weight.
        """
        if source is None:
            self.predictors = None
            return
        if isinstance(source, str | os.PathLike):
            from densa.sparsity.predictor_io import load_predictors

            self.predictors = load_predictors(source, self.model)
            return
        if len(source) != self.model.config.n_layers:
            raise ValueError(f"{len(source)} predictors for {self.model.config.n_layers} layers")
        self.predictors = [p.eval() for p in source]

    def fit_predictors(self, seqs: torch.Tensor, rank: int, **train_kwargs: Any) -> list[Any]:
        """Train per-layer predictors of the neurons active under the current thresholds (or non-zero ones
        when no thresholds are set) on token sequences [N, seq_len + 1]; returns held-out metrics."""
        from densa.sparsity.predictor import fit_predictors

        predictors, metrics = fit_predictors(
            self.model, seqs, rank, layer_thresholds=self.thresholds, **train_kwargs
        )
        self.set_predictors(predictors)
        return metrics

    # -- generation --------------------------------------------------------------------------------

    def encode(self, prompt: str | Sequence[int], add_bos: bool = True) -> list[int]:
        if not isinstance(prompt, str):
            ids = [int(i) for i in prompt]
        elif self.tokenizer is None:
            raise ValueError("text prompts need a tokenizer; pass token ids or load one")
        else:
            ids = list(self.tokenizer.encode(prompt))
            bos = getattr(self.tokenizer, "bos_id", None)
            if add_bos and bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
        vocab = self.model.config.vocab_size
        if not ids or min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"a prompt must be a non-empty list of ids in [0, {vocab}), got {ids[:8]}...")
        return ids

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        config: GenerationConfig = GenerationConfig(),
        *,
        ffn: Literal["dense", "sparse"] = "dense",
        kv_policy: str | None = None,
        kv_budget: int | None = None,
        kv_chunk: int = 512,
        kv_options: dict[str, Any] | None = None,
        sparse_backend: str = "auto",
        track_sparsity: bool = False,
        moe_backend: str = "auto",
    ) -> GenerationOutput:
        """Generate for every prompt; groups of equal-length prompts run as one batch (see module doc).

        An MoE model decodes through the expert kernels (`densa.inference.moe_path`, `moe_backend` auto /
        native / triton / torch), or through `MoEFeedForward` itself with moe_backend="reference".
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = [self.encode(p, config.add_bos) for p in prompts]
        eos = getattr(self.tokenizer, "eos_id", None) if config.stop_at_eos else None
        stats = GenerationStats(prompts=len(ids), prompt_tokens=sum(map(len, ids)))
        groups: dict[int, list[int]] = {}
        for i, row in enumerate(ids):
            groups.setdefault(len(row), []).append(i)
        stats.groups = len(groups)
        new: list[list[int]] = [[] for _ in ids]
        reasons: list[str] = ["length"] * len(ids)
        if ffn == "sparse":
            if self.thresholds is None:
                raise ValueError(
                    "ffn='sparse' needs thresholds: call set_sparsity or calibrate_sparsity first"
                )
            context = sparse_ffn_installed(
                self.model, self.thresholds, sparse_backend, track_sparsity, self.predictors
            )
        elif ffn == "dense" and self.is_moe:
            context = moe_kernels_installed(self.model, moe_backend)  # type: ignore[arg-type]
        elif ffn == "dense":
            context = contextlib.nullcontext([])
        else:
            raise ValueError(f"ffn must be 'dense' or 'sparse', got {ffn!r}")
        with torch.no_grad(), context as wrappers:
            for rows in groups.values():
                batch = torch.tensor([ids[i] for i in rows], device=self.model.embed_tokens.weight.device)
                out, finished = self._run_group(
                    batch, config, eos, stats, kv_policy, kv_budget, kv_chunk, kv_options
                )
                for j, i in enumerate(rows):
                    tokens = out[j].tolist()
                    if eos is not None and eos in tokens:
                        tokens = tokens[: tokens.index(eos)]
                        reasons[i] = "eos"
                    new[i] = tokens
            if track_sparsity and ffn == "sparse" and wrappers:
                stats.activation_ratio = [w.active / max(w.total, 1) for w in wrappers]
                stats.read_ratio = [w.read / max(w.total, 1) for w in wrappers]
                stats.predictor_recall = [w.recall for w in wrappers]
        stats.new_tokens = sum(len(t) + (r == "eos") for t, r in zip(new, reasons))
        decode = self.tokenizer.decode if self.tokenizer is not None else None
        gens = [
            Generation(p, t, r, decode(t) if decode else None)  # type: ignore[arg-type]
            for p, t, r in zip(ids, new, reasons, strict=True)
        ]
        return GenerationOutput(gens, stats)

    def _run_group(
        self,
        batch: torch.Tensor,
        config: GenerationConfig,
        eos: int | None,
        stats: GenerationStats,
        kv_policy: str | None,
        kv_budget: int | None,
        kv_chunk: int,
        kv_options: dict[str, Any] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if kv_policy is None:
            cache = self.model.new_kv_cache(batch.shape[1] + config.max_new_tokens)
            step: Step = lambda x: self.model(x, kv_cache=cache)  # noqa: E731
            return self._decode(batch, step, step, config, eos, stats)
        from densa.longctx import PolicySession, build_policy

        policy = build_policy(kv_policy, **(kv_options or {}))
        with PolicySession(self.model, policy, kv_budget, kv_chunk) as session:
            result = self._decode(batch, session.prefill, session.forward, config, eos, stats)
            stats.kv.append(session.finish())
        return result

    def _decode(
        self,
        batch: torch.Tensor,
        prefill: Step,
        step: Step,
        config: GenerationConfig,
        eos: int | None,
        stats: GenerationStats,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, n] new tokens (EOS-filled after a row finished) and [B] finished flags."""
        gens = [torch.Generator(device=batch.device).manual_seed(config.seed) for _ in range(batch.shape[0])]
        start = time.perf_counter()
        logits = prefill(batch)[:, -1]
        stats.prefill_s += time.perf_counter() - start
        start = time.perf_counter()
        finished = torch.zeros(batch.shape[0], dtype=torch.bool, device=batch.device)
        out = []
        for i in range(config.max_new_tokens):
            if config.temperature <= 0:
                nxt = logits.argmax(dim=-1)
            else:  # row by row, each with its own generator (see module doc)
                nxt = torch.cat(
                    [
                        sample_next(logits[r : r + 1], config.temperature, config.top_p, g)
                        for r, g in enumerate(gens)
                    ]
                )
            if eos is not None:
                nxt = nxt.masked_fill(finished, eos)
                finished |= nxt == eos
            out.append(nxt)
            if i == config.max_new_tokens - 1 or bool(finished.all()):
                break
            logits = step(nxt[:, None])[:, -1]
        stats.decode_s += time.perf_counter() - start
        return torch.stack(out, dim=1), finished
