"""Bad input to sequence-parallel prefill: each error names the problem and the fix; a dead rank makes
the others fail with a message instead of hanging."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from densa.longctx.apb import SequenceParallelError, SequenceParallelSession, SPConfig
from densa.longctx.apb.comm import CountingComm
from densa.longctx.apb.layout import resolve
from densa.models import Transformer
from densa.retaining_heads import RetainingHeads, RetainingHeadsError, attach_heads, save_heads
from densa.testing.distributed import DistributedTestError, run_distributed
from densa.testing.models import random_tokens, tiny_model_config


def test_world_size_must_divide_the_context() -> None:
    with pytest.raises(
        SequenceParallelError, match=r"context of 30 tokens does not split evenly over 4 hosts"
    ):
        resolve(SPConfig("apb"), 30, 0, 0, 4)
    with pytest.raises(
        SequenceParallelError, match=r"zigzag ring splits it into 2·H = 8 chunks.*multiple of 8"
    ):
        resolve(SPConfig("ring"), 36, 0, 0, 4)
    resolve(SPConfig("star"), 36, 0, 0, 4)  # star only needs H equal blocks


def test_passing_length_larger_than_the_block() -> None:
    with pytest.raises(
        SequenceParallelError, match=r"passing length 20 is larger than the block of 16 tokens"
    ):
        resolve(SPConfig("apb", passing_len=20), 32, 0, 1, 2)
    with pytest.raises(
        SequenceParallelError, match=r"anchor \(4 tokens\) cannot hold 1 prefix tokens and the 4"
    ):
        resolve(SPConfig("apb", anchor_len=4), 32, 4, 1, 2)
    with pytest.raises(SequenceParallelError, match="unknown method 'ulysses'"):
        resolve(SPConfig("ulysses"), 32, 0, 0, 2)
    for kernel in (0, 4):  # an even kernel would shift the pooled scores by one token
        with pytest.raises(SequenceParallelError, match=rf"pool kernel {kernel} must be an odd number >= 1"):
            resolve(SPConfig("apb", pool_kernel=kernel), 32, 0, 1, 2)
    assert resolve(SPConfig("apb", pool_kernel=1), 32, 0, 1, 2).passing_len == 2


def test_apb_heads_missing_or_for_another_model(tmp_path: Path) -> None:
    model = Transformer(tiny_model_config(n_layers=3))
    with pytest.raises(SequenceParallelError, match=r"needs retaining heads trained for this model"):
        SequenceParallelSession(model, SPConfig("apb"))
    other = RetainingHeads(tiny_model_config(n_layers=2), hidden=8)
    with pytest.raises(
        RetainingHeadsError, match=r"trained for another model: n_layers=2 there, n_layers=3 in"
    ):
        SequenceParallelSession(model, SPConfig("apb"), heads=other)
    other_model = Transformer(tiny_model_config(n_layers=3, rope_theta=500.0))
    attach_heads(other_model, hidden=8)
    path = save_heads(tmp_path / "heads.safetensors", other_model)
    with pytest.raises(
        RetainingHeadsError, match=r"heads.safetensors were trained for another model: rope_theta"
    ):
        SequenceParallelSession(model, SPConfig("apb"), heads=path)
    with pytest.raises(
        SequenceParallelError, match=r"retaining heads file .*missing.safetensors does not exist"
    ):
        SequenceParallelSession(model, SPConfig("apb"), heads=tmp_path / "missing.safetensors")
    SequenceParallelSession(model, SPConfig("apb", passing="random"), comm=object())  # no heads needed


def test_no_process_group() -> None:
    with pytest.raises(SequenceParallelError, match="torch.distributed is not initialised"):
        CountingComm()


def _die_mid_prefill() -> None:
    """Rank 1 exits inside layer 1's FFN; rank 0 then waits on layer 2's all-gather and must raise."""
    model = Transformer(tiny_model_config(n_layers=3)).eval()
    if int(os.environ["RANK"]) == 1:
        model.layers[1].ffn.forward = lambda x: os._exit(3)
    ids = random_tokens(model.config, batch=1, seq=32)
    SequenceParallelSession(model, SPConfig("apb", passing="random")).prefill(ids)


def test_a_rank_that_dies_mid_prefill_fails_the_others_with_a_message() -> None:
    start = time.monotonic()
    with pytest.raises(DistributedTestError) as info:
        run_distributed(_die_mid_prefill, 2, timeout=20)
    text = str(info.value)
    assert "--- rank 1 ---\nprocess exited with code 3" in text
    assert (
        "SequenceParallelError: rank 0/2: all_gather in prefill layer 2 failed; a peer process died" in text
    )
    assert time.monotonic() - start < 15  # the peer's death is noticed, not the 20 s timeout
