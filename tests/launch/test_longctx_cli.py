"""`densa longctx prefill`: the torchrun command it starts, and one rank's work run on 2 gloo ranks (what
torchrun would start), checked against single-process full attention."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from densa.launch.cli import build_parser, main
from densa.longctx.tasks import mqar
from densa.models import Transformer
from densa.models.checkpoint_io import save_transformer
from densa.testing.distributed import run_distributed
from densa.testing.models import tiny_model_config


def test_nproc_starts_torchrun_with_the_same_options(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["longctx", "prefill", "--method", "apb", "--model", "m", "--nproc", "4", "--task", "mqar"]
    assert (
        main([*argv, "--passing-len", "8", "--pool-kernel", "1", "--query-outside-anchor", "--dry-run"]) == 0
    )
    out = capsys.readouterr().out.split()
    assert out[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]
    rank = out[6:]
    assert rank[:4] == ["-m", "densa.launch.commands.longctx", "longctx", "prefill"]
    assert "--nproc" not in rank and "--dry-run" not in rank
    assert " ".join(rank[4:12]) == "--method apb --model m --task mqar --seq-len 264"
    assert "--passing-len 8" in " ".join(rank) and "--query-outside-anchor" in rank
    assert "--pool-kernel 1" in " ".join(rank)


def test_nproc_or_torchrun_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["longctx", "prefill", "--method", "ring", "--model", "m", "--task", "mqar"]) == 1
    assert "give --nproc H (H >= 1 ranks), or start this command under torchrun" in capsys.readouterr().err


def _rank(argv: list[str]) -> int:
    from densa.launch.longctx_rank import run_rank

    return run_rank(build_parser().parse_args(argv))


def test_ring_rank_generates_what_full_attention_generates(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(vocab_size=259, max_seq_len=128)).eval()
    save_transformer(tmp_path / "model", model)
    out = tmp_path / "report.json"
    argv = ["longctx", "prefill", "--method", "ring", "--model", str(tmp_path / "model"), "--task", "mqar"]
    argv += ["--seq-len", "40", "--rows", "3", "--seed", "5", "--max-new-tokens", "3", "--out", str(out)]
    # Load once here first: its first call imports sympy & co. lazily, which forked ranks would each redo.
    from densa.train.finetune import load_model

    load_model(tmp_path / "model")
    assert run_distributed(_rank, 2, args=(argv,), timeout=60) == [0, 0]
    report = json.loads(out.read_text())
    ids = mqar(3, 40, seed=5).input_ids
    with torch.no_grad():  # greedy on one process with full attention
        for _ in range(3):
            ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], dim=1)
    assert report["generated"] == ids[:, 40:].tolist()
    assert report["world_size"] == 2 and report["input"]["context_len"] == 32
    # ring: each host receives one KV block per layer: K and V · 3 rows · 2 KV heads · 16 tokens · 8 · 4 bytes
    assert report["max_prefill_bytes_received_per_layer"] == 2 * 3 * 2 * 16 * 8 * 4
    assert [h["rank"] for h in report["hosts"]] == [0, 1]
    assert report["hosts"][1]["kv_tokens_held"] == 16 + 8 + 2  # its block, the query and 2 fed tokens
