"""Decode tokens/s with the sparse FFN path vs dense, on trained ReLU / ReLU² models at their real sparsity.

Models: the Sparsing-Law runs `runs/sparsing_law/full/{relu,relu2}` (plain FFNs, d=256, d_ff=1024, 4 layers)
when they exist and are complete; otherwise a ReLU² variant of `recipes/quickstart.yaml` trained here
(`runs/sparse_decode/{full,quick}/relu2`, reused when complete). Needs the quickstart tokenizer and data
(`make quickstart`).

Per model, `densa.inference.InferenceEngine`, batch 1, greedy, fixed length, prompts from the held-out play:
- thresholds: `exact` (t = 0: the activation's natural zeros, outputs unchanged) and `ppl1` (PPL-1% CETT
  thresholds, calibrated on held-out windows disjoint from the prompts);
- greedy outputs of the sparse paths compared token by token with the dense path;
- decode sparsity per layer (`track_sparsity`, an untimed pass);
- decode tokens/s of `dense`, `sparse_exact`, `sparse_ppl1` and `no_ffn` (every FFN replaced by zeros: the
  FFN share of decode time is (T_dense - T_no_ffn) / T_dense), alternated call by call, medians of repeats.

Bounds (s = decode sparsity, mean over layers): FFN 1/(1-s); threshold path of a plain FFN 2/(2-s) (the up
projection is read densely to find the active set, only W_down rows are skipped); end-to-end
1/((1-f) + f(1-s)) with f the measured FFN share.

At this size (weights in cache, ~100 µs per FFN) per-call overheads dominate, so the FFN is also timed at a
realistic shape (`--big-dim`, d_ff = 4d, plain ReLU², fp32, random weights) with every layer's active
fraction set to the trained model's measured decode sparsity: the engine's threshold path and the same
kernel given the active set (a free, perfect predictor).

    python benchmarks/sparse_decode/run.py            # full (~15 min on 1 thread)
    python benchmarks/sparse_decode/run.py --quick    # smoke (< 2 min)
    python benchmarks/sparse_decode/run.py --own-model  # as from a fresh clone: train the ReLU² model

Writes benchmarks/results/sparse_decode{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    QUICKSTART_DATA,
    QUICKSTART_TOKENIZER,
    dataset_tokens,
    machine_info,
    median,
    time_interleaved,
    write_results,
)
from densa.config.load import load_recipe  # noqa: E402
from densa.inference import GenerationConfig, InferenceEngine  # noqa: E402
from densa.kernels import SparseFFNWeights, native_cpu, sparse_ffn, sparse_ffn_reference  # noqa: E402
from densa.models.checkpoint_io import build_transformer  # noqa: E402
from densa.models.transformer import Transformer  # noqa: E402
from densa.sparsity import LowRankPredictor, make_sequences, ppl_p_sparsity  # noqa: E402
from densa.train.checkpoint import checkpoint_weights, complete_checkpoints  # noqa: E402

NAME = "sparse_decode"
DATA, TOKENIZER = QUICKSTART_DATA, QUICKSTART_TOKENIZER  # benchmarks.common: the quickstart data
SPARSING_LAW_RUNS = {"relu": "runs/sparsing_law/full/relu", "relu2": "runs/sparsing_law/full/relu2"}
LABELS = {"relu": "ReLU", "relu2": "ReLU²"}
KINDS = ("exact", "ppl1", "pred")
"""exact: t = 0; ppl1: PPL-1% CETT thresholds; pred: t = 0 with trained low-rank predictors (all projections
sparse, neurons the predictor misses are lost)."""


@dataclass(frozen=True)
class Setup:
    prompts: int
    prompt_len: int
    new_tokens: int
    repeats: int
    calib_tokens: int
    calib_seq_len: int
    big_dim: int
    big_layers: int
    big_repeats: int
    pred_rank: int
    """Rank of the trained models' low-rank predictors (the `pred` path)."""
    big_pred_rank: int
    """Predictor rank charged at the realistic shape (d/16, untrained: only its cost is real)."""
    train_overrides: tuple[str, ...]
    """`--set` overrides of recipes/quickstart.yaml for the fallback ReLU² model."""


