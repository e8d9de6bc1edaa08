"""Calibration data: token sequences, dense/sparse loss evaluation and cached FFN activations.

Sequences are a LongTensor [num_seqs, seq_len + 1]: the model reads the first seq_len tokens and is scored on
the next token at every position, so a sequence contributes exactly seq_len predictions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from densa.sparsity.errors import CalibrationDataError
from densa.sparsity.layers import ffn_layers, unwrap

# Progress of the long passes (one INFO line per batch, per evaluated threshold, per layer); silent unless
# a handler is attached, as `densa sparsity` does (stderr).
log = logging.getLogger("densa.sparsity")


def make_sequences(tokens: torch.Tensor, seq_len: int, num_tokens: int) -> torch.Tensor:
    """Cut a 1-D token stream into ceil(num_tokens / seq_len) non-overlapping windows of seq_len + 1."""
    if seq_len < 1 or num_tokens < 1:
        raise CalibrationDataError(f"seq_len and num_tokens must be >= 1, got {seq_len} and {num_tokens}")
    tokens = torch.as_tensor(tokens).reshape(-1).long()
    num_seqs = math.ceil(num_tokens / seq_len)
    needed = num_seqs * (seq_len + 1)
    if tokens.numel() < needed:
        raise CalibrationDataError(
            f"calibration data has {tokens.numel()} tokens, fewer than the {needed} needed for "
            f"num_tokens={num_tokens} at seq_len={seq_len}; lower --num-tokens or give more data"
        )
    return tokens[:needed].reshape(num_seqs, seq_len + 1)


def check_sequences(seqs: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """[num_seqs, seq_len + 1] ids within the model's vocabulary (when it has a `config.vocab_size`)."""
    vocab_size = getattr(getattr(unwrap(model), "config", None), "vocab_size", None) if model else None
    if seqs.dim() != 2 or seqs.shape[1] < 2:
        raise CalibrationDataError(
            f"sequences must be [num_seqs, seq_len + 1] with seq_len >= 1, got {list(seqs.shape)}"
        )
    if seqs.numel() and (seqs.min() < 0 or (vocab_size is not None and seqs.max() >= vocab_size)):
        raise CalibrationDataError(
            f"token ids must lie in [0, {vocab_size}), got [{seqs.min()}, {seqs.max()}]"
        )
    return seqs.long()


def _batches(seqs: torch.Tensor, batch_size: int, what: str = "forward") -> Iterator[torch.Tensor]:
    n = math.ceil(seqs.shape[0] / batch_size)
    for i, start in enumerate(range(0, seqs.shape[0], batch_size)):
        log.info("%s: batch %d/%d", what, i + 1, n)
        yield seqs[start : start + batch_size]


def _device(model: nn.Module) -> torch.device:
    return next(unwrap(model).parameters()).device


@torch.no_grad()
def eval_loss(model: nn.Module, seqs: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over all seq_len predictions of every sequence."""
    model = unwrap(model)
    seqs = check_sequences(seqs, model)
    was_training, device = model.training, _device(model)
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in _batches(seqs, batch_size, "perplexity"):
            batch = batch.to(device)
            logits = model(batch[:, :-1]).float()
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / count


@dataclass
class FFNRecords:
    """Per-layer activations a [n, ffn_dim] (and optionally FFN inputs [n, dim]) on the same n tokens."""

    acts: list[torch.Tensor]
    inputs: list[torch.Tensor] | None
    positions: torch.Tensor
    """Flat indices (sequence * seq_len + position) of the kept tokens, sorted."""


@torch.no_grad()
def collect_ffn(
    model: nn.Module,
    seqs: torch.Tensor,
    *,
    max_tokens: int | None = None,
    inputs: bool = False,
    batch_size: int = 8,
    seed: int = 0,
) -> FFNRecords:
    """Run the dense model over `seqs` and keep the FFN activations of at most `max_tokens` random tokens.

    Subsampling happens inside the hooks, so memory is max_tokens × (ffn_dim [+ dim]) × n_layers floats,
    independent of how much text is read.
    """
    model = unwrap(model)
    layers = ffn_layers(model)
    seqs = check_sequences(seqs, model)
    n_seq, seq_len = seqs.shape[0], seqs.shape[1] - 1
    total = n_seq * seq_len
    if max_tokens is None or max_tokens >= total:
        keep = torch.arange(total)
    else:
        gen = torch.Generator().manual_seed(seed)
        keep = torch.randperm(total, generator=gen)[:max_tokens].sort().values
    acts: list[list[torch.Tensor]] = [[] for _ in layers]
    ins: list[list[torch.Tensor]] = [[] for _ in layers]
    rows: torch.Tensor = keep[:0]
    handles = []
    for layer in layers:

        def act_hook(_m, _i, out, j=layer.index):
            acts[j].append(out.reshape(-1, out.shape[-1])[rows.to(out.device)].float().cpu())

        handles.append(layer.hook_act.register_forward_hook(act_hook))
        if inputs:

            def in_hook(_m, args, j=layer.index):
                x = args[0]
                ins[j].append(x.reshape(-1, x.shape[-1])[rows.to(x.device)].float().cpu())

            handles.append(layer.module.register_forward_pre_hook(in_hook))
    was_training, device = model.training, _device(model)
    model.eval()
    try:
        for b, batch in enumerate(_batches(seqs, batch_size, "FFN activations")):
            lo = b * batch_size * seq_len
            hi = lo + batch.shape[0] * seq_len
            sel = keep[(keep >= lo) & (keep < hi)]
            if sel.numel() == 0:
                continue
            rows = sel - lo
            model(batch[:, :-1].to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return FFNRecords(
        acts=[torch.cat(a) for a in acts],
        inputs=[torch.cat(x) for x in ins] if inputs else None,
        positions=keep,
    )
