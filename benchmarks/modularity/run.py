"""Emergent Modularity at small scale: neuron specialisation, functional experts, perturbation, emergence.

Stages (each writes a raw JSON under runs/modularity/, reused unless --redo):

- smollm2: SmolLM2-135M-Instruct (the fp32 HF folder `runs/smollm2-hf`, or `--smollm2 DIR`) on probes
  built for its tokenizer: specialisation vs shuffled labels, MoEfication experts (param, coact) vs
  random partitions, functional-expert deactivation vs random experts;
- knowledge: the same model, knowledge family only, on the current probes (version 2: three templates
  and up to 200 facts per relation), 100 facts per relation in the perturbation set, functional experts of 3
  parameter-clustering seeds; the report shows it in place of the smollm2 stage's knowledge rows;
- series: every member of `pretrain.py`'s series (dense and SSD, 3 seeds, `--steps`): the emergence curves
  over every `--every`-th checkpoint (SSD checkpoints read in original neuron order; each checkpoint's
  snapshot cached under series-{steps}/snapshots-{member}/) and, at the final checkpoint,
  specialisation, functional experts and perturbation (3 partition seeds); members whose last checkpoint
  is not written yet are skipped;
- emergence: the first, longer dense run (runs/modularity/full/dense, 1600 steps, probes version 1);
- snapshots: one member's (`--kinds K --seeds S`) snapshots, taken as training writes its checkpoints,
  until the last: the series stage then only compares them;
- report: benchmarks/results/modularity.{json,md,png} from the raw files (the `--steps` series, and
  any other series-*/ length as a further section).

    python benchmarks/modularity/pretrain.py --kind dense --steps 1024    # the series (and --kind ssd)
    python benchmarks/modularity/run.py --stage snapshots --kinds dense --seeds 0  # while it trains
    python benchmarks/modularity/run.py                   # all stages (1 thread)
    python benchmarks/modularity/run.py --stage report    # rewrite the results from the raw files
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from densa.analysis.modularity import Settings, analyze_modularity, emergence  # noqa: E402
from densa.analysis.probes import VERSION, build_probes, check_tokenizer, load_probes  # noqa: E402

NAME = "modularity"
BASE = Path("runs") / "modularity"  # relative: the script chdirs to the repository root
SMOLLM2 = "runs/smollm2-hf"
LONG_RUN = BASE / "full" / "dense"
SMOLLM2_SETTINGS = Settings(experts=16, perturb_per_label=12, perturb_random=3)
KNOWLEDGE_SETTINGS = Settings(
    experts=16, perturb_per_label=100, perturb_random=3, partition_seeds=3, families=("knowledge",)
)
SERIES_SETTINGS = Settings(experts=16, perturb_per_label=25, perturb_random=3, partition_seeds=3)
SERIES_EXPERTS = 16
KINDS = ("dense", "ssd")
SEEDS = (0, 1, 2)
EVERY = 2
"""The series' emergence reads every 2nd of its 32 checkpoints (16; the shared CPU did not fit all); the
256-step series read every 4th (`--steps 256 --every 4`)."""


def probes_for(tok: object, folder: Path):
    """The probes for `tok` in `folder`, (re)built when missing or of another probe version."""
    meta = folder / "probes.json"
    if not meta.exists() or json.loads(meta.read_text()).get("version") != VERSION:
        build_probes(tok, folder)
    return load_probes(folder)


def _smollm2(model_dir: str, settings: Settings, probes_dir: Path, tag: str) -> dict:
    from densa.data.tokenizer import load_tokenizer
    from densa.models.hf.importer import load_hf_model

    tok = load_tokenizer(model_dir)
    probes = probes_for(tok, probes_dir)
    model = load_hf_model(model_dir)
    check_tokenizer(probes, tok.fingerprint, model.config.vocab_size, model_dir)
    result = analyze_modularity(model, probes, settings, log=lambda m: print(f"[{tag}] {m}", flush=True))
    result["model"] = "SmolLM2-135M-Instruct (fp32 HF folder)"
    result["probes"] = {k: probes.meta[k] for k in ("labels", "positives", "sequences", "tokens", "version")}
    return result


def stage_smollm2(model_dir: str) -> dict:
    return _smollm2(model_dir, SMOLLM2_SETTINGS, BASE / "probes-smollm2", "smollm2")


def stage_knowledge(model_dir: str) -> dict:
    return _smollm2(model_dir, KNOWLEDGE_SETTINGS, BASE / f"probes-smollm2-v{VERSION}", "knowledge")


def _series_probes(cfg: object, folder: Path, run: Path):
    from densa.data.tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.data.tokenizer)
    probes = probes_for(tok, folder)
    check_tokenizer(probes, tok.fingerprint, cfg.model.vocab_size, str(run))
    return probes


def analysed(ckpts: list, interval: int, every: int, last: int) -> list:
    """The checkpoints on the `interval` grid at every `every`-th interval counted back from step `last`
    (train.steps; a run stopped on a signal and resumed saved one more, off the grid). The choice does not
    depend on how far training has got, so snapshots can be taken while it runs."""
    stride = interval * every
    return [c for c in ckpts if c.step % interval == 0 and (last - c.step) % stride == 0]


def _snapshots(run: Path, probes_dir: Path, tag: str, every: int) -> tuple[object, list, list[dict]]:
    """(recipe, analysed checkpoints present now, their snapshots), each snapshot cached in
    series-{steps}/snapshots-{tag}/ (taken once, also while training still runs)."""
    from densa.analysis.modularity.emergence import snapshot
    from densa.analysis.modularity.series import series_checkpoints, series_models
    from densa.config.load import load_recipe

    cfg = load_recipe(run / "recipe.yaml", check=False)
    probes = _series_probes(cfg, probes_dir, run)
    ckpts = analysed(series_checkpoints(run), cfg.checkpoint.interval, every, cfg.train.steps)
    cache = run.parent / f"snapshots-{run.name}"
    cache.mkdir(exist_ok=True)
    path = {c.step: cache / f"v{probes.meta['version']}-e{SERIES_EXPERTS}-step_{c.step}.pt" for c in ckpts}
    t0 = time.perf_counter()
    for step, model in series_models([c for c in ckpts if not path[c.step].exists()], cfg.model):
        snap = snapshot(model, probes, SERIES_EXPERTS, clustering_noise=False)
        torch.save(snap, path[step].with_suffix(".tmp"))
        path[step].with_suffix(".tmp").replace(path[step])
        print(f"[{tag}] step {step}: snapshot ({time.perf_counter() - t0:.0f} s)", flush=True)
    return cfg, ckpts, [torch.load(path[c.step]) for c in ckpts]


def series_emergence(run: Path, probes_dir: Path, tag: str, every: int = EVERY) -> dict:
    """Emergence curves of one run over every `every`-th checkpoint (the last one included; SSD
    checkpoints un-permuted) and which checkpoints were sparse. The clustering-noise curve (a second
    k-means seed) is left out: a third of the k-means time."""
    from densa.analysis.modularity.emergence import compare_snapshots

    t0 = time.perf_counter()
    cfg, ckpts, snaps = _snapshots(run, probes_dir, tag, every)
    result = compare_snapshots([c.step for c in ckpts], snaps, SERIES_EXPERTS)
    result["seconds"] = time.perf_counter() - t0
    result["run"] = str(run)
    result["probes_version"] = VERSION
    result["modes"] = [c.mode for c in ckpts]
    result["sparse_steps"] = [c.sparse_steps for c in ckpts]
    result["model"] = {
        k: getattr(cfg.model, k) for k in ("dim", "n_layers", "ffn_dim", "activation", "gated")
    }
    result["train"] = {
        "steps": cfg.train.steps,
        "tokens_per_step": cfg.batch.global_tokens,
        "seed": cfg.run.seed,
        "ssd": cfg.ssd.enabled,
        "ssd_switch_steps": list(cfg.ssd.switch_steps) if cfg.ssd.enabled else [],
        "ssd_top_k": cfg.ssd.top_k if cfg.ssd.enabled else None,
    }
    return result


def follow_snapshots(steps: int, kind: str, seed: int, every: int, poll_s: float = 60.0) -> None:
    """Snapshot a series member's analysed checkpoints as training writes them, until its last one."""
    from benchmarks.modularity.pretrain import series_dir
    from densa.train.checkpoint import is_complete

    run = series_dir(kind, seed, steps)
    while True:
        if (run / "recipe.yaml").exists():
            _snapshots(run, BASE / f"probes-series-v{VERSION}", f"snapshots {kind}-s{seed}", every)
            if is_complete(run / "checkpoints" / f"step_{steps}"):
                return
        time.sleep(poll_s)


