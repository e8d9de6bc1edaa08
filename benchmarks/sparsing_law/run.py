"""Sparsing Law / ReLU² Wins at toy scale: ReLU, ReLU², SwiGLU and ReGLU trained alike, sparsity measured.

Four parameter-matched decoders (plain FFNs d_ff = 4d, gated ones ≈ 2/3 of that) are trained on the
quickstart Shakespeare corpus with the same init seed, data order, schedule and token budget. Measured:

- activation ratio over training: `ActivationRatioCallback` on training batches (|a| > 0, and a CETT-0.2
  estimate), plus PPL-1% sparsity (Sparsing Law's two-level CETT search) at every saved checkpoint;
- at the end: validation loss, PPL-1% sparsity per layer, perplexity vs sparsity over CETT targets;
- predictivity: per-layer low-rank predictors of CETT-0.2-active neurons at equal predictor size;
- hardware affinity: token reuse over sliding windows and blocks touched after co-activation reordering.

    python benchmarks/sparsing_law/run.py            # full (~35 min on 1 thread)
    python benchmarks/sparsing_law/run.py --quick    # smoke (< 2 min)
    python benchmarks/sparsing_law/run.py --probe    # train each variant ~15 s, print tokens/s

Writes benchmarks/results/sparsing_law{,_quick}.{json,md} and PNGs under benchmarks/results/sparsing_law/.
Training runs go to runs/sparsing_law/{full,quick}/VARIANT (reused when complete unless --retrain).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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
    write_results,
)
from densa.config.load import load_recipe_dict  # noqa: E402
from densa.config.schema import RunConfig  # noqa: E402
from densa.models.checkpoint_io import build_transformer  # noqa: E402
from densa.sparsity import (  # noqa: E402
    CETTSearch,
    SparsityReport,
    collect_ffn,
    count_active,
    eval_loss,
    make_sequences,
    neuron_thresholds,
    ppl_p_sparsity,
)
from densa.sparsity.affinity import chunking, token_reuse  # noqa: E402
from densa.sparsity.callback import ActivationRatioCallback  # noqa: E402
from densa.sparsity.predictor import evaluate_predictor, train_predictor  # noqa: E402
from densa.train.callbacks import Callback  # noqa: E402
from densa.train.checkpoint import checkpoint_weights, complete_checkpoints  # noqa: E402

NAME = "sparsing_law"
DATA, TOKENIZER = QUICKSTART_DATA, QUICKSTART_TOKENIZER  # benchmarks.common: the quickstart data
VOCAB = 4096
VARIANTS: dict[str, tuple[str, bool]] = {  # name -> (activation, gated)
    "relu": ("relu", False),
    "relu2": ("relu2", False),
    "reglu": ("relu", True),
    "swiglu": ("silu", True),
}
LABELS = {"relu": "ReLU", "relu2": "ReLU²", "reglu": "ReGLU", "swiglu": "SwiGLU"}
COLORS = {"relu": "tab:blue", "relu2": "tab:red", "reglu": "tab:green", "swiglu": "tab:orange"}
LIVE_CETT = 0.2  # CETT target of the live estimate, the predictor labels and the affinity active sets
SWEEP = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class Setup:
    dim: int
    n_layers: int
    n_heads: int
    ffn_plain: int
    ffn_gated: int
    seq_len: int
    batch_seqs: int
    steps: int
    warmup: int
    ratio_interval: int
    ckpt_interval: int
    calib_tokens: int
    """Tokens of the held-out play used for every PPL-1% measurement (same text at every checkpoint)."""
    cett_tokens: int
    predictor_tokens: int
    test_tokens: int
    """Held-out tokens (after the predictor's) for predictor evaluation and hardware affinity."""
    rank_plain: int
    live_tokens: int
    lr: float = 2e-3
    repeat_variants: tuple[str, ...] = ("swiglu",)
    """Variants whose PPL-1% is also measured on a second, disjoint window at every checkpoint (noise check:
    SwiGLU's PPL-vs-sparsity curve is flat near +1%, so its PPL-1% point moves most)."""

    def ffn_dim(self, gated: bool) -> int:
        return self.ffn_gated if gated else self.ffn_plain

    def rank(self, gated: bool) -> int:
        """Predictor rank giving (about) the same predictor size r·(d + d_ff) for every variant."""
        size = self.rank_plain * (self.dim + self.ffn_plain)
        return round(size / (self.dim + self.ffn_dim(gated))) if gated else self.rank_plain

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_seqs


FULL = Setup(
    dim=256,
    n_layers=4,
    n_heads=4,
    ffn_plain=1024,
    ffn_gated=688,
    seq_len=128,
    batch_seqs=16,
    steps=400,
    warmup=20,
    ratio_interval=20,
    ckpt_interval=80,
    calib_tokens=8192,
    cett_tokens=4096,
    predictor_tokens=8192,
    test_tokens=4096,
    rank_plain=16,
    live_tokens=1024,
)
QUICK = Setup(
    dim=64,
    n_layers=2,
    n_heads=2,
    ffn_plain=256,
    ffn_gated=176,
    seq_len=64,
    batch_seqs=8,
    steps=20,
    warmup=2,
    ratio_interval=5,
    ckpt_interval=10,
    calib_tokens=1024,
    cett_tokens=512,
    predictor_tokens=1024,
    test_tokens=512,
    rank_plain=8,
    live_tokens=256,
)


# ------------------------------------------------------------------------------------------- data


def ensure_data() -> None:
    """The quickstart tokenizer and train/valid prefixes, created by the quickstart pipeline when absent."""
    ensure_quickstart_data(make_config(FULL, "swiglu", Path("runs/sparsing_law/prepare")))


@dataclass
class Calibration:
    ppl: torch.Tensor
    predictor: torch.Tensor
    test: torch.Tensor
    ppl_repeat: torch.Tensor


def calibration(s: Setup) -> Calibration:
    """Disjoint windows of the held-out play: PPL-1%, predictor training, test, repeat PPL-1%."""
    sizes = [s.calib_tokens, s.predictor_tokens, s.test_tokens, s.calib_tokens]
    per = [math.ceil(n / s.seq_len) * (s.seq_len + 1) for n in sizes]
    tokens = dataset_tokens(f"{DATA}/valid", sum(per))
    out, start = [], 0
    for n, p in zip(sizes, per):
        out.append(make_sequences(tokens[start : start + p], s.seq_len, n))
        start += p
    return Calibration(*out)


# ------------------------------------------------------------------------------------------- training


def make_config(s: Setup, variant: str, run_dir: Path) -> RunConfig:
    activation, gated = VARIANTS[variant]
    recipe: dict[str, Any] = {
        "run": {"name": f"{NAME}_{variant}", "out_dir": str(run_dir), "seed": 1234},
        "model": {
            "vocab_size": VOCAB,
            "dim": s.dim,
            "n_layers": s.n_layers,
            "n_heads": s.n_heads,
            "n_kv_heads": s.n_heads,
            "ffn_dim": s.ffn_dim(gated),
            "activation": activation,
            "gated": gated,
            "tie_embeddings": True,
            "max_seq_len": s.seq_len,
        },
        "data": {
            "train": [{"path": f"{DATA}/train"}],
            "valid": [{"path": f"{DATA}/valid"}],
            "seq_len": s.seq_len,
            "tokenizer": TOKENIZER,
        },
        "optim": {"lr": s.lr, "betas": [0.9, 0.95], "weight_decay": 0.1, "grad_clip": 1.0},
        "schedule": {
            "kind": "wsd",
            "warmup_steps": s.warmup,
            "decay_fraction": 0.25,
            "decay_shape": "1-sqrt",
            "min_lr_ratio": 0.05,
        },
        "batch": {"global_tokens": s.tokens_per_step, "micro_batch": s.batch_seqs},
        "train": {"steps": s.steps},
        "parallel": {"zero_stage": 0, "precision": "fp32"},
        "checkpoint": {"interval": s.ckpt_interval, "keep_last": 100, "resume": "none"},
        "logging": {"log_interval": s.ratio_interval, "tensorboard": False, "progress": False},
        "eval": {"interval": 0, "max_batches": 8},
    }
    return load_recipe_dict(recipe, source=f"benchmarks/{NAME}/run.py")


class NamedRatio(ActivationRatioCallback):
    """`ActivationRatioCallback` under its own name and metric prefix, so two can run side by side."""

    def __init__(self, tag: str, interval: int, **kwargs: Any) -> None:
        super().__init__(interval, **kwargs)
        self.tag = tag

    @property
    def name(self) -> str:
        return f"ActivationRatio/{self.tag}"

    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        local: dict[str, Any] = {}
        super().post_step(trainer, step, local)
        metrics.update({k.replace("sparsity/", f"sparsity/{self.tag}/", 1): v for k, v in local.items()})


class Recorder(Callback):
    """Keeps every step's loss and any sparsity metrics (the step is the number of updates done before
    the forward the activations come from). Written to RUN_DIR/sparsity_trace.json at the end."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.ratios: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        self.losses.append(float(metrics["train/loss"]))
        found = {k: v for k, v in metrics.items() if k.startswith("sparsity/")}
        if found:
            self.ratios.append({"step": step, **found})

    def on_train_end(self, trainer: Any, step: int) -> None:
        trace = {"losses": self.losses, "ratios": self.ratios, "seconds": time.perf_counter() - self.started}
        Path(trainer.run_dir, "sparsity_trace.json").write_text(json.dumps(trace) + "\n")


def train_variant(s: Setup, variant: str, run_dir: Path, retrain: bool) -> dict[str, Any]:
    """Train (unless a finished run with the same recipe exists); returns the recorded trace."""
    from densa.train.run import build_trainer

    cfg = make_config(s, variant, run_dir)
    trace_path = run_dir / "sparsity_trace.json"
    reused = reuse_or_reset_run(cfg, run_dir, trace_path.name, f"[{NAME}] {variant}", retrain)
    if reused is not None:
        return reused
    callbacks = [
        NamedRatio("nonzero", s.ratio_interval, max_tokens=s.live_tokens),
        NamedRatio(f"cett{LIVE_CETT:g}", s.ratio_interval, cett=LIVE_CETT, max_tokens=s.live_tokens),
        Recorder(),
    ]
    print(f"[{NAME}] {variant}: training {s.steps} steps → {run_dir}", flush=True)
    build_trainer(cfg, callbacks=callbacks).fit()
    return json.loads(trace_path.read_text())


def probe(s: Setup, seconds: float) -> None:
    """Train each variant for ~`seconds` and print tokens/s and the steps a 7-minute budget allows."""
    from densa.train.run import build_trainer

    for name in VARIANTS:
        run_dir = Path(f"runs/{NAME}/probe/{name}")
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        cfg = make_config(dataclasses.replace(s, steps=10_000, ckpt_interval=10_000), name, run_dir)

        class Stop(Callback):
            variant = name

            def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
                if step == 2:
                    self.t0 = time.perf_counter()
                elif step > 2 and time.perf_counter() - self.t0 > seconds:
                    rate = (step - 2) * s.tokens_per_step / (time.perf_counter() - self.t0)
                    steps = int(420 * rate / s.tokens_per_step)
                    print(f"{self.variant}: {rate:.0f} tokens/s → {steps} steps / 7 min")
                    trainer.request_stop()

        build_trainer(cfg, callbacks=[Stop()]).fit()
        shutil.rmtree(run_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------- measurement


def load_checkpoint(cfg: RunConfig, folder: Path) -> torch.nn.Module:
    return build_transformer(cfg.model, checkpoint_weights(folder))


def nonzero_ratio(model: torch.nn.Module, seqs: torch.Tensor) -> tuple[float, list[float]]:
    """(validation loss, per-layer fraction of non-zero activations) on `seqs`."""
    with count_active(model) as counter:
        loss = eval_loss(model, seqs)
    return loss, counter.activation_ratio()


def active_sets(model: torch.nn.Module, seqs: torch.Tensor, thresholds: list[float]) -> list[torch.Tensor]:
    """Per layer: bool [num_seqs, seq_len, ffn_dim], |a_i| above its CETT-derived per-neuron threshold."""
    records = collect_ffn(model, seqs)
    per_neuron = neuron_thresholds(model, thresholds)
    n, t = seqs.shape[0], seqs.shape[1] - 1
    return [(a.abs() > thr).reshape(n, t, -1) for a, thr in zip(records.acts, per_neuron)]


def new_loads(active: torch.Tensor, windows: tuple[int, ...]) -> dict[int, float]:
    """Neurons a w-token sliding-window cache must load anew per token, as a fraction of all neurons:
    mean over tokens t ≥ 1 of |S_t minus (S_(t−w) ∪ … ∪ S_(t−1))| / ffn_dim. Unlike 1 − reuse it also
    counts how many neurons are active at all."""
    counts = torch.cat([torch.zeros_like(active[:, :1], dtype=torch.int32), active.int().cumsum(1)], 1)
    t = torch.arange(1, active.shape[1])
    out = {}
    for w in windows:
        seen = (counts[:, t] - counts[:, (t - w).clamp_min(0)]) > 0
        out[w] = float((active[:, 1:] & ~seen).float().mean())
    return out


def predictor_metrics(
    model: torch.nn.Module, cal: Calibration, thresholds: list[float], rank: int
) -> list[dict[str, float]]:
    """Per layer: a rank-`rank` predictor trained on one text window, evaluated on the next (held-out).

    Besides recall/precision at p ≥ 0.5 and AP: recall when the predictor may select a fixed budget of
    neurons per token (its top-k logits, k = 10% / 20% of ffn_dim: equal compute for every variant), and
    at the oracle budget (k = the layer's mean number of truly active neurons; a perfect predictor scores 1).
    """
    per_neuron = neuron_thresholds(model, thresholds)
    train = collect_ffn(model, cal.predictor, inputs=True)
    test = collect_ffn(model, cal.test, inputs=True)
    assert train.inputs is not None and test.inputs is not None
    out = []
    for j, thr in enumerate(per_neuron):
        labels_tr, labels_te = train.acts[j].abs() > thr, test.acts[j].abs() > thr
        predictor, _ = train_predictor(train.inputs[j], labels_tr, rank, seed=0, layer=j)
        m = evaluate_predictor(predictor, test.inputs[j], labels_te, layer=j).to_dict()
        with torch.no_grad():
            logits = predictor(test.inputs[j])
        ffn = labels_te.shape[1]
        budgets = {"oracle_budget": float(labels_te.float().mean()), "budget_10pct": 0.1, "budget_20pct": 0.2}
        for key, frac in budgets.items():
            k = max(1, round(frac * ffn))
            picked = torch.zeros_like(labels_te).scatter_(1, logits.topk(k, dim=1).indices, True)
            m[f"recall_at_{key}"] = float((picked & labels_te).sum() / labels_te.sum().clamp_min(1))
        m["predictor_params"] = rank * (test.inputs[j].shape[1] + ffn)
        out.append(m)
    return out


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


PREDICTOR_KEYS = (
    "recall",
    "precision",
    "true_sparsity",
    "predicted_sparsity",
    "average_precision",
    "recall_at_oracle_budget",
    "recall_at_budget_10pct",
    "recall_at_budget_20pct",
)


def analyze(model: torch.nn.Module, cal: Calibration, thresholds: list[float], rank: int) -> dict[str, Any]:
    """Predictivity and hardware affinity of the active sets defined by `thresholds` (layer thresholds)."""
    predictor = predictor_metrics(model, cal, thresholds, rank)
    sets = active_sets(model, cal.test, thresholds)
    reuse = [token_reuse(a, (1, 4, 16)) for a in sets]
    loads = [new_loads(a, (1, 4, 16)) for a in sets]
    chunks = [chunking(a.reshape(-1, a.shape[-1]), (4, 8, 16)) for a in sets]
    return {
        "activation_ratio": mean([float(a.float().mean()) for a in sets]),
        "predictor": {
            "rank": rank,
            "layers": predictor,
            **{f"mean_{k}": mean([m[k] for m in predictor]) for k in PREDICTOR_KEYS},
        },
        "token_reuse": {str(w): mean([r[w] for r in reuse]) for w in (1, 4, 16)},
        "new_loads": {str(w): mean([x[w] for x in loads]) for w in (1, 4, 16)},
        "chunking": [
            {key: mean([c[i][key] for c in chunks]) for key in chunks[0][i]} for i in range(len(chunks[0]))
        ],
    }


def ppl1_key(s: Setup, seqs: torch.Tensor, sweep: tuple[float, ...]) -> str:
    return f"{s.seq_len}:{seqs.shape[0]}:{s.cett_tokens}:{list(sweep)}:{int(seqs.sum())}"


def ppl1(
    model: torch.nn.Module, seqs: torch.Tensor, s: Setup, sweep: tuple[float, ...], cache: Path
) -> tuple[dict[str, Any], SparsityReport | None]:
    """(checkpoint point, PPL-1% report) on `seqs`; memoised in `cache` (keyed by the measurement setup;
    a cached entry may hold only the point)."""
    key = ppl1_key(s, seqs, sweep)
    if cache.exists():
        hit = json.loads(cache.read_text())
        if hit["key"] == key:
            return hit["point"], SparsityReport.from_dict(hit["report"]) if hit.get("report") else None
    loss, nz = nonzero_ratio(model, seqs)
    search = CETTSearch(model, seqs, max_cett_tokens=s.cett_tokens)
    report = ppl_p_sparsity(model, seqs, p=1.0, sweep=sweep, search=search)
    point = {
        "val_loss": loss,
        "nonzero_ratio": mean(nz),
        "nonzero_ratio_per_layer": nz,
        "ppl1_sparsity": report.sparsity,
        "ppl1_cett": report.cett_target,
        "ppl1_ratio": report.ppl_ratio,
        "ppl1_converged": report.converged,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "point": point, "report": report.to_dict()}) + "\n")
    return point, report


def measure_variant(s: Setup, variant: str, run_dir: Path, cal: Calibration) -> dict[str, Any]:
    cfg = make_config(s, variant, run_dir)
    windows = {"main": cal.ppl, **({"repeat": cal.ppl_repeat} if variant in s.repeat_variants else {})}
    over_training: dict[str, list[dict[str, Any]]] = {w: [] for w in windows}
    final: dict[str, Any] = {}
    for step, folder in complete_checkpoints(run_dir):
        model = load_checkpoint(cfg, folder)
        last = step == s.steps
        for window, seqs in windows.items():
            t0 = time.perf_counter()
            sweep = SWEEP if last and window == "main" else ()
            point, report = ppl1(model, seqs, s, sweep, run_dir / "measure" / f"{window}_step_{step}.json")
            over_training[window].append({"step": step, "tokens": step * s.tokens_per_step, **point})
            print(
                f"[{NAME}] {variant} step {step} ({window}): val loss {point['val_loss']:.4f}, non-zero "
                f"{100 * point['nonzero_ratio']:.1f}%, PPL-1% sparsity {100 * point['ppl1_sparsity']:.1f}% "
                f"(c={point['ppl1_cett']:.4f}, {time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        if not last:
            continue
        point, report = ppl1(model, cal.ppl, s, SWEEP, run_dir / "measure" / f"main_step_{step}.json")
        assert report is not None, "the final checkpoint's cache entry must hold its report"
        report.meta.update(model=f"{LABELS[variant]} step {step}", variant=variant)
        search = CETTSearch(model, cal.ppl, max_cett_tokens=s.cett_tokens)
        live = [t for t, _ in search.thresholds(LIVE_CETT)]
        ppl_live, sp_live = search.point(LIVE_CETT)
        t1 = time.perf_counter()
        rank = s.rank(VARIANTS[variant][1])
        final = {
            "val_loss": point["val_loss"],
            "val_ppl": math.exp(point["val_loss"]),
            "nonzero_ratio_per_layer": point["nonzero_ratio_per_layer"],
            "report": report.to_dict(),
            f"cett{LIVE_CETT:g}": {"ppl_ratio": ppl_live / search.ppl_dense, "sparsity": sp_live},
            "labels": {
                "ppl1": analyze(model, cal, report.thresholds, rank),
                f"cett{LIVE_CETT:g}": analyze(model, cal, live, rank),
            },
        }
        print(f"[{NAME}] {variant}: predictors + affinity {time.perf_counter() - t1:.0f} s", flush=True)
    return {
        "over_training": over_training["main"],
        "over_training_repeat": over_training.get("repeat", []),
        "final": final,
    }


def trend(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return float("nan")
    mx, my = mean([x for x, _ in points]), mean([y for _, y in points])
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else float("nan")


# ------------------------------------------------------------------------------------------- plots


def plots(s: Setup, results: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(str(path.relative_to(ROOT)))

    cett_key = f"sparsity/cett{LIVE_CETT:g}/activation_ratio"
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for v, r in results.items():
        trace = r["trace"]["ratios"]
        toks = [p["step"] * s.tokens_per_step / 1e6 for p in trace]
        axes[0].plot(
            toks, [100 * p["sparsity/nonzero/activation_ratio"] for p in trace], label=LABELS[v], c=COLORS[v]
        )
        axes[1].plot(toks, [100 * p[cett_key] for p in trace], label=LABELS[v], c=COLORS[v])
        ot = r["measured"]["over_training"]
        axes[2].plot(
            [p["tokens"] / 1e6 for p in ot],
            [100 * (1 - p["ppl1_sparsity"]) for p in ot],
            "o-",
            label=LABELS[v],
            c=COLORS[v],
        )
        rep = r["measured"]["over_training_repeat"]
        if rep:
            axes[2].plot(
                [p["tokens"] / 1e6 for p in rep],
                [100 * (1 - p["ppl1_sparsity"]) for p in rep],
                "o--",
                mfc="none",
                label=f"{LABELS[v]} (repeat window)",
                c=COLORS[v],
            )
    axes[2].legend(fontsize=7)
    titles = (
        "non-zero activations (training batch)",
        f"CETT-{LIVE_CETT:g} activation ratio (training batch)",
        "PPL-1% activation ratio (checkpoints)",
    )
    for ax, title in zip(axes, titles):
        ax.set(xlabel="training tokens (M)", ylabel="activation ratio (%)", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    save(fig, "activation_ratio_vs_tokens.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for v, r in results.items():
        rep = r["measured"]["final"]["report"]
        pts = sorted(rep["curve"], key=lambda p: p["sparsity"])
        ax.plot(
            [100 * p["sparsity"] for p in pts],
            [p["ppl"] / rep["ppl_dense"] for p in pts],
            "o-",
            ms=3,
            label=LABELS[v],
            c=COLORS[v],
        )
        ax.scatter([100 * rep["sparsity"]], [rep["ppl_ratio"]], c=COLORS[v], marker="*", s=120, zorder=3)
    ax.axhline(1.01, c="k", ls=":", lw=1, label="PPL +1%")
    ax.set(
        xlabel="sparsity (%)",
        ylabel="PPL / dense PPL",
        ylim=(0.995, 1.2),
        xlim=(0, 100),
        title="PPL vs sparsity over CETT targets",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "ppl_vs_sparsity.png")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.8 / len(results)
    for i, (v, r) in enumerate(results.items()):
        layers = r["measured"]["final"]["report"]["layers"]
        ax.bar(
            [x["layer"] + (i - (len(results) - 1) / 2) * width for x in layers],
            [100 * x["sparsity"] for x in layers],
            width,
            label=LABELS[v],
            color=COLORS[v],
        )
    n_layers = len(next(iter(results.values()))["measured"]["final"]["report"]["layers"])
    ax.set(xlabel="layer", ylabel="PPL-1% sparsity (%)", ylim=(0, 118), xticks=range(n_layers))
    ax.set_title("PPL-1% sparsity per layer (final)")
    ax.legend(ncol=4, fontsize=8, loc="upper center")
    save(fig, "per_layer_sparsity.png")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for v, r in results.items():
        losses = r["trace"]["losses"]
        k = max(1, len(losses) // 50)
        smooth = [mean(losses[max(0, i - k) : i + 1]) for i in range(len(losses))]
        ax.plot(
            [(i + 1) * s.tokens_per_step / 1e6 for i in range(len(losses))],
            smooth,
            label=LABELS[v],
            c=COLORS[v],
        )
    ax.set(xlabel="training tokens (M)", ylabel="train loss", title="training loss (running mean)")
    ax.set_ylim(
        top=min(
            8.5,
            max(max(r["trace"]["losses"][len(r["trace"]["losses"]) // 5 :]) for r in results.values()) + 0.2,
        )
    )
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "loss.png")
    return paths


# ------------------------------------------------------------------------------------------- report


LABEL_SETS = ("ppl1", f"cett{LIVE_CETT:g}")
LABEL_NAMES = {"ppl1": "PPL-1% thresholds", f"cett{LIVE_CETT:g}": f"CETT-{LIVE_CETT:g} thresholds"}


def summarize(s: Setup, results: dict[str, Any]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    live_key = f"sparsity/cett{LIVE_CETT:g}/activation_ratio"
    for v, r in results.items():
        fin, ot, trace = r["measured"]["final"], r["measured"]["over_training"], r["trace"]
        rep = r["measured"]["over_training_repeat"]
        tail = trace["losses"][-max(1, len(trace["losses"]) // 10) :]
        late = [p for p in trace["ratios"] if p["step"] >= s.steps // 5]
        mtok = s.tokens_per_step / 1e6
        rows[v] = {
            "final_train_loss": mean(tail),
            "val_loss": fin["val_loss"],
            "ppl1_sparsity": fin["report"]["sparsity"],
            "nonzero_ratio": mean(fin["nonzero_ratio_per_layer"]),
            f"cett{LIVE_CETT:g}_sparsity": fin[f"cett{LIVE_CETT:g}"]["sparsity"],
            "ppl1_activation_ratio_first_ckpt": 1 - ot[0]["ppl1_sparsity"],
            "ppl1_activation_ratio_last_ckpt": 1 - ot[-1]["ppl1_sparsity"],
            "ppl1_ratio_slope_per_mtok": trend([(p["tokens"] / 1e6, 1 - p["ppl1_sparsity"]) for p in ot]),
            "ppl1_ratio_slope_per_mtok_repeat": trend(
                [(p["tokens"] / 1e6, 1 - p["ppl1_sparsity"]) for p in rep]
            ),
            "live_cett_ratio_slope_per_mtok": trend([(p["step"] * mtok, p[live_key]) for p in late]),
            "live_nonzero_ratio_slope_per_mtok": trend(
                [(p["step"] * mtok, p["sparsity/nonzero/activation_ratio"]) for p in late]
            ),
            "train_seconds": trace["seconds"],
        }
        for lab in LABEL_SETS:
            a = fin["labels"][lab]
            rows[v][lab] = {
                "activation_ratio": a["activation_ratio"],
                **{k: a["predictor"][f"mean_{k}"] for k in PREDICTOR_KEYS},
                "token_reuse": a["token_reuse"],
                "new_loads": a["new_loads"],
                "blocks_touched_reordered_g8": next(
                    c["reordered"] for c in a["chunking"] if c["block_size"] == 8
                ),
            }
    sp = {v: r["ppl1_sparsity"] for v, r in rows.items()}
    losses = [r["val_loss"] for r in rows.values()]
    family = [v for v in ("relu", "relu2", "reglu") if v in rows]
    checks: dict[str, bool] = {
        "val losses within 3%": (max(losses) - min(losses)) / min(losses) <= 0.03,
        "PPL-1%: ReLU² ≥ ReLU, ReGLU (−1 pt)": sp["relu2"] >= max(sp["relu"], sp["reglu"]) - 0.01,
        "PPL-1%: every ReLU-family model ≥ 10 pts sparser than SwiGLU": min(sp[v] for v in family)
        > sp["swiglu"] + 0.1,
        "PPL-1% activation ratio falls over training (ReLU, ReLU², ReGLU)": all(
            rows[v]["ppl1_ratio_slope_per_mtok"] < 0 for v in family
        ),
        "PPL-1% activation ratio rises over training (SwiGLU)": rows["swiglu"]["ppl1_ratio_slope_per_mtok"]
        > 0,
    }
    if not math.isnan(rows["swiglu"]["ppl1_ratio_slope_per_mtok_repeat"]):
        checks["… and on the repeat window"] = rows["swiglu"]["ppl1_ratio_slope_per_mtok_repeat"] > 0
    for lab in LABEL_SETS:
        col = {v: rows[v][lab] for v in rows}
        tag = f" ({LABEL_NAMES[lab]})"
        checks["ReLU² best predictor recall at a 20% budget" + tag] = (
            col["relu2"]["recall_at_budget_20pct"]
            >= max(c["recall_at_budget_20pct"] for c in col.values()) - 0.005
        )
        checks["SwiGLU worst predictor recall at a 20% budget" + tag] = (
            col["swiglu"]["recall_at_budget_20pct"]
            <= min(c["recall_at_budget_20pct"] for c in col.values()) + 0.005
        )
        checks["ReLU² fewest new neuron loads per token (window 1)" + tag] = col["relu2"]["new_loads"][
            "1"
        ] <= min(c["new_loads"]["1"] for c in col.values())
        checks["ReLU² fewest 8-neuron blocks touched (co-activation order)" + tag] = col["relu2"][
            "blocks_touched_reordered_g8"
        ] <= min(c["blocks_touched_reordered_g8"] for c in col.values())
    return {"rows": rows, "checks": checks}


def findings(rows: dict[str, dict[str, Any]], v_all: list[str]) -> list[str]:
    """Data-driven one-liners: orderings and trend directions (the reasons are in docs/sparsing_law.md)."""

    def order(key: Any, reverse: bool = True) -> str:
        ranked = sorted(v_all, key=key, reverse=reverse)
        return (" > " if reverse else " < ").join(f"{LABELS[v]} {100 * key(v):.1f}%" for v in ranked)

    def direction(v: str) -> str:
        slope = rows[v]["ppl1_ratio_slope_per_mtok"]
        return f"{LABELS[v]} {'rises' if slope > 0 else 'falls'} ({100 * slope:+.1f} pts/M tokens)"

    return [
        f"- PPL-1% sparsity: {order(lambda v: rows[v]['ppl1_sparsity'])}.",
        f"- Validation loss spread: {min(rows[v]['val_loss'] for v in v_all):.3f}–"
        f"{max(rows[v]['val_loss'] for v in v_all):.3f}.",
        "- PPL-1% activation ratio over training: " + ", ".join(direction(v) for v in v_all) + ".",
        "- Predictor recall at a 20% budget (PPL-1% labels): "
        + order(lambda v: rows[v]["ppl1"]["recall_at_budget_20pct"])
        + ".",
        "- New neuron loads per token, window 1 (PPL-1% labels; fewer is better): "
        + order(lambda v: rows[v]["ppl1"]["new_loads"]["1"], reverse=False)
        + ".",
    ]


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(
    s: Setup, cfg: dict[str, Any], results: dict[str, Any], summary: dict[str, Any], pngs: list[str]
) -> str:
    rows, v_all = summary["rows"], list(results)
    head = "| metric | " + " | ".join(LABELS[v] for v in v_all) + " |"
    sep = "| --- |" + " ---: |" * len(v_all)

    def line(label: str, fn: Any) -> str:
        return f"| {label} | " + " | ".join(fn(v) for v in v_all) + " |"

    fin = {v: results[v]["measured"]["final"] for v in v_all}
    c = f"cett{LIVE_CETT:g}"

    def slope(key: str) -> Any:
        return lambda v: f"{100 * rows[v][key]:+.1f}"

    def label_table(lab: str) -> list[str]:
        col = {v: rows[v][lab] for v in v_all}
        first = fin[v_all[0]]["labels"][lab]["predictor"]
        return (
            [
                f"### Active = above the {LABEL_NAMES[lab]}",
                "",
                head,
                sep,
                line("activation ratio (test tokens)", lambda v: pct(col[v]["activation_ratio"])),
                line(
                    "predictor rank (params / layer)",
                    lambda v: (
                        f"{fin[v]['labels'][lab]['predictor']['rank']} "
                        f"({fin[v]['labels'][lab]['predictor']['layers'][0]['predictor_params']})"
                    ),
                ),
                line("**recall, 10% budget**", lambda v: f"**{pct(col[v]['recall_at_budget_10pct'])}**"),
                line("**recall, 20% budget**", lambda v: f"**{pct(col[v]['recall_at_budget_20pct'])}**"),
                line("recall, oracle budget", lambda v: pct(col[v]["recall_at_oracle_budget"])),
                line(
                    "recall / precision at p ≥ 0.5",
                    lambda v: f"{pct(col[v]['recall'])} / {pct(col[v]['precision'])}",
                ),
                line("sparsity left after prediction (p ≥ 0.5)", lambda v: pct(col[v]["predicted_sparsity"])),
                line("average precision (PR-AUC)", lambda v: f"{col[v]['average_precision']:.3f}"),
                *[
                    line(
                        f"token reuse / new loads per token, window {w}",
                        lambda v, w=w: (
                            f"{pct(col[v]['token_reuse'][str(w)])} / {pct(col[v]['new_loads'][str(w)])}"
                        ),
                    )
                    for w in (1, 4, 16)
                ],
                *[
                    line(
                        f"blocks touched g={g}: original / co-act order / independent",
                        lambda v, i=i: " / ".join(
                            pct(fin[v]["labels"][lab]["chunking"][i][k])
                            for k in ("original", "reordered", "independent")
                        ),
                    )
                    for i, g in enumerate((4, 8, 16))
                ],
                "",
            ]
            if first
            else []
        )

    ot0 = results[v_all[0]]["measured"]["over_training"]
    over = [(LABELS[v], results[v]["measured"]["over_training"]) for v in v_all] + [
        (f"{LABELS[v]} (repeat window)", results[v]["measured"]["over_training_repeat"])
        for v in v_all
        if results[v]["measured"]["over_training_repeat"]
    ]
    lines = [
        f"# Sparsing Law / ReLU² Wins at toy scale ({'quick' if cfg['quick'] else 'full'})",
        "",
        f"Decoders d={s.dim}, {s.n_layers} layers, {s.n_heads} heads, vocab {VOCAB} (tied), seq {s.seq_len}; "
        f"plain d_ff={s.ffn_plain}, gated d_ff={s.ffn_gated}; {s.steps} steps × {s.tokens_per_step} tokens "
        f"= {s.steps * s.tokens_per_step / 1e6:.2f}M tokens each (same seed, data order, WSD schedule, "
        f"lr {s.lr:g}). Shakespeare (quickstart tokenizer); metrics on disjoint windows of the held-out play "
        f"({s.calib_tokens} tokens for PPL-1%, {s.predictor_tokens} predictor-train, {s.test_tokens} test, "
        f"{s.calib_tokens} repeat PPL-1%). 1 thread; "
        f"`python benchmarks/{NAME}/run.py{' --quick' if cfg['quick'] else ''}` (training: "
        + ", ".join(f"{LABELS[v]} {rows[v]['train_seconds']:.0f} s" for v in v_all)
        + "; finished runs and checkpoint measurements cached under runs/ are reused).",
        "",
        "## Final checkpoint",
        "",
        head,
        sep,
        line("parameters", lambda v: f"{results[v]['params'] / 1e6:.2f}M"),
        line("train loss (last 10% of steps)", lambda v: f"{rows[v]['final_train_loss']:.3f}"),
        line("val loss (held-out play)", lambda v: f"{rows[v]['val_loss']:.3f}"),
        line("**PPL-1% sparsity**", lambda v: f"**{pct(rows[v]['ppl1_sparsity'])}**"),
        line("PPL-1% CETT target c", lambda v: f"{fin[v]['report']['cett_target']:.3f}"),
        line(
            f"CETT-{LIVE_CETT:g} sparsity (PPL ratio)",
            lambda v: f"{pct(fin[v][c]['sparsity'])} ({fin[v][c]['ppl_ratio']:.3f})",
        ),
        line("exact-zero activations", lambda v: pct(1 - rows[v]["nonzero_ratio"])),
        line(
            "PPL-1% activation ratio, first → last checkpoint",
            lambda v: " → ".join(pct(rows[v][f"ppl1_activation_ratio_{k}_ckpt"]) for k in ("first", "last")),
        ),
        line("slope of PPL-1% activation ratio (pts / M tokens)", slope("ppl1_ratio_slope_per_mtok")),
        line(
            f"slope of live CETT-{LIVE_CETT:g} ratio (pts / M tokens, after 20%)",
            slope("live_cett_ratio_slope_per_mtok"),
        ),
        line(
            "slope of live non-zero ratio (pts / M tokens, after 20%)",
            slope("live_nonzero_ratio_slope_per_mtok"),
        ),
        line("train time (s)", lambda v: f"{rows[v]['train_seconds']:.0f}"),
        "",
        "## Predictivity and hardware affinity (final checkpoint, held-out test tokens, mean over layers)",
        "",
        "Predictors: per layer d → r → d_ff, equal size for every variant (r·(d + d_ff) ≈ const). "
        "Budget recall: the predictor's top-k neurons per token, k = 10% / 20% of d_ff (equal compute); "
        "oracle budget: k = the true mean active count. New loads: neurons outside a w-token "
        "sliding-window cache, per token, as a fraction of d_ff.",
        "",
        *label_table("ppl1"),
        *label_table(c),
        "## PPL-1% sparsity over training (checkpoints)",
        "",
        "| variant | " + " | ".join(f"{p['tokens'] / 1e6:.2f}M" for p in ot0) + " |",
        "| --- |" + " ---: |" * len(ot0),
        *[
            f"| {name} | "
            + " | ".join(
                f"{pct(p['ppl1_sparsity'])} (c {p['ppl1_cett']:.3f}, loss {p['val_loss']:.2f})" for p in pts
            )
            + " |"
            for name, pts in over
        ],
        "",
        "## Checks against the papers' predictions",
        "",
        "| prediction | holds |",
        "| --- | --- |",
        *[f"| {k} | {'yes' if ok else '**no**'} |" for k, ok in summary["checks"].items()],
        "",
        "## Findings",
        "",
        *findings(rows, v_all),
        "",
        "Why the results differ from the papers where they do, and the caveats: docs/sparsing_law.md.",
        "",
        *[f"![{Path(p).stem}]({Path(p).relative_to('benchmarks/results')})" for p in pngs],
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny models, a few steps (smoke test)")
    ap.add_argument("--probe", type=float, default=0.0, help="seconds per variant: print tokens/s and exit")
    ap.add_argument("--retrain", action="store_true", help="train even when a finished run exists")
    ap.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    ap.add_argument("--replot", action="store_true", help="rewrite plots and markdown from the results JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.chdir(ROOT)
    s = QUICK if args.quick else FULL
    if args.steps:
        s = dataclasses.replace(s, steps=args.steps, ckpt_interval=max(1, args.steps // 5))
    ensure_data()
    if args.probe:
        probe(s, args.probe)
        return
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    name = NAME if mode == "full" else f"{NAME}_quick"
    if args.replot:
        payload = json.loads((RESULTS_DIR / f"{name}.json").read_text())
        results, config = payload["variants"], payload["config"]
        payload["summary"] = summarize(s, results)
        payload["plots"] = plots(s, results, RESULTS_DIR / name)
        write_results(name, payload, markdown(s, config, results, payload["summary"], payload["plots"]))
        return
    cal = calibration(s)
    results: dict[str, Any] = {}
    for v in args.variants.split(","):
        run_dir = Path(f"runs/{NAME}/{mode}/{v}")
        trace = train_variant(s, v, run_dir, args.retrain)
        t0 = time.perf_counter()
        measured = measure_variant(s, v, run_dir, cal)
        cfg = make_config(s, v, run_dir)
        results[v] = {
            "label": LABELS[v],
            "run_dir": str(run_dir),
            "params": cfg.model.num_params(),
            "non_embedding_params": cfg.model.num_params(include_embeddings=False),
            "trace": trace,
            "measured": measured,
            "measure_seconds": time.perf_counter() - t0,
        }
    summary = summarize(s, results)
    pngs = plots(s, results, RESULTS_DIR / name)
    config = {
        "quick": args.quick,
        "setup": dataclasses.asdict(s),
        "sweep": list(SWEEP),
        "live_cett": LIVE_CETT,
    }
    payload = {
        "name": name,
        "config": config,
        "machine": machine_info(),
        "summary": summary,
        "variants": results,
        "plots": pngs,
        "wall_seconds": time.perf_counter() - started,
    }
    json_path, md_path = write_results(name, payload, markdown(s, config, results, summary, pngs))
    wrote = f"{json_path.relative_to(ROOT)}, {md_path.relative_to(ROOT)}"
    print(f"[{NAME}] wrote {wrote} in {payload['wall_seconds']:.0f} s")
    for k, ok in summary["checks"].items():
        print(f"  {k}: {ok}")


if __name__ == "__main__":
    main()
