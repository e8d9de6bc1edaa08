"""SSD (switchable sparse-dense learning) vs dense-only training at equal tokens, on the quickstart corpus.

Two runs of one small ReLU decoder (`recipes/ssd_10m.yaml` with the model shrunk to fit 1 CPU thread),
same init seed, data order, schedule and token budget; one with `ssd.enabled: false`. Measured:

- final validation loss on the held-out play (goal: SSD within 1% of dense);
- FFN compute saved: counted (sparse-step fraction × (1 − k/E) × FFN share, router included) and
  wall-clock (FFN forward + backward timed inside every training step by module and tensor hooks);
- MoE inference: both final models MoEfied (balanced k-means + centroid router), perplexity against
  k/E, and the FFN forward time of the MoEfied SSD model at k/E = 1/4 against dense at several
  inference batch sizes (goal ≥ 1.8×);
- clustering stability (adjusted Rand index between consecutive re-clusterings) over training, for the
  SSD run (dense phases) and for the dense-only run (tracked alongside);
- the automatic dense → sparse → dense path, and a resume from a checkpoint saved inside a sparse phase
  that crosses the switch back to dense (compared step by step with the uninterrupted run).

    python benchmarks/ssd/run.py            # full (~25 min on 1 thread)
    python benchmarks/ssd/run.py --quick    # smoke (< 2 min)
    python benchmarks/ssd/run.py --probe 60 # train dense ~60 s, print tokens/s and ARI, exit

Writes benchmarks/results/ssd{,_quick}.{json,md} and PNGs under benchmarks/results/ssd{,_quick}/.
Runs go to runs/ssd_bench/{full,quick}/{dense,ssd,ssd_resume} (reused when complete unless --retrain).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    QUICKSTART_DATA,
    QUICKSTART_TOKENIZER,
    RESULTS_DIR,
    dataset_tokens,
    ensure_quickstart_data,
    machine_info,
    reuse_or_reset_run,
    time_interleaved,
    write_results,
)
from densa.config.load import load_recipe, load_recipe_dict  # noqa: E402
from densa.config.schema import RunConfig  # noqa: E402
from densa.models.checkpoint_io import build_transformer  # noqa: E402
from densa.sparse_moe import MoEFeedForward, cluster_ffn, moefy, perplexity, perplexity_vs_top_k  # noqa: E402
from densa.sparse_moe.stability import stability  # noqa: E402
from densa.train.callbacks import Callback  # noqa: E402
from densa.train.checkpoint import checkpoint_weights, complete_checkpoints  # noqa: E402

NAME = "ssd"
RECIPE = "recipes/ssd_10m.yaml"
DATA, TOKENIZER = QUICKSTART_DATA, QUICKSTART_TOKENIZER  # benchmarks.common: the quickstart data
GOALS = {"val_loss_gap": 0.01, "ffn_compute_ratio": 1.3, "inference_ffn_speedup": 1.8}


@dataclass(frozen=True)
class Setup:
    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    experts: int
    top_k: int
    seq_len: int
    batch_seqs: int
    steps: int
    warmup: int
    interval: int
    threshold: float
    sparse_steps: int
    final_dense_fraction: float
    eval_interval: int
    val_tokens: int
    """Held-out tokens for the final validation loss (the whole play when larger)."""
    curve_tokens: int
    """Held-out tokens for perplexity against k/E."""
    infer_tokens: tuple[int, ...]
    """Tokens per FFN forward in the inference timing (1 = one decode step)."""
    repeats: int
    resume_save_after: int
    """The resume check's checkpoint is saved after this many steps of the first sparse phase."""
    resume_extra: int
    """... and the resumed run goes this many steps past the switch back to dense."""
    lr: float = 2e-3

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_seqs


FULL = Setup(
    dim=256,
    n_layers=4,
    n_heads=4,
    ffn_dim=1024,
    experts=16,
    top_k=4,
    seq_len=256,
    batch_seqs=8,
    steps=600,
    warmup=20,
    interval=20,
    threshold=0.7,
    sparse_steps=100,
    final_dense_fraction=0.25,
    eval_interval=50,
    val_tokens=65536,
    curve_tokens=16384,  # also the hidden states for the FFN timings (≥ 4096)
    infer_tokens=(1, 16, 128, 1024, 4096),
    repeats=15,
    resume_save_after=10,
    resume_extra=10,
)
QUICK = Setup(
    dim=64,
    n_layers=2,
    n_heads=2,
    ffn_dim=256,
    experts=16,
    top_k=4,
    seq_len=64,
    batch_seqs=8,
    steps=60,
    warmup=4,
    interval=4,
    threshold=0.0,
    sparse_steps=12,
    final_dense_fraction=0.2,
    eval_interval=20,
    val_tokens=4096,
    curve_tokens=2048,
    infer_tokens=(1, 128, 1024),
    repeats=3,
    resume_save_after=3,
    resume_extra=3,
)


# ------------------------------------------------------------------------------------------- config


def overrides(s: Setup, variant: str, run_dir: Path, resume: str = "none") -> list[str]:
    """`--set` overrides of recipes/ssd_10m.yaml: the small ReLU model, the budget, the SSD schedule."""
    return [
        f"run.name={NAME}-{variant}",
        f"run.out_dir={run_dir}",
        f"model.dim={s.dim}",
        f"model.n_layers={s.n_layers}",
        f"model.n_heads={s.n_heads}",
        f"model.n_kv_heads={s.n_heads}",
        f"model.ffn_dim={s.ffn_dim}",
        "model.gated=false",
        "model.activation=relu",
        f"model.max_seq_len={s.seq_len}",
        f"data.seq_len={s.seq_len}",
        f"optim.lr={s.lr}",
        f"schedule.warmup_steps={s.warmup}",
        f"batch.global_tokens={s.tokens_per_step}",
        f"batch.micro_batch={s.batch_seqs}",
        f"train.steps={s.steps}",
        f"checkpoint.interval={s.steps}",
        "checkpoint.keep_last=10",
        f"checkpoint.resume={resume}",
        "logging.log_interval=10",
        "logging.tensorboard=false",
        "logging.progress=false",
        f"eval.interval={s.eval_interval}",
        "eval.max_batches=8",
        f"ssd.enabled={'true' if variant.startswith('ssd') else 'false'}",
    ] + (
        []
        if not variant.startswith("ssd")
        else [  # the dense recipe does not depend on the SSD schedule
            f"ssd.num_experts={s.experts}",
            f"ssd.top_k={s.top_k}",
            f"ssd.interval={s.interval}",
            f"ssd.stability_threshold={s.threshold}",
            f"ssd.sparse_steps={s.sparse_steps}",
            f"ssd.final_dense_fraction={s.final_dense_fraction}",
        ]
    )