FALLBACK = ("model.activation=relu2", "model.gated=false", "logging.tensorboard=false")
FULL = Setup(
    prompts=6,
    prompt_len=32,
    new_tokens=64,
    repeats=21,
    calib_tokens=8192,
    calib_seq_len=128,
    big_dim=2048,
    big_layers=8,
    big_repeats=21,
    pred_rank=64,
    big_pred_rank=128,
    train_overrides=(*FALLBACK, "model.ffn_dim=1536", "train.steps=150"),
)
QUICK = Setup(
    prompts=2,
    prompt_len=16,
    new_tokens=24,
    repeats=3,
    calib_tokens=1024,
    calib_seq_len=64,
    big_dim=1024,
    big_layers=4,
    big_repeats=3,
    pred_rank=16,
    big_pred_rank=64,
    train_overrides=(
        *FALLBACK,
        "model.dim=128",
        "model.n_layers=2",
        "model.n_heads=2",
        "model.n_kv_heads=2",
        "model.ffn_dim=512",
        "train.steps=30",
        "batch.global_tokens=1024",
        "batch.micro_batch=4",
    ),
)


# ------------------------------------------------------------------------------------------- models


def load_run(run_dir: Path) -> Transformer | None:
    """The final checkpoint of a finished trainer run, or None when the run is absent or incomplete."""
    recipe = run_dir / "recipe.yaml"
    if not recipe.exists():
        return None
    cfg = load_recipe(recipe, check=False)
    done = [(step, folder) for step, folder in complete_checkpoints(run_dir) if step == cfg.train.steps]
    if not done:
        return None
    return build_transformer(cfg.model, checkpoint_weights(done[-1][1])).eval()


def train_fallback(s: Setup, quick: bool) -> tuple[Transformer, str]:
    """A ReLU² quickstart model, trained unless a finished run is already there."""
    run_dir = Path(f"runs/{NAME}/{'quick' if quick else 'full'}/relu2")
    overrides = [*s.train_overrides, f"run.name={NAME}_relu2", f"run.out_dir={run_dir}"]
    overrides += ["logging.progress=false", "eval.interval=0", "export.hf_dir=null", "checkpoint.resume=none"]
    model = load_run(run_dir)
    if model is None:
        from densa.train.run import build_trainer

        cfg = load_recipe("recipes/quickstart.yaml", overrides)
        print(
            f"[{NAME}] no Sparsing-Law runs: training ReLU² ({cfg.train.steps} steps) → {run_dir}", flush=True
        )
        build_trainer(cfg).fit()
        model = load_run(run_dir)
        if model is None:
            raise SystemExit(f"{run_dir}: training finished without a final checkpoint")
    return model, f"{run_dir} (recipes/quickstart.yaml --set {' '.join(s.train_overrides)})"


def load_models(s: Setup, quick: bool, own: bool) -> dict[str, tuple[Transformer, str]]:
    models: dict[str, tuple[Transformer, str]] = {}
    for variant, path in SPARSING_LAW_RUNS.items() if not own else ():
        if quick and variant != "relu2":
            continue  # one model is enough for the smoke run
        model = load_run(Path(path))
        if model is not None:
            models[variant] = (model, path)
    return models or {"relu2": train_fallback(s, quick)}


# ------------------------------------------------------------------------------------------- decode


class ZeroFFN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@contextlib.contextmanager
def ffn_removed(model: Transformer) -> Iterator[None]:
    """Every block's FFN returns zeros: what decode costs without FFNs (for the FFN share)."""
    originals = [block.ffn for block in model.layers]
    try:
        for block in model.layers:
            block.ffn = ZeroFFN()
        yield
    finally:
        for block, ffn in zip(model.layers, originals, strict=True):
            block.ffn = ffn


def generate_each(
    engine: InferenceEngine, prompts: list[list[int]], gen: GenerationConfig, ffn: str, **kwargs: Any
) -> tuple[list[list[int]], float, int, list[Any]]:
    """Batch-1 generation of every prompt: (tokens, decode s, new tokens, per-prompt GenerationStats)."""
    tokens, seconds, count, ratios = [], 0.0, 0, []
    for prompt in prompts:
        out = engine.generate([prompt], gen, ffn=ffn, **kwargs)  # type: ignore[arg-type]
        tokens.append(out.generations[0].token_ids)
        seconds += out.stats.decode_s
        count += out.stats.new_tokens
        if out.stats.activation_ratio is not None:
            ratios.append(out.stats)
    return tokens, seconds, count, ratios


