"""One rank of `densa longctx prefill`: init the process group (with a timeout, so a dead peer ends the run
with a message), load the model, prefill + decode, gather every host's counters and write the JSON report."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def _inputs(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, Any]:
    from densa.errors import DensaError
    from densa.longctx.tasks import TASKS

    if args.task:
        sample = TASKS[args.task](args.rows, args.seq_len, seed=args.seed)
        ids = sample.input_ids
        return ids[:, : -sample.tail], ids[:, -sample.tail :], sample
    try:
        data = json.loads(Path(args.ids).read_text())
        context, query = torch.tensor(data["context"]), torch.tensor(data["query"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DensaError(
            f"{args.ids}: expected JSON {{'context': [[ids]], 'query': [[ids]]}} ({err})"
        ) from None
    if context.dim() != 2 or query.dim() != 2 or context.shape[0] != query.shape[0]:
        raise DensaError(f"{args.ids}: context and query must be lists of equal-length rows, one per row")
    return context, query, None


def run_rank(args: argparse.Namespace) -> int:
    from densa.longctx.apb import SequenceParallelSession, SPConfig, gather_counters
    from densa.longctx.tasks import answer_accuracy
    from densa.train.finetune import load_model

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if args.backend == "nccl" else torch.device("cpu")
    owns_group = not dist.is_initialized()  # tests run ranks inside an existing group
    if owns_group:
        dist.init_process_group(args.backend, timeout=datetime.timedelta(seconds=args.timeout))
    try:
        config = SPConfig(
            args.method,
            anchor_len=args.anchor_len,
            passing_len=args.passing_len,
            passing=args.passing,
            query_in_anchor=not args.query_outside_anchor,
            pool_kernel=args.pool_kernel,
        )
        model = load_model(args.model).to(device)
        context, query, sample = _inputs(args)
        context, query = context.to(device), query.to(device)
        session = SequenceParallelSession(model, config, heads=args.heads)
        session.prefill(context, query)
        result: dict[str, Any] = {}
        if args.max_new_tokens:
            result["generated"] = session.generate(query, args.max_new_tokens).tolist()
        else:
            logits = session.decode(query)
            if logits is not None and sample is not None:
                result["accuracy"] = answer_accuracy(logits.cpu(), sample)
        hosts = gather_counters(session, {"result": result})
        if rank == 0:
            _report(args, config.to_dict(), hosts, context.shape)
        return 0
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _report(args: argparse.Namespace, config: dict, hosts: list[dict], shape: torch.Size) -> None:
    result = {k: v for h in hosts for k, v in h.pop("result").items()}
    report = {
        "method": args.method,
        "config": config,
        "world_size": len(hosts),
        "backend": args.backend,
        "model": args.model,
        "input": {"task": args.task, "ids": args.ids, "rows": shape[0], "context_len": shape[1]},
        **result,
        "max_prefill_bytes_received_per_layer": max(
            x["prefill"]["received"] for h in hosts for x in h["bytes_per_layer"]
        ),
        "max_prefill_seconds": max(h["seconds"]["prefill"] for h in hosts),
        "hosts": hosts,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"densa longctx: wrote {args.out}", file=sys.stderr)
    else:
        print(text)