def series_final(run: Path, probes_dir: Path, tag: str) -> dict:
    """Specialisation, functional experts and perturbation at the run's final checkpoint."""
    from densa.analysis.modularity.series import series_checkpoints, series_models
    from densa.config.load import load_recipe

    cfg = load_recipe(run / "recipe.yaml", check=False)
    probes = _series_probes(cfg, probes_dir, run)
    last = series_checkpoints(run)[-1]
    ((step, model),) = series_models([last], cfg.model)
    log = lambda m: print(f"[{tag}] {m}", flush=True)  # noqa: E731
    result = analyze_modularity(model.eval(), probes, SERIES_SETTINGS, log=log)
    result["step"] = step
    result["probes"] = {k: probes.meta[k] for k in ("labels", "positives", "sequences", "tokens", "version")}
    return result


def _write(raw: Path, fn) -> None:
    t0 = time.perf_counter()
    result = fn()
    result["wall_seconds"] = time.perf_counter() - t0
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(result) + "\n")
    print(f"wrote {raw} ({result['wall_seconds']:.0f} s)", flush=True)


def stage_series(
    steps: int, redo: bool, kinds: list[str], what: list[str], seeds: list[int], every: int = EVERY
) -> None:
    from benchmarks.modularity.pretrain import series_dir
    from densa.train.checkpoint import is_complete

    out = BASE / f"series-{steps}"
    for kind in kinds:
        for seed in seeds:
            run = series_dir(kind, seed, steps)
            if not is_complete(run / "checkpoints" / f"step_{steps}"):
                print(f"[series] {run}: not finished, skipped", flush=True)
                continue
            tag = f"{kind}-s{seed}"
            for name, fn in (("emergence", partial(series_emergence, every=every)), ("final", series_final)):
                raw = out / f"{name}-{tag}.json"
                if name in what and (redo or not raw.exists()):
                    _write(raw, partial(fn, run, BASE / f"probes-series-v{VERSION}", f"{name} {tag}"))


