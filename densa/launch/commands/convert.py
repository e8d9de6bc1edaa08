"""`densa convert SRC DST`: HF folder ↔ densa model folder."""

from __future__ import annotations

import argparse
import logging


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert between HF folders and densa model folders",
        description="Convert SRC into DST. The direction follows SRC's config.json "
        "(densa model folder -> HF, HF folder -> densa) unless --to forces the target format.",
    )
    p.add_argument("src", help="HF folder (Llama, Mistral, Qwen2) or densa model folder")
    p.add_argument("dst", help="output folder (written atomically)")
    p.add_argument(
        "--to", choices=["hf", "densa"], default=None, help="target format (default: the other one)"
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="cast weights")
    p.add_argument("--max-seq-len", type=int, default=None, help="HF import: context length (sliding window)")
    p.add_argument("--max-shard-size", default="5GB", help="HF export: shard safetensors above this size")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.set_defaults(handler=_convert)


def _convert(args: argparse.Namespace) -> int:
    from densa.models.hf.convert import convert
    from densa.outputs import Source, check_destination, check_replaceable

    check_destination(args.dst, [Source("source folder", args.src)], name="DST")
    check_replaceable(args.dst, args.overwrite, name="DST")
    logging.basicConfig(level=logging.INFO, format="densa convert: %(message)s")
    source, target = convert(
        args.src,
        args.dst,
        to=args.to,
        dtype=args.dtype,
        max_seq_len=args.max_seq_len,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
    )
    print(f"converted {source} folder {args.src} -> {target} folder {args.dst}")
    return 0