def prefix_match(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def measure_model(
    variant: str, model: Transformer, source: str, s: Setup, tokens: torch.Tensor
) -> dict[str, Any]:
    cfg = model.config
    n_layers = cfg.n_layers
    calib_span = -(-s.calib_tokens // s.calib_seq_len) * (s.calib_seq_len + 1)
    calib = make_sequences(tokens[:calib_span], s.calib_seq_len, s.calib_tokens)
    stride = (tokens.numel() - calib_span) // s.prompts
    prompts = [tokens[calib_span + i * stride :][: s.prompt_len].tolist() for i in range(s.prompts)]
    engine = InferenceEngine(model)
    gen = GenerationConfig(max_new_tokens=s.new_tokens, temperature=0.0, stop_at_eos=False)

    t0 = time.perf_counter()
    report = ppl_p_sparsity(model, calib, p=1.0)
    calib_s = time.perf_counter() - t0
    thresholds = {"exact": [0.0] * n_layers, "ppl1": report.thresholds, "pred": [0.0] * n_layers}
    print(
        f"[{NAME}] {variant}: PPL-1% c={report.cett_target:.3f}, calibration sparsity "
        f"{report.sparsity:.1%}, ppl ratio {report.ppl_ratio:.4f} ({calib_s:.0f} s)",
        flush=True,
    )
    t0 = time.perf_counter()
    pred_metrics = engine.fit_predictors(calib, s.pred_rank)  # labels: a_i != 0 (no thresholds set yet)
    predictors, pred_s = engine.predictors, time.perf_counter() - t0
    print(
        f"[{NAME}] {variant}: rank-{s.pred_rank} predictors, held-out recall "
        f"{', '.join(f'{m.recall:.3f}' for m in pred_metrics)} ({pred_s:.0f} s)",
        flush=True,
    )

    def use(kind: str) -> None:
        engine.set_sparsity(thresholds[kind])
        engine.set_predictors(predictors if kind == "pred" else None)

    engine.set_predictors(None)
    dense_tokens, _, _, _ = generate_each(engine, prompts, gen, "dense")
    checks: dict[str, Any] = {}
    for kind in KINDS:
        use(kind)
        out, _, _, stats = generate_each(engine, prompts, gen, "sparse", track_sparsity=True)
        per_layer = [sum(st.activation_ratio[j] for st in stats) / len(stats) for j in range(n_layers)]
        read = [sum(st.read_ratio[j] for st in stats) / len(stats) for j in range(n_layers)]
        recall = [sum(st.predictor_recall[j] for st in stats) / len(stats) for j in range(n_layers)]
        checks[kind] = {
            "identical_prompts": sum(a == b for a, b in zip(out, dense_tokens)),
            "prompts": len(prompts),
            "mean_matching_prefix": sum(prefix_match(a, b) for a, b in zip(out, dense_tokens))
            / (len(prompts) * s.new_tokens),
            "activation_ratio_per_layer": per_layer,
            "read_ratio_per_layer": read,
            "predictor_recall_per_layer": recall,
            "sparsity": 1 - sum(per_layer) / n_layers,
        }

    rates: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[[], tuple[Any, float, int, Any]]) -> Callable[[], None]:
        rates[name] = []

        def run() -> None:
            _, seconds, count, _ = fn()
            rates[name].append(count / seconds)

        return run

    def sparse(kind: str) -> Callable[[], tuple[Any, float, int, Any]]:
        def run() -> tuple[Any, float, int, Any]:
            use(kind)
            return generate_each(engine, prompts, gen, "sparse")

        return run

    def no_ffn() -> tuple[Any, float, int, Any]:
        with ffn_removed(model):
            return generate_each(engine, prompts, gen, "dense")

    fns = {
        "dense": timed("dense", lambda: generate_each(engine, prompts, gen, "dense")),
        "sparse_exact": timed("sparse_exact", sparse("exact")),
        "sparse_ppl1": timed("sparse_ppl1", sparse("ppl1")),
        "sparse_pred": timed("sparse_pred", sparse("pred")),
        "no_ffn": timed("no_ffn", no_ffn),
    }
    time_interleaved(fns, repeats=s.repeats, warmup=1)
    for name in rates:
        rates[name] = rates[name][1:]  # drop the warmup call's rate
    tok_s = {name: median(r) for name, r in rates.items()}
    ms = {name: 1e3 / v for name, v in tok_s.items()}
    ffn_share = (ms["dense"] - ms["no_ffn"]) / ms["dense"]
    rows = {}
    for kind in KINDS:
        sp = checks[kind]["sparsity"]
        name = f"sparse_{kind}"
        bound_ffn, bound_thr = 1 / (1 - sp), 2 / (2 - sp)
        bound_e2e = 1 / ((1 - ffn_share) + ffn_share * (1 - sp))
        ffn_speedup = (ms["dense"] - ms["no_ffn"]) / max(ms[name] - ms["no_ffn"], 1e-9)
        e2e = tok_s[name] / tok_s["dense"]
        rows[kind] = {
            "sparsity": sp,
            "decode_tokens_per_s": tok_s[name],
            "e2e_speedup": e2e,
            "bound_e2e": bound_e2e,
            "fraction_of_e2e_bound": e2e / bound_e2e,
            "ffn_speedup_in_decode": ffn_speedup,
            "bound_ffn": bound_ffn,
            "bound_ffn_threshold_path": bound_thr,
            "fraction_of_ffn_bound": ffn_speedup / bound_ffn,
            "fraction_of_threshold_path_bound": ffn_speedup / bound_thr,
        }
        print(
            f"[{NAME}] {variant} {kind}: s={sp:.1%}, {tok_s['dense']:.0f} → {tok_s[name]:.0f} tok/s "
            f"({e2e:.2f}x, {e2e / bound_e2e:.0%} of e2e bound {bound_e2e:.2f}x); FFN in decode "
            f"{ffn_speedup:.2f}x ({ffn_speedup / bound_ffn:.0%} of {bound_ffn:.1f}x); "
            f"identical {checks[kind]['identical_prompts']}/{len(prompts)}",
            flush=True,
        )
    return {
        "variant": variant,
        "source": source,
        "model": {
            "dim": cfg.dim,
            "n_layers": n_layers,
            "ffn_dim": cfg.ffn_dim,
            "activation": cfg.activation,
            "gated": cfg.gated,
            "vocab": cfg.vocab_size,
            "params": sum(p.numel() for p in model.parameters()),
        },
        "ppl1": {
            "cett_target": report.cett_target,
            "calibration_sparsity": report.sparsity,
            "ppl_ratio": report.ppl_ratio,
            "converged": report.converged,
            "thresholds": report.thresholds,
            "seconds": calib_s,
        },
        "predictors": {
            "rank": s.pred_rank,
            "cost_ratio": predictors[0].cost_ratio,  # type: ignore[index]
            "seconds": pred_s,
            "held_out": [m.to_dict() for m in pred_metrics],
        },
        "checks": checks,
        "decode_tokens_per_s": tok_s,
        "decode_ms_per_token": ms,
        "rates": rates,
        "ffn_share": ffn_share,
        "sparse": rows,
    }


# ------------------------------------------------------------------------------------------- big shape


def bench_big_shape(
    s: Setup, ratios: list[float], repeats: int, read_ratios: list[float] | None = None
) -> dict[str, Any]:
    """Plain ReLU² FFN at d=s.big_dim, d_ff=4d, batch 1: layer j active on the fraction ratios[j % len].

    With `read_ratios` also the predictor path: an untrained rank-`big_pred_rank` predictor runs (its cost is
    real, its output only picks the set's size) and the kernel reads a set of read_ratios[j] · d_ff rows that
    contains every active row (the trained predictor's measured read ratio, with its misses ignored).
    """
    dim, ffn_dim = s.big_dim, 4 * s.big_dim
    gen = torch.Generator().manual_seed(0)
    predictors, predicted = [], []
    layers = []
    for j in range(s.big_layers):
        up = torch.randn(ffn_dim, dim, generator=gen) / dim**0.5
        down = torch.randn(dim, ffn_dim, generator=gen) / ffn_dim**0.5
        w = SparseFFNWeights.from_dense(up, down, gated=False)
        x = torch.randn(1, dim, generator=gen)
        act = torch.relu(x @ up.T).square()
        k = max(1, round(ratios[j % len(ratios)] * ffn_dim))
        top = act.flatten().topk(min(k + 1, ffn_dim)).values
        # keeps the k largest (fewer when act has fewer > 0). The midpoint, not the (k+1)-th value itself:
        # a threshold equal to an activation would make the check depend on float summation order.
        t = float(top[-1] + top[-2]) / 2 if k < ffn_dim else -1.0
        idx = (act.flatten() > t).nonzero().squeeze(1)
        layers.append((up, down, w, x, t, idx))
        if read_ratios is not None:
            extra = round(read_ratios[j % len(read_ratios)] * ffn_dim) - idx.numel()
            rest = (act.flatten() <= t).nonzero().squeeze(1)
            pick = rest[torch.randperm(rest.numel(), generator=gen)[: max(extra, 0)]]
            predicted.append(torch.cat([idx, pick]).sort().values)
            predictors.append(LowRankPredictor(dim, ffn_dim, s.big_pred_rank).eval())
    up, down, w, x, t, idx = layers[0]
    ref = sparse_ffn_reference(x, w, thresholds=t, activation="relu2")
    for kwargs in ({"thresholds": t}, {"active_idx": idx}):
        out = sparse_ffn(x, w, activation="relu2", **kwargs)
        assert (out - ref).abs().max() <= 1e-4 * ref.abs().max().clamp_min(1), "sparse path disagrees"

    def over(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            for layer in layers:
                fn(*layer)

        return run

    def torch_gather_idx(up, down, w, x, t, idx) -> torch.Tensor:
        with native_cpu.disabled():  # the same call without the native kernels: what they buy
            return sparse_ffn(x, w, active_idx=idx, activation="relu2")

    def predicted_path() -> None:
        for (_, _, w, x, _, _), predictor, idx in zip(layers, predictors, predicted, strict=True):
            with torch.no_grad():
                (predictor(x) >= 0).any(dim=0).nonzero()  # the set the engine would build (cost only)
            sparse_ffn(x, w, active_idx=idx, activation="relu2")

    fns = {
        "dense": over(lambda up, down, w, x, t, idx: F.linear(torch.relu(F.linear(x, up)).square(), down)),
        "sparse_thr": over(lambda up, down, w, x, t, idx: sparse_ffn(x, w, thresholds=t, activation="relu2")),
        "sparse_idx": over(
            lambda up, down, w, x, t, idx: sparse_ffn(x, w, active_idx=idx, activation="relu2")
        ),
        "sparse_idx_torch": over(torch_gather_idx),
    }
    if read_ratios is not None:
        fns["sparse_pred"] = predicted_path
    times = time_interleaved(fns, repeats=repeats, warmup=1)
    ms = {name: 1e3 * median(ts) / len(layers) for name, ts in times.items()}
    active = sum(layer[5].numel() for layer in layers) / (len(layers) * ffn_dim)
    sp = 1 - active
    bound_ffn, bound_thr = 1 / (1 - sp), 2 / (2 - sp)
    out: dict[str, Any] = {"dim": dim, "ffn_dim": ffn_dim, "sparsity": sp, "ms_per_layer": ms}
    out |= {"bound_ffn": bound_ffn, "bound_threshold_path": bound_thr}
    if read_ratios is not None:
        out["read_ratio"] = sum(p.numel() for p in predicted) / (len(layers) * ffn_dim)
        out["predictor_rank"] = s.big_pred_rank
    for name in [n for n in ("sparse_thr", "sparse_idx", "sparse_idx_torch", "sparse_pred") if n in ms]:
        speedup = ms["dense"] / ms[name]
        out[name] = {
            "speedup": speedup,
            "fraction_of_ffn_bound": speedup / bound_ffn,
            "fraction_of_threshold_path_bound": speedup / bound_thr,
        }
    return out


# ------------------------------------------------------------------------------------------- report


def pred_summary(b: dict) -> str:
    if "sparse_pred" not in b:
        return ""
    p = b["sparse_pred"]
    return f", pred {p['speedup']:.2f}x ({p['fraction_of_ffn_bound']:.0%})"


def big_cell(b: dict, k: str) -> str:
    if k not in b:
        return "—"
    thr = f", {b[k]['fraction_of_threshold_path_bound']:.0%}" if k == "sparse_thr" else ""
    return f"{b['ms_per_layer'][k]:.2f} ({b[k]['speedup']:.2f}x, {b[k]['fraction_of_ffn_bound']:.0%}{thr})"


def markdown(results: list[dict], big: list[dict], config: dict, machine: dict, quick: bool) -> str:
    s = config["setup"]
    lines = [
        f"# Sparse-FFN decode vs dense on trained ReLU / ReLU² models{' (quick)' if quick else ''}",
        "",
        f"`InferenceEngine.generate`, batch 1, greedy, {s['prompts']} held-out prompts × {s['prompt_len']} "
        f"tokens, {s['new_tokens']} new tokens each; fp32, CPU, {machine['torch_threads']} thread "
        f"({machine['processor']}, {machine['cpu_count']} cores shared with other jobs); dense / sparse / "
        f"no-FFN alternated call by call, medians of {s['repeats']} repeats. Thresholds: `exact` = t 0 "
        "(natural zeros), `ppl1` = PPL-1% CETT thresholds calibrated on "
        f"{s['calib_tokens']} held-out tokens disjoint from the prompts, `pred` = t 0 with rank-"
        f"{s['pred_rank']} low-rank predictors trained on the same tokens (Deja Vu; only the predicted rows "
        "of every projection are read, missed neurons are lost). CPU gathers: "
        f"{'native kernels (densa/kernels/native_cpu.py)' if config['native_cpu_kernels'] else 'torch'}. "
        "No GPU was available for this run.",
        "",
        "s = decode sparsity (mean over layers, measured on the decode steps). Bounds: FFN 1/(1−s); the "
        "threshold path of a plain FFN reads the up projection densely to find the active set, so its "
        "FFN bound is 2/(2−s); end-to-end 1/((1−f)+f(1−s)) with f the measured FFN share of dense decode.",
        "",
        "## 1. Measured: the trained models, end to end",
        "",
        "| model | thresholds | s | greedy = dense | dense tok/s | sparse tok/s | speedup | e2e bound "
        "| of e2e bound | FFN share f | FFN speedup in decode | of 1/(1−s) | of 2/(2−s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r["model"]
        label = f"{LABELS[r['variant']]} (d={m['dim']}, d_ff={m['ffn_dim']}, {m['n_layers']} layers)"
        for kind in KINDS:
            row, chk = r["sparse"][kind], r["checks"][kind]
            lines.append(
                f"| {label} | {kind} | {row['sparsity']:.1%} | {chk['identical_prompts']}/{chk['prompts']} | "
                f"{r['decode_tokens_per_s']['dense']:.0f} | {row['decode_tokens_per_s']:.0f} | "
                f"{row['e2e_speedup']:.2f}x | {row['bound_e2e']:.2f}x | {row['fraction_of_e2e_bound']:.0%} | "
                f"{r['ffn_share']:.0%} | {row['ffn_speedup_in_decode']:.2f}x | "
                f"{row['fraction_of_ffn_bound']:.0%} | "
                + (f"{row['fraction_of_threshold_path_bound']:.0%} |" if kind != "pred" else "— |")
            )
    lines += [
        "",
        "FFN speedup in decode = (T_dense − T_no_ffn) / (T_sparse − T_no_ffn), per-token decode times with "
        "every FFN replaced by zeros for T_no_ffn. `greedy = dense`: prompts whose greedy tokens equal the "
        "dense path's exactly (PPL-1% thresholds change the function, so divergence there is expected; "
        "mean matching prefix in the JSON). A speedup below 1x is a slowdown: its fraction of the e2e bound "
        "(speedup / bound) is not a share of the possible gain.",
        "",
        "| model | PPL-1% CETT c | calibration sparsity | PPL ratio | decode activation ratio per layer "
        "(exact / ppl1 / pred) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results:
        p = r["ppl1"]
        per = " / ".join(
            ", ".join(f"{a:.1%}" for a in r["checks"][k]["activation_ratio_per_layer"]) for k in KINDS
        )
        lines.append(
            f"| {LABELS[r['variant']]} | {p['cett_target']:.3f} | {p['calibration_sparsity']:.1%} | "
            f"{p['ppl_ratio']:.4f} | {per} |"
        )
    lines += [
        "",
        "Predictors (`pred`): held-out recall on the calibration tokens, and on the decode steps the "
        "fraction of neurons read (the predicted set) against the fraction truly active, and recall.",
        "",
        "| model | rank | cost vs one FFN matrix | held-out recall per layer "
        "| decode read / active per layer | decode recall per layer |",
        "|---|---:|---:|---|---|---|",
    ]
    for r in results:
        p, chk = r["predictors"], r["checks"]["pred"]
        held = ", ".join(f"{m['recall']:.3f}" for m in p["held_out"])
        read = ", ".join(
            f"{a:.1%}/{b:.1%}"
            for a, b in zip(chk["read_ratio_per_layer"], chk["activation_ratio_per_layer"], strict=True)
        )
        rec = ", ".join(f"{a:.3f}" for a in chk["predictor_recall_per_layer"])
        lines.append(
            f"| {LABELS[r['variant']]} | {p['rank']} | {p['cost_ratio']:.1%} | {held} | {read} | {rec} |"
        )
    b0 = big[0]
    mib = config["big_layers"] * 8 * b0["dim"] ** 2 * 4 / 2**20
    lines += [
        "",
        f"## 2. FFN only at a realistic shape (d={b0['dim']}, d_ff={b0['ffn_dim']}, plain ReLU², random "
        "weights), at the trained models' measured decode sparsity",
        "",
        f"Not the trained model: {config['big_layers']} distinct random layers cycled "
        f"({mib:.0f} MiB of FFN weights per pass, each read "
        "once as in decode), layer j active on the measured decode activation ratio of the trained model's "
        f"layer j mod n_layers; medians of {s['big_repeats']} repeats, ms per layer. `thr`: the engine's "
        "path (exact threshold, up projection dense, W_down rows of the active set; bound 2/(2−s)); `idx`: "
        "the same kernel given the active set, i.e. a free, perfect predictor (all projections sparse; "
        "bound 1/(1−s)); `pred` (row `pred` only): an untrained rank-"
        f"{s['big_pred_rank']} predictor is run each step for its cost and the kernel reads a set of the "
        "trained predictor's measured decode read ratio that holds every active row; `idx, torch gather`: "
        "`idx` with the native CPU kernels switched off (index_select + embedding_bag), side by side. "
        "Cells: ms (speedup, fraction of 1/(1−s)[, fraction of 2/(2−s) for `thr`]).",
        "",
        "| sparsity from | s | 1/(1−s) | 2/(2−s) | dense ms | thr | idx | idx, torch gather | pred |",
        "|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for b in big:
        lines.append(
            f"| {LABELS[b['variant']]} {b['kind']} | {b['sparsity']:.1%} | {b['bound_ffn']:.1f}x | "
            f"{b['bound_threshold_path']:.2f}x | {b['ms_per_layer']['dense']:.2f} | "
            + " | ".join(
                big_cell(b, k) for k in ("sparse_thr", "sparse_idx", "sparse_idx_torch", "sparse_pred")
            )
            + " |"
        )
    cmd = "python benchmarks/sparse_decode/run.py" + (" --quick" if quick else "")
    cmd += " --own-model" if config.get("own_model") else ""
    lines += ["", f"Reproduce: `{cmd}`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 2 min)")
    parser.add_argument("--threads", type=int, default=1, help="1 resists preemption on a shared machine")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--own-model", action="store_true", help="ignore the Sparsing-Law runs: train ReLU²")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    started = time.perf_counter()
    tokens = dataset_tokens(f"{DATA}/valid")
    models = load_models(s, args.quick, args.own_model)
    results = [measure_model(v, m, src, s, tokens) for v, (m, src) in models.items()]
    big = []
    for r in results:
        for kind in KINDS:
            ratios = r["checks"][kind]["activation_ratio_per_layer"]
            read = r["checks"][kind]["read_ratio_per_layer"] if kind == "pred" else None
            b = bench_big_shape(s, ratios, s.big_repeats, read) | {"variant": r["variant"], "kind": kind}
            print(
                f"[{NAME}] big shape, {r['variant']} {kind}: s={b['sparsity']:.1%}, dense "
                f"{b['ms_per_layer']['dense']:.2f} ms, thr {b['sparse_thr']['speedup']:.2f}x, "
                f"idx {b['sparse_idx']['speedup']:.2f}x ({b['sparse_idx']['fraction_of_ffn_bound']:.0%})"
                f"{pred_summary(b)}",
                flush=True,
            )
            big.append(b)
    machine = machine_info()
    config = {"setup": asdict(s), "big_layers": s.big_layers, "dtype": "float32", "batch": 1, "device": "cpu"}
    config |= {"own_model": args.own_model, "seconds": time.perf_counter() - started}
    config["native_cpu_kernels"] = native_cpu.available()
    md = markdown(results, big, config, machine, args.quick)
    print(md)
    if not args.no_write:
        payload = {"config": config, "machine": machine, "models": results, "big_shape": big}
        print("wrote", *write_results(NAME + ("_quick" if args.quick else ""), payload, md))


if __name__ == "__main__":
    main()