def stage_long_run() -> dict:
    from densa.config.load import load_recipe
    from densa.data.tokenizer import load_tokenizer
    from densa.models.checkpoint_io import build_transformer
    from densa.train.checkpoint import checkpoint_weights, complete_checkpoints

    cfg = load_recipe(LONG_RUN / "recipe.yaml", check=False)
    probes = probes_for(load_tokenizer(cfg.data.tokenizer), BASE / f"probes-series-v{VERSION}")
    ckpts = complete_checkpoints(LONG_RUN)

    def models():
        for step, path in ckpts:
            yield step, build_transformer(cfg.model, checkpoint_weights(path))

    result = emergence(models(), probes, SERIES_EXPERTS, log=lambda m: print(f"[emergence] {m}", flush=True))
    result["run"] = str(LONG_RUN)
    result["probes_version"] = probes.meta["version"]
    result["model"] = {
        k: getattr(cfg.model, k) for k in ("dim", "n_layers", "ffn_dim", "activation", "gated")
    }
    result["train"] = {"steps": cfg.train.steps, "tokens_per_step": cfg.batch.global_tokens}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stages = ("smollm2", "knowledge", "series", "emergence")
    ap.add_argument("--stage", choices=["all", *stages, "snapshots", "report"], default="all")
    ap.add_argument("--smollm2", default=SMOLLM2, help="SmolLM2-135M-Instruct HF folder")
    ap.add_argument("--steps", type=int, default=1024, help="training steps of the pretrain.py series")
    ap.add_argument("--redo", action="store_true", help="recompute stages whose raw JSON exists")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="series stage: kinds")
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), help="series stage: seeds")
    ap.add_argument(
        "--what",
        nargs="+",
        choices=["emergence", "final"],
        default=["emergence", "final"],
        help="series stage: the emergence curves and/or the final checkpoint's analysis",
    )
    ap.add_argument(
        "--every",
        type=int,
        default=EVERY,
        help="series stage: analyse every N-th checkpoint (the last included)",
    )
    args = ap.parse_args()
    if args.every < 1:
        raise SystemExit(f"--every {args.every}: must be at least 1")
    if args.stage == "snapshots" and (len(args.kinds) != 1 or len(args.seeds) != 1):
        raise SystemExit("--stage snapshots follows one series member: give one --kinds and one --seeds")
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.chdir(ROOT)
    BASE.mkdir(parents=True, exist_ok=True)
    if args.stage == "snapshots":
        follow_snapshots(args.steps, args.kinds[0], args.seeds[0], args.every)
        return
    single = {
        "smollm2": lambda: stage_smollm2(args.smollm2),
        "knowledge": lambda: stage_knowledge(args.smollm2),
        "emergence": stage_long_run,
    }
    for name in stages:
        if args.stage not in ("all", name):
            continue
        if name == "series":
            stage_series(args.steps, args.redo, args.kinds, args.what, args.seeds, args.every)
            continue
        raw = BASE / f"{name}.json"
        if args.redo or not raw.exists():
            _write(raw, single[name])
    if args.stage in ("all", "report"):
        from benchmarks.modularity.report import write_report

        write_report(BASE, args.steps)


if __name__ == "__main__":
    main()
