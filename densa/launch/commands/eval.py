"""`densa eval --checkpoint PATH --data PREFIX`: validation loss and perplexity of a model on a dataset."""

from __future__ import annotations

import json
import os
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="validation loss/perplexity of a checkpoint or HF folder")
    p.add_argument("--checkpoint", required=True, help="HF folder, densa model folder, run dir or step_N")
    p.add_argument(
        "--data",
        required=True,
        help="dataset prefix (PREFIX.bin/.idx/.json) or SFT data (.jsonl, .parquet, datasets folder)",
    )
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4, help="sequences per forward")
    p.add_argument("--max-batches", type=int, default=16)
    p.add_argument("--tokenizer", default=None, help="default: the model's own (checked against the data)")
    p.add_argument("--seed", type=int, default=1234, help="sample order of the packed dataset")
    p.set_defaults(handler=_handler)


def _handler(args) -> int:
    import torch

    from densa.data.sampler import collate
    from densa.train.eval import evaluate_model
    from densa.train.finetune import find_tokenizer, load_model

    torch.manual_seed(args.seed)
    model = load_model(args.checkpoint)
    tok_path = args.tokenizer or find_tokenizer(args.checkpoint)
    tokenizer = None
    if tok_path:
        from densa.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tok_path)
    n = args.batch_size * args.max_batches
    if args.data.endswith((".jsonl", ".ndjson", ".parquet")) or os.path.isdir(args.data):
        from densa.data.sft import SFTDataset
        from densa.errors import DataError

        if tokenizer is None:
            raise DataError("SFT data needs a tokenizer: pass --tokenizer")
        dataset = SFTDataset(args.data, tokenizer, args.seq_len)
    else:
        from densa.data.gpt_dataset import GPTDataset

        fingerprint = tokenizer.fingerprint if tokenizer is not None else None
        dataset = GPTDataset(
            args.data,
            args.seq_len,
            n,
            args.seed,
            tokenizer_fingerprint=fingerprint,
            vocab_size=model.config.vocab_size,
        )
    count = min(n, len(dataset))
    batches = [
        collate([dataset[i] for i in range(s, min(s + args.batch_size, count))])
        for s in range(0, count, args.batch_size)
    ]
    print(f"densa eval: {count} sequences in {len(batches)} batches", file=sys.stderr, flush=True)
    metrics = evaluate_model(model, batches, prefix="eval")
    print(
        json.dumps(
            {"loss": metrics["eval/loss"], "ppl": metrics["eval/ppl"], "tokens": int(metrics["eval/tokens"])}
        )
    )
    return 0