def make_config(s: Setup, variant: str, run_dir: Path, resume: str = "none") -> RunConfig:
    if variant.startswith("ssd"):
        return load_recipe(RECIPE, overrides(s, variant, run_dir, resume))
    # The dense run drops the recipe's ssd: section (settings under enabled: false are refused).
    data = yaml.safe_load(Path(RECIPE).read_text(encoding="utf-8"))
    data.pop("ssd", None)
    dense = [o for o in overrides(s, variant, run_dir, resume) if not o.startswith("ssd.")]
    return load_recipe_dict(data, str(RECIPE), dense)


def valid_sequences(seq_len: int, tokens: int) -> torch.Tensor:
    """[n, seq_len + 1] non-overlapping windows of the held-out play (at most `tokens` predicted tokens)."""
    flat = dataset_tokens(f"{DATA}/valid")
    n = min(tokens // seq_len, flat.numel() // (seq_len + 1))
    return flat[: n * (seq_len + 1)].view(n, seq_len + 1)


# ------------------------------------------------------------------------------------------- callbacks


def _layers(trainer: Any) -> Any:
    model = getattr(trainer.engine, "module", None)
    model = trainer.model if model is None else model
    while not hasattr(model, "layers") and hasattr(model, "module"):
        model = model.module
    return model.layers


class StepTimer(Callback):
    """Times each optimizer step and, inside it, every FFN's forward and backward (summed over layers).

    Put first in the callback list, so `post_step` runs before SSD's re-clustering and switching. The FFN
    backward is timed from the moment its output's gradient is ready to the moment its input's is (one
    thread: autograd runs the FFN's backward nodes back to back). `sparse` is the mode the step ran in.
    """

    name = "bench_timer"

    def __init__(self) -> None:
        self.fwd = self.bwd = 0.0
        self.handles: list[Any] = []
        self.t0 = 0.0
        self.sparse = False

    def _hook(self, module: Any) -> None:
        start: dict[str, float] = {}

        def pre(mod: Any, args: tuple) -> None:
            x = args[0]
            if x.requires_grad:
                x.register_hook(lambda g: self._bwd_end(start))
            start["f"] = time.perf_counter()

        def post(mod: Any, args: tuple, out: torch.Tensor) -> None:
            self.fwd += time.perf_counter() - start["f"]
            if out.requires_grad:
                out.register_hook(lambda g: start.__setitem__("b", time.perf_counter()))

        self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def _bwd_end(self, start: dict[str, float]) -> None:
        if "b" in start:
            self.bwd += time.perf_counter() - start.pop("b")

    def pre_step(self, trainer: Any, step: int) -> None:
        layers = _layers(trainer)
        self.sparse = any(isinstance(layer.ffn, MoEFeedForward) for layer in layers)
        self.fwd = self.bwd = 0.0
        for layer in layers:
            self._hook(layer.ffn)
        self.t0 = time.perf_counter()

    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        metrics["bench/step_s"] = time.perf_counter() - self.t0
        for h in self.handles:
            h.remove()
        self.handles = []
        metrics["bench/sparse_step"] = self.sparse
        metrics["bench/ffn_fwd_s"] = self.fwd
        metrics["bench/ffn_bwd_s"] = self.bwd
        metrics["bench/t_end"] = time.perf_counter()


class StabilityTracker(Callback):
    """The SSD callback's stability signal without switching (for the dense-only run): every `interval`
    steps re-cluster every FFN (balanced k-means warm-started from the last clustering, as SSD does) and
    log the mean adjusted Rand index against the previous clustering."""

    name = "bench_stability"

    def __init__(self, interval: int, experts: int, iters: int, seed: int) -> None:
        self.interval, self.experts, self.iters, self.seed = interval, experts, iters, seed
        self.previous: list[Any] = []

    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        if (step + 1) % self.interval:
            return
        new = []
        for i, layer in enumerate(_layers(trainer)):
            prev = self.previous[i] if self.previous else None
            new.append(cluster_ffn(layer.ffn, self.experts, previous=prev, seed=self.seed, iters=self.iters))
        if self.previous:
            aris = [stability(p.labels, c.labels, "ari") for p, c in zip(self.previous, new, strict=True)]
            metrics["ssd/stability_ari"] = sum(aris) / len(aris)
        self.previous = new


class Recorder(Callback):
    """Per step: loss, LR, mode, timings, SSD metrics; per eval: validation loss. Put last."""

    name = "bench_recorder"

    def __init__(self, save_after: int = 0, stop_at: int = 0) -> None:
        self.steps: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.save_after, self.stop_at = save_after, stop_at
        self.saved: dict[str, Any] | None = None
        self.started = time.perf_counter()

    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        rec = {"step": step, "loss": float(metrics["train/loss"]), "lr": float(metrics["train/lr"])}
        for k, v in metrics.items():
            if k.startswith(("ssd/", "bench/")) and k != "bench/t_end":
                rec[k] = float(v)
        if "bench/t_end" in metrics:
            rec["bench/callbacks_s"] = time.perf_counter() - metrics["bench/t_end"]
        self.steps.append(rec)
        # Resume check: a checkpoint `save_after` steps into the first sparse phase (the model is sparse).
        if self.save_after and self.saved is None:
            run = [r.get("ssd/sparse", 0.0) for r in self.steps]
            if len(run) > self.save_after and all(run[-self.save_after - 1 :]):
                path = trainer.save_checkpoint()
                self.saved = {"step": trainer.state.step, "path": str(path)}
        if self.stop_at and trainer.state.step >= self.stop_at:
            trainer.request_stop()

    def on_eval(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        loss = next((v for k, v in metrics.items() if k.endswith("loss")), None)
        if loss is not None:
            self.evals.append({"step": step, "val_loss": float(loss)})


def fit(cfg: RunConfig, callbacks: list[Callback], timer: bool = True) -> tuple[Any, float]:
    from densa.train.run import build_trainer

    trainer = build_trainer(cfg, callbacks=callbacks)
    if timer:
        trainer.callbacks.callbacks.insert(0, StepTimer())
    t0 = time.perf_counter()
    trainer.fit()
    return trainer, time.perf_counter() - t0


def ssd_history(trainer: Any) -> list[dict[str, Any]]:
    cb = next((c for c in trainer.callbacks if c.name == "ssd"), None)
    return json.loads(json.dumps(cb.history, default=float)) if cb is not None else []


def train_variant(s: Setup, variant: str, run_dir: Path, retrain: bool) -> dict[str, Any]:
    """Train (unless a finished run with the same recipe exists); returns the trace."""
    cfg = make_config(s, variant, run_dir)
    trace_path = run_dir / "bench_trace.json"
    reused = reuse_or_reset_run(cfg, run_dir, trace_path.name, f"[{NAME}] {variant}", retrain)
    if reused is not None:
        return reused
    rec = Recorder(save_after=s.resume_save_after if variant == "ssd" else 0)
    extra: list[Callback] = [] if cfg.ssd.enabled else [StabilityTracker(s.interval, s.experts, 50, 0)]
    print(f"[{NAME}] {variant}: training {s.steps} steps → {run_dir}", flush=True)
    trainer, seconds = fit(cfg, [*extra, rec])
    trace = {
        "steps": rec.steps,
        "evals": rec.evals,
        "history": ssd_history(trainer),
        "resume_checkpoint": rec.saved,
        "seconds": seconds,
    }
    trace_path.write_text(json.dumps(trace) + "\n")
    return trace


def resume_check(s: Setup, trace: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Resume the SSD run from its checkpoint inside the first sparse phase, run past the automatic switch
    back to dense, and compare losses and modes with the uninterrupted run step by step."""
    saved = trace["resume_checkpoint"]
    if saved is None:
        return {"ok": False, "reason": "no checkpoint was saved inside a sparse phase"}
    back = next(
        (h["step"] for h in trace["history"] if h["event"] == "to_dense" and h["step"] > saved["step"]), None
    )
    if back is None:
        return {"ok": False, "reason": "no switch back to dense after the checkpoint"}
    stop = min(back + s.resume_extra, s.steps)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cfg = make_config(s, "ssd_resume", run_dir, resume=saved["path"])
    rec = Recorder(stop_at=stop)
    trainer, seconds = fit(cfg, [rec])
    original = {r["step"]: r for r in trace["steps"]}
    diffs = [abs(r["loss"] - original[r["step"]]["loss"]) for r in rec.steps]
    modes_same = all(r.get("ssd/sparse") == original[r["step"]].get("ssd/sparse") for r in rec.steps)
    hist = ssd_history(trainer)
    switched = [h["step"] for h in hist if h["event"] == "to_dense" and h["step"] > saved["step"]]
    out = {
        "checkpoint_step": saved["step"],
        "resumed_steps": [rec.steps[0]["step"], rec.steps[-1]["step"]] if rec.steps else [],
        "switch_back_step_original": back,
        "switch_back_step_resumed": switched[0] if switched else None,
        "max_abs_loss_diff": max(diffs) if diffs else math.nan,
        "modes_identical": modes_same,
        "seconds": seconds,
    }
    out["ok"] = bool(diffs) and out["max_abs_loss_diff"] == 0.0 and modes_same and switched[:1] == [back]
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return out


def probe(s: Setup, seconds: float) -> None:
    """Train dense for ~`seconds` with the stability tracker; print tokens/s, ARI and the step budget."""
    run_dir = Path(f"runs/{NAME}_bench/probe")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cfg = make_config(dataclasses.replace(s, steps=10_000, eval_interval=10_000), "dense", run_dir)

    class Stop(Callback):
        name = "probe_stop"

        def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
            if "ssd/stability_ari" in metrics:
                ari, loss = metrics["ssd/stability_ari"], metrics["train/loss"]
                print(f"step {step + 1}: ARI {ari:.3f}, loss {loss:.3f}")
            if step == 2:
                self.t0 = time.perf_counter()
            elif step > 2 and time.perf_counter() - self.t0 > seconds:
                rate = (step - 2) * s.tokens_per_step / (time.perf_counter() - self.t0)
                print(f"dense: {rate:.0f} tokens/s → {int(900 * rate / s.tokens_per_step)} steps / 15 min")
                trainer.request_stop()

    fit(cfg, [StabilityTracker(max(2, s.interval // 2), s.experts, 50, 0), Stop()], timer=False)
    shutil.rmtree(run_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------- measurement


def final_model(s: Setup, variant: str, run_dir: Path) -> torch.nn.Module:
    cfg = make_config(s, variant, run_dir)
    step, folder = complete_checkpoints(run_dir)[-1]
    assert step == s.steps, f"{run_dir}: last checkpoint is step {step}, not {s.steps}"
    return build_transformer(cfg.model, checkpoint_weights(folder)).eval()


def batches(seqs: torch.Tensor, size: int = 8) -> list[torch.Tensor]:
    return [seqs[i : i + size] for i in range(0, seqs.shape[0], size)]


def ffn_inputs(model: torch.nn.Module, seqs: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's FFN input on `seqs` ([tokens, dim]), i.e. real hidden states for the timing."""
    got: list[list[torch.Tensor]] = [[] for _ in model.layers]
    handles = [
        layer.ffn.register_forward_pre_hook(lambda m, a, i=i: got[i].append(a[0].reshape(-1, a[0].shape[-1])))
        for i, layer in enumerate(model.layers)
    ]
    with torch.no_grad():
        for b in batches(seqs):
            model(b[:, :-1])
    for h in handles:
        h.remove()
    return [torch.cat(g) for g in got]


def expert_matmuls(moe: MoEFeedForward, x: torch.Tensor) -> Any:
    """A function running only the MoE's per-expert matmuls (and activation) for input `x`, with routing
    and dispatch done beforehand: what the MoE forward would cost without its routing/gather overhead."""
    from densa.sparse_moe.grouped import dispatch, grouped_cols, grouped_rows, sort_slots

    with torch.no_grad():
        slots = sort_slots(moe.router(x).topk(moe.top_k, dim=-1).indices, moe.num_experts)
        xs = dispatch(x, slots)

    def run() -> None:
        if moe.gated:
            gate, up = grouped_rows(xs, moe.gate_up_proj.weight, slots, groups=2)
            hidden = moe.act_fn(gate) * up
        else:
            hidden = moe.act_fn(grouped_rows(xs, moe.up_proj.weight, slots)[0])
        grouped_cols(hidden, moe.down_proj.weight, slots)

    return run


def inference_timing(
    s: Setup, moe_model: torch.nn.Module, inputs: list[torch.Tensor]
) -> list[dict[str, Any]]:
    """FFN forward time (all layers) of the MoE at k = top_k vs the dense FFN it views, per batch size."""
    moes = [layer.ffn for layer in moe_model.layers]
    rows = []
    for n in s.infer_tokens:
        xs = [x[:n].contiguous() for x in inputs]
        reps = max(1, min(256, 4096 // n))

        def run(mods: list[Any], xs: list[torch.Tensor] = xs, reps: int = reps) -> None:
            for _ in range(reps):
                for m, x in zip(mods, xs, strict=True):
                    m(x)

        matmuls = [expert_matmuls(m, x) for m, x in zip(moes, xs, strict=True)]

        def run_matmuls(matmuls: list[Any] = matmuls, reps: int = reps) -> None:
            for _ in range(reps):
                for fn in matmuls:
                    fn()

        with torch.no_grad():
            for m in moes:
                m.pop_load()
            times = time_interleaved(
                {
                    "dense": lambda: run([m.dense for m in moes]),
                    "moe": lambda: run(moes),
                    "matmuls": run_matmuls,
                },
                repeats=s.repeats,
                warmup=1,
            )
            loads = [m.pop_load() for m in moes]
        dense, moe, mm = (statistics.median(times[k]) / reps for k in ("dense", "moe", "matmuls"))
        rows.append(
            {
                "tokens": n,
                "dense_ms": dense * 1e3,
                "moe_ms": moe * 1e3,
                "speedup": dense / moe,
                "expert_matmuls_ms": mm * 1e3,
                "speedup_expert_matmuls_only": dense / mm,
                "load_max_over_mean": max(float(x.max() / x.mean().clamp_min(1e-12)) for x in loads),
            }
        )
        print(f"[{NAME}] inference FFN forward, {n} tokens: {rows[-1]['speedup']:.2f}x", flush=True)
    return rows


def training_ffn_timing(s: Setup, moe_model: torch.nn.Module, inputs: list[torch.Tensor]) -> dict[str, Any]:
    """FFN forward + backward (all layers) at the training micro-batch, MoE at k = top_k vs dense, timed
    interleaved on real hidden states and routing: the sparse-phase saving free of machine-load drift."""
    moes = [layer.ffn for layer in moe_model.layers]
    n = s.batch_seqs * s.seq_len
    xs = [x[:n].clone().requires_grad_() for x in inputs]
    grad = torch.randn(n, s.dim, generator=torch.Generator().manual_seed(0))

    def step(mods: list[Any]) -> None:
        for m, x in zip(mods, xs, strict=True):
            m(x).backward(grad)
            x.grad = None
        for m in mods:
            for p in m.parameters():
                p.grad = None

    times = time_interleaved(
        {"dense": lambda: step([m.dense for m in moes]), "moe": lambda: step(moes)}, repeats=s.repeats
    )
    dense, moe = (statistics.median(times[k]) for k in ("dense", "moe"))
    return {"tokens": n, "dense_ms": dense * 1e3, "moe_ms": moe * 1e3, "speedup": dense / moe}


def measure(s: Setup, runs: dict[str, Path]) -> dict[str, Any]:
    val = valid_sequences(s.seq_len, s.val_tokens)
    curve = val[: max(1, s.curve_tokens // s.seq_len)]
    top_ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= s.experts]
    out: dict[str, Any] = {"val_tokens": int(val[:, 1:].numel()), "curve_tokens": int(curve[:, 1:].numel())}
    for variant, run_dir in runs.items():
        t0 = time.perf_counter()
        model = final_model(s, variant, run_dir)
        loss = math.log(perplexity(model, batches(val)))
        inputs = ffn_inputs(model, curve) if variant == "ssd" else None
        moe = copy.deepcopy(model)
        moefy(moe, s.experts, s.top_k)
        ppl = perplexity_vs_top_k(moe, batches(curve), top_ks)
        res: dict[str, Any] = {
            "val_loss": loss,
            "ppl_vs_k": {str(k): v for k, v in ppl.items()},
            "loss_increase_vs_k": {str(k): math.log(v / ppl[s.experts]) for k, v in ppl.items()},
        }
        if inputs is not None:
            res["inference"] = inference_timing(s, moe, inputs)
            res["training_ffn"] = training_ffn_timing(s, moe, inputs)
            print(f"[{NAME}] training FFN fwd+bwd: {res['training_ffn']['speedup']:.2f}x", flush=True)
        res["measure_seconds"] = time.perf_counter() - t0
        print(f"[{NAME}] {variant}: val loss {loss:.4f}, ppl vs k {ppl}", flush=True)
        out[variant] = res
    return out


# ------------------------------------------------------------------------------------------- accounting


def flops_per_token(s: Setup, vocab: int) -> dict[str, float]:
    """Forward FLOPs per token (2 per multiply-add) by part; training is 3× (backward = 2× forward)."""
    d, L, T = s.dim, s.n_layers, s.seq_len
    return {
        "attention_proj": L * 2 * d * 4 * d,  # q, k, v, o (n_kv_heads = n_heads)
        "attention_core": L * 2 * 2 * d * (T + 1) / 2,  # QKᵀ and AV over the causal half on average
        "ffn": L * 2 * 2 * d * s.ffn_dim,
        "router": L * 2 * d * s.experts,  # sparse steps only
        "lm_head": 2 * d * vocab,
    }


def accounting(s: Setup, traces: dict[str, Any], meas: dict[str, Any], vocab: int) -> dict[str, Any]:
    f = flops_per_token(s, vocab)
    dense_total = f["attention_proj"] + f["attention_core"] + f["ffn"] + f["lm_head"]
    steps = traces["ssd"]["steps"]
    n = len(steps)
    sparse = sum(1 for r in steps if r.get("bench/sparse_step"))
    frac = sparse / n
    kfrac = s.top_k / s.experts
    ffn_sparse = f["ffn"] * kfrac + f["router"]
    ffn_ratio = f["ffn"] / ((1 - frac) * f["ffn"] + frac * ffn_sparse)
    total_ratio = dense_total / (dense_total - frac * (f["ffn"] - ffn_sparse))

    def ffn_time(r: dict[str, Any]) -> float:
        return r["bench/ffn_fwd_s"] + r["bench/ffn_bwd_s"]

    med = statistics.median
    warm = [r for r in steps if r["step"] >= 5]  # skip the first steps (allocator warm-up)
    sp = [r for r in warm if r.get("bench/sparse_step")]
    de = [r for r in warm if not r.get("bench/sparse_step")]
    dense_run = [r for r in traces["dense"]["steps"] if r["step"] >= 5]
    t_sparse, t_dense = med([ffn_time(r) for r in sp]) if sp else math.nan, med([ffn_time(r) for r in de])
    phase_speedup = t_dense / t_sparse if sp else math.nan
    sum_ffn = {v: sum(ffn_time(r) for r in traces[v]["steps"]) for v in ("dense", "ssd")}
    sum_step = {v: sum(r["bench/step_s"] for r in traces[v]["steps"]) for v in ("dense", "ssd")}
    overhead = sum(r.get("bench/callbacks_s", 0.0) for r in steps)

    # Machine load drifts over a run (another job shares the CPU), so raw phase medians mix the mode with
    # the load. The FFN's share of its own step (FFN / rest of the step) cancels a uniform slow-down: the
    # rest (attention, LM head, optimizer) is the same in both modes.
    def share(rs: list[dict[str, Any]]) -> float:
        return med([ffn_time(r) / (r["bench/step_s"] - ffn_time(r)) for r in rs])

    normalized = share(de) / share(sp) if sp else math.nan
    controlled = meas["ssd"]["training_ffn"]["speedup"]
    per_phase = []
    bounds = sorted({0, len(steps), *(x for ph in phases(steps) for x in ph)})
    for a, b in zip(bounds, bounds[1:]):
        seg = [r for r in warm if a <= r["step"] < b]
        if seg:
            per_phase.append(
                {
                    "steps": [a, b],
                    "sparse": bool(seg[0].get("bench/sparse_step")),
                    "ffn_ms": med([ffn_time(r) for r in seg]) * 1e3,
                    "step_ms": med([r["bench/step_s"] for r in seg]) * 1e3,
                    "ffn_over_rest": share(seg),
                    "dense_run_ffn_ms": med([ffn_time(r) for r in dense_run if a <= r["step"] < b]) * 1e3,
                }
            )
    return {
        "flops_per_token_forward": f,
        "ffn_share_of_training_flops": f["ffn"] / dense_total,
        "sparse_steps": sparse,
        "sparse_step_fraction": frac,
        "k_over_E": kfrac,
        "ffn_flops_saved_fraction": 1 - 1 / ffn_ratio,
        "ffn_compute_ratio_counted": ffn_ratio,
        "total_compute_ratio_counted": total_ratio,
        "formula_saved_fraction_of_total": frac * (1 - kfrac) * f["ffn"] / dense_total,
        "ffn_ms_per_step_dense_phase": t_dense * 1e3,
        "ffn_ms_per_step_sparse_phase": t_sparse * 1e3,
        "ffn_ms_per_step_dense_run": med([ffn_time(r) for r in dense_run]) * 1e3,
        "ffn_fwd_ms_dense_phase": med([r["bench/ffn_fwd_s"] for r in de]) * 1e3,
        "ffn_fwd_ms_sparse_phase": med([r["bench/ffn_fwd_s"] for r in sp]) * 1e3 if sp else math.nan,
        "ffn_bwd_ms_dense_phase": med([r["bench/ffn_bwd_s"] for r in de]) * 1e3,
        "ffn_bwd_ms_sparse_phase": med([r["bench/ffn_bwd_s"] for r in sp]) * 1e3 if sp else math.nan,
        "ffn_wall_speedup_sparse_phase_raw": phase_speedup,
        "ffn_wall_speedup_sparse_phase_normalized": normalized,
        "ffn_wall_speedup_sparse_phase_controlled": controlled,
        "ffn_wall_ratio_projected": 1 / ((1 - frac) + frac / controlled),
        "ffn_wall_ratio_in_situ_normalized": 1 / ((1 - frac) + frac / normalized) if sp else 1.0,
        "per_phase": per_phase,
        "ffn_wall_ratio_measured_runs": sum_ffn["dense"] / sum_ffn["ssd"],
        "ffn_wall_s": sum_ffn,
        "step_ms_dense_phase": med([r["bench/step_s"] for r in de]) * 1e3,
        "step_ms_sparse_phase": med([r["bench/step_s"] for r in sp]) * 1e3 if sp else math.nan,
        "step_ms_dense_run": med([r["bench/step_s"] for r in dense_run]) * 1e3,
        "step_wall_s": sum_step,
        "ssd_callback_overhead_s": overhead,
        "train_wall_s": {v: traces[v]["seconds"] for v in ("dense", "ssd")},
    }


def phases(steps: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """[(first, last + 1)] step ranges the model trained sparse in."""
    out, start = [], None
    for r in steps:
        if r.get("bench/sparse_step") and start is None:
            start = r["step"]
        elif not r.get("bench/sparse_step") and start is not None:
            out.append((start, r["step"]))
            start = None
    if start is not None:
        out.append((start, steps[-1]["step"] + 1))
    return out


def summarize(
    s: Setup, traces: dict[str, Any], meas: dict[str, Any], acc: dict[str, Any], resume: dict
) -> dict:
    dense_loss, ssd_loss = meas["dense"]["val_loss"], meas["ssd"]["val_loss"]
    gap = (ssd_loss - dense_loss) / dense_loss
    k4 = str(s.top_k)
    inf = meas["ssd"]["inference"]
    ssd_steps = traces["ssd"]["steps"]
    ph = phases(ssd_steps)
    aris = [
        (r["step"] + 1, r["ssd/stability_ari"]) for r in traces["dense"]["steps"] if "ssd/stability_ari" in r
    ]
    first_switch = ph[0][0] if ph else None
    identical_until = next(
        (
            a["step"]
            for a, b in zip(traces["dense"]["steps"], ssd_steps, strict=True)
            if a["loss"] != b["loss"]
        ),
        len(ssd_steps),
    )
    half = len(aris) // 2
    # Counterfactual τ = 0.9 (the recipes' default): until its first switch an SSD run is bit-identical to
    # the dense-only run, so its first switch is the first dense-only ARI ≥ 0.9; it then stays sparse for
    # sparse_steps or until the final dense phase.
    final_dense = round(s.steps * (1 - s.final_dense_fraction))
    first09 = next((st for st, a in aris if a >= 0.9 and st < final_dense), None)
    sparse09 = min(s.sparse_steps, final_dense - first09) if first09 is not None else 0
    kfrac = s.top_k / s.experts
    tail = max(1, s.steps // 12)
    train_tail = {v: statistics.mean(r["loss"] for r in traces[v]["steps"][-tail:]) for v in ("dense", "ssd")}
    checks = {
        "val_loss_gap_le_1pct": gap <= GOALS["val_loss_gap"],
        "ffn_compute_ge_1.3x_counted": acc["ffn_compute_ratio_counted"] >= GOALS["ffn_compute_ratio"],
        "ffn_compute_ge_1.3x_wall_clock": min(
            acc["ffn_wall_ratio_projected"], acc["ffn_wall_ratio_in_situ_normalized"]
        )
        >= GOALS["ffn_compute_ratio"],
        "inference_ffn_ge_1.8x_at_all_batch_sizes": all(
            r["speedup"] >= GOALS["inference_ffn_speedup"] for r in inf
        ),
        "inference_ffn_ge_1.8x_at_largest_batch": inf[-1]["speedup"] >= GOALS["inference_ffn_speedup"],
        "ssd_moefies_better_than_dense_at_k/E=1/4": meas["ssd"]["loss_increase_vs_k"][k4]
        < meas["dense"]["loss_increase_vs_k"][k4],
        "ari_rises_over_training": bool(aris)
        and statistics.mean(a for _, a in aris[half:]) > statistics.mean(a for _, a in aris[:half]),
        "automatic_dense_sparse_dense": bool(ph) and not ssd_steps[-1].get("bench/sparse_step"),
        "same_data_order_until_first_switch": first_switch is not None and identical_until == first_switch,
        "resume_across_switch_bit_identical": bool(resume.get("ok")),
    }
    return {
        "val_loss": {"dense": dense_loss, "ssd": ssd_loss, "relative_gap": gap},
        "sparse_phases": ph,
        "first_switch_step": first_switch,
        "losses_identical_until_step": identical_until,
        "dense_run_ari": aris,
        "train_loss_last_steps": {"steps": tail, **train_tail},
        "threshold_0.9_counterfactual": {
            "first_switch_step": first09,
            "sparse_steps_at_most": sparse09,
            "ffn_compute_ratio_at_most": 1 / (1 - sparse09 / s.steps * (1 - kfrac)),
        },
        "checks": checks,
    }


# ------------------------------------------------------------------------------------------- plots


def smooth(xs: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x - (xs[i - k] if i >= k else 0.0)
        out.append(acc / min(i + 1, k))
    return out


def plots(
    s: Setup, traces: dict[str, Any], meas: dict[str, Any], summary: dict[str, Any], out_dir: Path
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    mtok = s.tokens_per_step / 1e6
    k = max(1, s.steps // 40)
    colors = {"dense": "tab:blue", "ssd": "tab:red"}
    fig, axes = plt.subplots(3, 1, figsize=(8, 8.5), sharex=True, height_ratios=[3, 1.5, 1.5])
    for v, label in (("dense", "dense only"), ("ssd", "SSD")):
        st = traces[v]["steps"]
        x = [(r["step"] + 1) * mtok for r in st]
        axes[0].plot(
            x, smooth([r["loss"] for r in st], k), c=colors[v], lw=1.2, label=f"{label} train (mean of {k})"
        )
        ev = traces[v]["evals"]
        axes[0].plot(
            [e["step"] * mtok for e in ev],
            [e["val_loss"] for e in ev],
            "o--",
            c=colors[v],
            ms=3,
            lw=0.8,
            label=f"{label} validation",
        )
    d, sd = traces["dense"]["steps"], traces["ssd"]["steps"]
    diff = smooth([b["loss"] - a["loss"] for a, b in zip(d, sd, strict=True)], k)
    axes[1].plot([(r["step"] + 1) * mtok for r in d], diff, c="k", lw=1)
    axes[1].axhline(0, c="gray", lw=0.6)
    aris = summary["dense_run_ari"]
    axes[2].plot(
        [a * mtok for a, _ in aris],
        [v for _, v in aris],
        ".-",
        c=colors["dense"],
        ms=4,
        label="dense-only run",
    )
    ssd_ari = [((r["step"] + 1) * mtok, r["ssd/stability_ari"]) for r in sd if "ssd/stability_ari" in r]
    axes[2].plot(
        [a for a, _ in ssd_ari],
        [v for _, v in ssd_ari],
        "o",
        c=colors["ssd"],
        ms=4,
        label="SSD run (dense phases)",
    )
    axes[2].axhline(s.threshold, c="gray", ls=":", lw=1, label=f"switch threshold {s.threshold:g}")
    for ax in axes:
        for a, b in summary["sparse_phases"]:
            ax.axvspan(a * mtok, b * mtok, color="tab:red", alpha=0.1, lw=0)
            ax.axvline(a * mtok, c="tab:red", lw=0.6, ls="--")
            ax.axvline(b * mtok, c="tab:green", lw=0.6, ls="--")
        ax.grid(alpha=0.3)
    tail = [r["loss"] for r in d[len(d) // 10 :]]
    axes[0].set_ylim(min(tail) - 0.2, max(smooth(tail, k)) + 0.3)
    axes[0].set(
        ylabel="loss",
        title=f"dense vs SSD (top-{s.top_k} of {s.experts}), equal tokens\nshaded: SSD sparse phases "
        "(red line: dense→sparse, green: sparse→dense)",
    )
    axes[0].legend(fontsize=8)
    axes[1].set(ylabel="SSD − dense\ntrain loss")
    axes[2].set(
        ylabel="ARI", xlabel="training tokens (M)", ylim=(min(0.0, *(v for _, v in aris)) - 0.05, 1.02)
    )
    axes[2].legend(fontsize=7, loc="lower right")

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(str(path.relative_to(ROOT)))

    save(fig, "loss_switches.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for v, label in (("dense", "dense only, MoEfied after training"), ("ssd", "SSD, MoEfied after training")):
        inc = meas[v]["loss_increase_vs_k"]
        ks = sorted(int(x) for x in inc)
        axes[0].plot(
            [x / s.experts for x in ks], [math.exp(inc[str(x)]) for x in ks], "o-", c=colors[v], label=label
        )
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="k / E",
        ylabel="perplexity / own dense perplexity",
        title=f"MoE quality vs k/E (E={s.experts})",
    )
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    inf = meas["ssd"]["inference"]
    axes[1].plot(
        [r["tokens"] for r in inf],
        [r["speedup"] for r in inf],
        "o-",
        c=colors["ssd"],
        label=f"k/E={s.top_k}/{s.experts}",
    )
    axes[1].axhline(GOALS["inference_ffn_speedup"], c="gray", ls=":", label="goal 1.8x")
    axes[1].axhline(1.0, c="k", lw=0.6)
    axes[1].set(
        xscale="log",
        xlabel="tokens per forward",
        ylabel="FFN forward speed-up vs dense",
        title="MoE inference FFN speed-up (SSD model)",
    )
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    save(fig, "moe_inference.png")
    return paths


# ------------------------------------------------------------------------------------------- report


def markdown(
    s: Setup,
    quick: bool,
    traces: dict[str, Any],
    meas: dict[str, Any],
    acc: dict[str, Any],
    summary: dict[str, Any],
    resume: dict[str, Any],
    pngs: list[str],
    params: int,
) -> str:
    vl = summary["val_loss"]
    k4 = str(s.top_k)
    yn = {True: "yes", False: "**no**"}
    ch = summary["checks"]
    inf = meas["ssd"]["inference"]
    ks = sorted(int(x) for x in meas["ssd"]["ppl_vs_k"])
    hist = traces["ssd"]["history"]
    switches = ", ".join(f"{h['event']} @ {h['step']}" for h in hist if h["event"] != "cluster")
    a, r_ = acc, resume
    tf, tl = meas["ssd"]["training_ffn"], summary["train_loss_last_steps"]
    cf = summary["threshold_0.9_counterfactual"]
    frac, kfrac = 100 * a["sparse_step_fraction"], f"{s.top_k}/{s.experts}"
    lines = [
        f"# SSD vs dense at equal tokens ({'quick' if quick else 'full'})",
        "",
        f"ReLU decoder d={s.dim}, {s.n_layers} layers, {s.n_heads} heads, d_ff={s.ffn_dim} (plain), "
        f"vocab 4096 (tied), {params / 1e6:.2f}M parameters; `{RECIPE}` with the model shrunk for 1 CPU "
        f"thread. {s.steps} steps × {s.tokens_per_step} tokens = {s.steps * s.tokens_per_step / 1e6:.2f}M "
        f"tokens, same init, data order and WSD schedule (lr {s.lr:g}) for both runs. SSD: E={s.experts} "
        f"experts of {s.ffn_dim // s.experts}, top-{s.top_k} (k/E = {s.top_k / s.experts:g}), re-cluster "
        f"every {s.interval} steps, switch when ARI ≥ {s.threshold:g}, sparse phases of {s.sparse_steps} "
        f"steps, last {s.final_dense_fraction:.0%} dense. Validation: {meas['val_tokens']} tokens of the "
        f"held-out play. 1 thread; `python benchmarks/ssd/run.py{' --quick' if quick else ''}`.",
        "",
        "## Goals",
        "",
        "| goal | measured | met |",
        "| --- | --- | --- |",
        f"| final validation loss gap ≤ 1% | dense {vl['dense']:.4f}, SSD {vl['ssd']:.4f} "
        f"({100 * vl['relative_gap']:+.2f}%) | {yn[ch['val_loss_gap_le_1pct']]} |",
        f"| FFN compute ≥ 1.3× less (counted FLOPs) | {a['ffn_compute_ratio_counted']:.2f}× "
        f"({frac:.1f}% sparse steps × (1 − {kfrac}), router included) "
        f"| {yn[ch['ffn_compute_ge_1.3x_counted']]} |",
        f"| FFN compute ≥ 1.3× less (wall-clock, FFN fwd+bwd) | {a['ffn_wall_ratio_projected']:.2f}× "
        f"(sparse-phase FFN {a['ffn_wall_speedup_sparse_phase_controlled']:.2f}× faster, interleaved "
        f"timing); in training {a['ffn_wall_ratio_in_situ_normalized']:.2f}× (load-normalised, sparse "
        f"phase {a['ffn_wall_speedup_sparse_phase_normalized']:.2f}×) "
        f"| {yn[ch['ffn_compute_ge_1.3x_wall_clock']]} |",
        "| MoE inference FFN ≥ 1.8× at k/E = 1/4 | "
        + ", ".join(f"{r['tokens']} tok: {r['speedup']:.2f}×" for r in inf)
        + f" | {yn[ch['inference_ffn_ge_1.8x_at_all_batch_sizes']]} (largest batch: "
        f"{yn[ch['inference_ffn_ge_1.8x_at_largest_batch']]}) |",
        "",
        "## Other checks",
        "",
        "| check | holds |",
        "| --- | --- |",
        *[f"| {k} | {yn[bool(v)]} |" for k, v in ch.items()],
        "",
        "## Training compute",
        "",
        "| quantity | value |",
        "| --- | --- |",
        f"| FFN share of training FLOPs (dense) | {100 * a['ffn_share_of_training_flops']:.1f}% |",
        f"| sparse steps | {a['sparse_steps']} / {s.steps} ({frac:.1f}%) |",
        f"| FFN FLOPs saved | {100 * a['ffn_flops_saved_fraction']:.1f}% "
        f"({a['ffn_compute_ratio_counted']:.2f}×) |",
        f"| total training FLOPs saved | {100 * (1 - 1 / a['total_compute_ratio_counted']):.1f}% "
        f"({a['total_compute_ratio_counted']:.2f}×) |",
        f"| FFN fwd+bwd per step: dense phase / sparse phase / dense-only run (ms, raw medians) | "
        f"{a['ffn_ms_per_step_dense_phase']:.0f} / {a['ffn_ms_per_step_sparse_phase']:.0f} / "
        f"{a['ffn_ms_per_step_dense_run']:.0f} |",
        f"| FFN forward: dense / sparse phase (ms) | {a['ffn_fwd_ms_dense_phase']:.0f} / "
        f"{a['ffn_fwd_ms_sparse_phase']:.0f} |",
        f"| FFN backward: dense / sparse phase (ms) | {a['ffn_bwd_ms_dense_phase']:.0f} / "
        f"{a['ffn_bwd_ms_sparse_phase']:.0f} |",
        f"| step: dense phase / sparse phase / dense-only run (ms, median) | "
        f"{a['step_ms_dense_phase']:.0f} / {a['step_ms_sparse_phase']:.0f} / {a['step_ms_dense_run']:.0f} |",
        f"| SSD callback (re-clustering, switching) | {a['ssd_callback_overhead_s']:.1f} s |",
        f"| training wall time: dense / SSD | {a['train_wall_s']['dense']:.0f} s / "
        f"{a['train_wall_s']['ssd']:.0f} s |",
        "",
        f"Switches (completed steps): {switches}.",
        "",
        f"Training FFN forward + backward at the micro-batch ({tf['tokens']} tokens, all layers, real hidden "
        f"states of the final SSD model, interleaved, median of {s.repeats}): dense {tf['dense_ms']:.1f} ms, "
        f"MoE k={s.top_k} {tf['moe_ms']:.1f} ms, {tf['speedup']:.2f}×.",
        "",
        "FFN time per step inside the runs, by phase (medians; the CPU is shared with another job whose "
        "load changed during the SSD run: compare FFN / rest of step, which cancels a uniform slow-down):",
        "",
        "| steps | SSD mode | FFN fwd+bwd (ms) | step (ms) | FFN / rest of step | dense-only run FFN (ms) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *[
            f"| {p['steps'][0]}–{p['steps'][1]} | {'sparse' if p['sparse'] else 'dense'} | "
            f"{p['ffn_ms']:.0f} | {p['step_ms']:.0f} | {p['ffn_over_rest']:.3f} | "
            f"{p['dense_run_ffn_ms']:.0f} |"
            for p in a["per_phase"]
        ],
        "",
        f"Training loss, mean of the last {tl['steps']} steps: dense {tl['dense']:.4f}, SSD {tl['ssd']:.4f} "
        f"({100 * (tl['ssd'] / tl['dense'] - 1):+.2f}%).",
        "",
        f"Switch threshold: the recipes' default τ = 0.9 is first reached by the dense-only run at step "
        f"{cf['first_switch_step']}; an SSD run is bit-identical to it until its first switch, so with "
        f"τ = 0.9 it would have trained at most {cf['sparse_steps_at_most']} steps sparse "
        f"(≤ {cf['ffn_compute_ratio_at_most']:.2f}× FFN FLOPs).",
        "",
        "## MoE quality vs k/E (both final models MoEfied alike: balanced k-means, centroid router)",
        "",
        f"Perplexity on {meas['curve_tokens']} held-out tokens; in brackets the increase over the model's "
        "own dense perplexity (k = E).",
        "",
        "| model | " + " | ".join(f"k={k} ({k / s.experts:g})" for k in ks) + " |",
        "| --- |" + " ---: |" * len(ks),
        *[
            f"| {label} | "
            + " | ".join(
                f"{meas[v]['ppl_vs_k'][str(k)]:.1f} "
                f"({100 * math.expm1(meas[v]['loss_increase_vs_k'][str(k)]):+.1f}%)"
                for k in ks
            )
            + " |"
            for v, label in (("dense", "dense only"), ("ssd", "SSD"))
        ],
        "",
        f"## MoE inference FFN forward (SSD model, k={k4} of {s.experts}, all layers, real hidden states)",
        "",
        "| tokens per forward | dense (ms) | MoE (ms) | speed-up | expert matmuls alone (ms) | dense / "
        "expert matmuls | load max/mean |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {r['tokens']} | {r['dense_ms']:.3f} | {r['moe_ms']:.3f} | {r['speedup']:.2f}× "
            f"| {r['expert_matmuls_ms']:.3f} | {r['speedup_expert_matmuls_only']:.2f}× "
            f"| {r['load_max_over_mean']:.2f} |"
            for r in inf
        ],
        "",
        "## Resume across an automatic switch",
        "",
    ]
    if "checkpoint_step" in resume:
        lines.append(
            f"Checkpoint saved inside the first sparse phase at step {r_['checkpoint_step']}; the resumed "
            f"run (steps {r_['resumed_steps'][0]}–{r_['resumed_steps'][-1]}) switched back to dense at step "
            f"{r_['switch_back_step_resumed']} (uninterrupted run: {r_['switch_back_step_original']}); "
            f"max |loss difference| {r_['max_abs_loss_diff']:.3g}, modes identical: "
            f"{r_['modes_identical']}."
        )
    else:
        lines.append(f"Not run: {resume.get('reason')}.")
    lines += [
        "",
        "'Expert matmuls alone': the MoE's per-expert matmuls and activation with routing, dispatch and "
        "combine done beforehand: the speed-up left if those cost nothing.",
        "",
        f"Wall time: training {a['train_wall_s']['dense']:.0f} s (dense) + {a['train_wall_s']['ssd']:.0f} s "
        f"(SSD), resume check {r_.get('seconds', 0.0):.0f} s, measurements "
        f"{sum(meas[v]['measure_seconds'] for v in ('dense', 'ssd')):.0f} s.",
        "",
        "Interpretation, what falls short and why: docs/ssd_experiment.md.",
        "",
        *[f"![{Path(p).stem}]({Path(p).relative_to('benchmarks/results')})" for p in pngs],
        "",
    ]
    return "\n".join(lines)


def compact_trace(trace: dict[str, Any]) -> dict[str, Any]:
    """Per-step columns, rounded (the full records stay in RUN_DIR/bench_trace.json)."""
    st = trace["steps"]
    return {
        "loss": [round(r["loss"], 4) for r in st],
        "sparse": [int(r.get("bench/sparse_step", 0.0)) for r in st],
        "step_ms": [round(1e3 * r["bench/step_s"], 1) for r in st],
        "ffn_ms": [round(1e3 * (r["bench/ffn_fwd_s"] + r["bench/ffn_bwd_s"]), 1) for r in st],
        "stability_ari": [
            [r["step"] + 1, round(r["ssd/stability_ari"], 4)] for r in st if "ssd/stability_ari" in r
        ],
        "evals": trace["evals"],
        "seconds": trace["seconds"],
    }


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, a few steps (smoke test)")
    ap.add_argument(
        "--probe", type=float, default=0.0, help="seconds of dense training: print tokens/s, ARI; exit"
    )
    ap.add_argument("--retrain", action="store_true", help="train even when a finished run exists")
    ap.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    ap.add_argument("--only", default="", help="train this variant (dense or ssd) and exit")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.chdir(ROOT)
    s = QUICK if args.quick else FULL
    if args.steps:
        s = dataclasses.replace(s, steps=args.steps)
    mode = "quick" if args.quick else "full"
    base = Path(f"runs/{NAME}_bench/{mode}")
    ensure_quickstart_data(make_config(s, "dense", base / "dense"))
    if args.probe:
        probe(s, args.probe)
        return
    started = time.perf_counter()
    name = NAME if mode == "full" else f"{NAME}_quick"
    runs = {v: base / v for v in ("dense", "ssd")}
    if args.only:
        train_variant(s, args.only, runs[args.only], args.retrain)
        return
    traces = {v: train_variant(s, v, d, args.retrain) for v, d in runs.items()}
    resume = resume_check(s, traces["ssd"], base / "ssd_resume")
    print(f"[{NAME}] resume check: {resume}", flush=True)
    meas = measure(s, runs)
    cfg = make_config(s, "ssd", runs["ssd"])
    acc = accounting(s, traces, meas, cfg.model.vocab_size)
    summary = summarize(s, traces, meas, acc, resume)
    pngs = plots(s, traces, meas, summary, RESULTS_DIR / name)
    params = cfg.model.num_params()
    payload = {
        "name": name,
        "config": {
            "quick": args.quick,
            "setup": dataclasses.asdict(s),
            "recipe": RECIPE,
            "overrides": overrides(s, "ssd", runs["ssd"]),
            "goals": GOALS,
        },
        "machine": machine_info(),
        "params": params,
        "summary": summary,
        "accounting": acc,
        "measured": meas,
        "resume": resume,
        "ssd_history": traces["ssd"]["history"],
        "traces": {v: compact_trace(t) for v, t in traces.items()},
        "plots": pngs,
        "wall_seconds": time.perf_counter() - started,
    }
    md = markdown(s, args.quick, traces, meas, acc, summary, resume, pngs, params)
    json_path, md_path = write_results(name, payload, md)
    wrote = f"{json_path.relative_to(ROOT)}, {md_path.relative_to(ROOT)}"
    print(f"[{NAME}] wrote {wrote} in {payload['wall_seconds']:.0f} s")
    for k, ok in summary["checks"].items():
        print(f"  {k}: {ok}")


if __name__ == "__main__":
    main()
