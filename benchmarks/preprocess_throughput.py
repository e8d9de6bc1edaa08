"""Preprocessing throughput (tokens/s): `densa data preprocess` vs a plain `datasets.map` + numpy baseline.

Same corpus (the Shakespeare texts as a JSONL of paragraphs), same SentencePiece tokenizer, same output
(token ids with an EOS per document, written to a flat uint16 file). The baseline is what people write
by hand: `load_dataset("json")`, a batched `.map` that tokenizes, then `np.concatenate` and `tofile`.
Both runs are timed end to end (read → tokenize → write) and must produce the same token stream.

    python -m benchmarks.preprocess_throughput [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, median, write_results
from densa.data.fetch import cache_root, fetch_corpus
from densa.data.indexed import IndexedDataset
from densa.data.preprocess import preprocess
from densa.data.sp_train import train_sentencepiece
from densa.data.tokenizer import load_tokenizer


def build_jsonl(corpus_dir: Path, out: Path) -> int:
    """One JSON line per blank-line-separated paragraph of every text; returns the paragraph count."""
    count = 0
    with open(out, "w", encoding="utf-8") as f:
        for path in sorted(corpus_dir.glob("*.txt")):
            for para in path.read_text(encoding="utf-8").split("\n\n"):
                if para.strip():
                    f.write(json.dumps({"text": para}) + "\n")
                    count += 1
    return count


def baseline(jsonl: Path, tokenizer_path: Path, out_bin: Path, eos_id: int) -> np.ndarray:
    import datasets
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    ds = datasets.load_dataset(
        "json", data_files=str(jsonl), split="train", cache_dir=str(out_bin.parent / "hf")
    )
    ds = ds.map(
        lambda batch: {"ids": [ids + [eos_id] for ids in sp.encode(batch["text"])]},
        batched=True,
        remove_columns=["text"],
    )
    tokens = np.concatenate([np.asarray(ids, dtype=np.uint16) for ids in ds["ids"]])
    tokens.tofile(out_bin)
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()

    corpus = fetch_corpus("shakespeare")
    work = cache_root() / "bench" / "preprocess"
    work.mkdir(parents=True, exist_ok=True)
    tokenizer_path = work / "tokenizer.model"
    if not tokenizer_path.exists():
        train_sentencepiece([corpus], work, vocab_size=args.vocab_size)
    tok = load_tokenizer(tokenizer_path)
    jsonl = work / "shakespeare_paragraphs.jsonl"
    n_docs = build_jsonl(corpus, jsonl)

    times: dict[str, list[float]] = {"densa": [], f"densa_{args.workers}w": [], "datasets_map": []}
    n_tokens = 0
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            tmp_path = Path(tmp)
            for name, workers in (("densa", 1), (f"densa_{args.workers}w", args.workers)):
                start = time.perf_counter()
                result = preprocess([jsonl], tok, tmp_path / name, workers=workers, progress=False)
                times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            base_tokens = baseline(jsonl, tokenizer_path, tmp_path / "base.bin", tok.eos_id)
            times["datasets_map"].append(time.perf_counter() - start)
            ours = IndexedDataset(tmp_path / "densa")
            densa_tokens = np.concatenate([ours[i] for i in range(len(ours))])
            if not np.array_equal(densa_tokens, base_tokens):
                raise SystemExit("densa and the baseline produced different token streams")
            n_tokens = int(result.manifest.num_tokens)

    rows = {
        name: {"median_s": median(t), "tokens_per_s": n_tokens / median(t), "times_s": t}
        for name, t in times.items()
    }
    base_tps = rows["datasets_map"]["tokens_per_s"]
    for row in rows.values():
        row["ratio_vs_datasets_map"] = row["tokens_per_s"] / base_tps
    lines = [
        "# Preprocessing throughput: densa vs datasets.map + numpy",
        "",
        f"Shakespeare corpus as JSONL paragraphs: {n_docs} documents, {n_tokens} tokens, "
        f"SentencePiece BPE vocab {tok.vocab_size}; median of {args.repeats} runs, identical token streams.",
        "",
        "| pipeline | median time (s) | tokens/s | ratio vs datasets.map |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['median_s']:.2f} | {row['tokens_per_s']:,.0f} "
            f"| **{row['ratio_vs_datasets_map']:.2f}×** |"
        )
    payload = {
        "benchmark": "preprocess_throughput",
        "machine": machine_info(),
        "args": vars(args),
        "documents": n_docs,
        "tokens": n_tokens,
        "results": rows,
    }
    write_results("preprocess_throughput", payload, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
