"""Emergent Modularity at small scale: neuron specialisation, functional experts, perturbation, emergence.

Stages (each writes a raw JSON under runs/modularity/, reused unless --redo):

- smollm2: SmolLM2-135M-Instruct (the fp32 HF folder `runs/smollm2-hf`, or `--smollm2 DIR`) on probes
  built for its tokenizer: specialisation vs shuffled labels, MoEfication experts (param, coact) vs
  random partitions, functional-expert deactivation vs random experts;
- emergence: every checkpoint of `benchmarks/modularity/pretrain.py`'s dense run: partition stability
  (ARI, overlap) against neuron-function stability (Spearman of predictivity, ARI of best-function groups);
- report: benchmarks/results/modularity.{json,md,png} from the two raw files.

    python benchmarks/modularity/pretrain.py              # the checkpoint series (~15 min, 1 thread)
    python benchmarks/modularity/run.py                   # all stages (~30 min on 1 busy thread)
    python benchmarks/modularity/run.py --stage report    # rewrite the results from the raw files
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from densa.analysis.modularity import Settings, analyze_modularity, emergence  # noqa: E402
from densa.analysis.probes import build_probes, check_tokenizer, load_probes  # noqa: E402

NAME = "modularity"
BASE = Path("runs") / "modularity"  # relative: the script chdirs to the repository root
SMOLLM2 = "runs/smollm2-hf"
SERIES = BASE / "full" / "dense"
SMOLLM2_SETTINGS = Settings(experts=16, perturb_per_label=12, perturb_random=3)
SERIES_EXPERTS = 16


def stage_smollm2(model_dir: str) -> dict:
    from densa.data.tokenizer import load_tokenizer
    from densa.models.hf.importer import load_hf_model

    tok = load_tokenizer(model_dir)
    probes_dir = BASE / "probes-smollm2"
    if not (probes_dir / "probes.json").exists():
        build_probes(tok, probes_dir)
    probes = load_probes(probes_dir)
    model = load_hf_model(model_dir)
    check_tokenizer(probes, tok.fingerprint, model.config.vocab_size, model_dir)
    result = analyze_modularity(
        model, probes, SMOLLM2_SETTINGS, log=lambda m: print(f"[smollm2] {m}", flush=True)
    )
    result["model"] = "SmolLM2-135M-Instruct (fp32 HF folder)"
    result["probes"] = {k: probes.meta[k] for k in ("labels", "positives", "sequences", "tokens")}
    return result


def stage_emergence() -> dict:
    from densa.config.load import load_recipe
    from densa.data.tokenizer import load_tokenizer
    from densa.models.checkpoint_io import build_transformer
    from densa.train.checkpoint import checkpoint_weights, complete_checkpoints

    cfg = load_recipe(SERIES / "recipe.yaml", check=False)
    tok = load_tokenizer(cfg.data.tokenizer)
    probes_dir = BASE / "probes-series"
    if not (probes_dir / "probes.json").exists():
        build_probes(tok, probes_dir)
    probes = load_probes(probes_dir)
    check_tokenizer(probes, tok.fingerprint, cfg.model.vocab_size, str(SERIES))
    ckpts = complete_checkpoints(SERIES)

    def models():
        for step, path in ckpts:
            yield step, build_transformer(cfg.model, checkpoint_weights(path))

    result = emergence(models(), probes, SERIES_EXPERTS, log=lambda m: print(f"[emergence] {m}", flush=True))
    result["run"] = str(SERIES)
    result["model"] = {
        k: getattr(cfg.model, k) for k in ("dim", "n_layers", "ffn_dim", "activation", "gated")
    }
    result["train"] = {"steps": cfg.train.steps, "tokens_per_step": cfg.batch.global_tokens}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["all", "smollm2", "emergence", "report"], default="all")
    ap.add_argument("--smollm2", default=SMOLLM2, help="SmolLM2-135M-Instruct HF folder")
    ap.add_argument("--redo", action="store_true", help="recompute stages whose raw JSON exists")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.chdir(ROOT)
    BASE.mkdir(parents=True, exist_ok=True)
    stages = {"smollm2": lambda: stage_smollm2(args.smollm2), "emergence": stage_emergence}
    for name, fn in stages.items():
        raw = BASE / f"{name}.json"
        if args.stage not in ("all", name) or (raw.exists() and not args.redo):
            continue
        t0 = time.perf_counter()
        result = fn()
        result["wall_seconds"] = time.perf_counter() - t0
        raw.write_text(json.dumps(result) + "\n")
        print(f"[{name}] wrote {raw} ({result['wall_seconds']:.0f} s)", flush=True)
    if args.stage in ("all", "report"):
        from benchmarks.modularity.report import write_report

        write_report(BASE / "smollm2.json", BASE / "emergence.json")


if __name__ == "__main__":
    main()
