"""FFN neuron activations at the probes' examples, and next-token losses per example, with FFN hooks.

Every densa `Transformer` (densa runs and HF imports alike) has `layers[i].ffn.hook_act`, the
activations [B, T, ffn_dim] that feed W_down. Sequences are batched right-padded (a causal model's
earlier positions never see the padding); token examples keep their position's activation, sequence
examples the mean over the sequence's real tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from densa.analysis.errors import AnalysisError
from densa.analysis.probes import ProbeSequence


@dataclass(frozen=True)
class FamilyActivations:
    """One family's examples: activations per layer, and the label of every example."""

    acts: list[torch.Tensor]
    """Per layer [n_examples, ffn_dim] float32."""
    labels: torch.Tensor
    """[n_examples] int64 label index; -1 is negative for every label."""


def ffn_modules(model: nn.Module) -> list[nn.Module]:
    """The FFN of every block, in order; refuses models whose blocks have none (e.g. MoE-converted ones)."""
    layers = getattr(model, "layers", None)
    ffns = [getattr(block, "ffn", None) for block in layers or []]
    if not ffns or any(f is None or not hasattr(f, "hook_act") for f in ffns):
        raise AnalysisError(f"{type(model).__name__} has no dense FFN with hook_act in every layer")
    return ffns


def _batches(
    seqs: list[ProbeSequence], batch_size: int
) -> Iterator[tuple[list[ProbeSequence], torch.Tensor]]:
    for lo in range(0, len(seqs), batch_size):
        chunk = seqs[lo : lo + batch_size]
        ids = torch.zeros(len(chunk), max(len(s.ids) for s in chunk), dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, : len(s.ids)] = torch.tensor(s.ids)
        yield chunk, ids


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def collect_activations(
    model: nn.Module, seqs: list[ProbeSequence], *, batch_size: int = 16
) -> FamilyActivations:
    """Activations of every FFN neuron at every example of `seqs` (one family)."""
    ffns = ffn_modules(model)
    acts: list[list[torch.Tensor]] = [[] for _ in ffns]
    labels: list[int] = []
    state: dict[str, object] = {}

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor, layer: int) -> None:
        chunk, lengths = state["chunk"], state["lengths"]
        rows = []
        for b, s in enumerate(chunk):
            for pos, _label in s.examples:
                rows.append(out[b, : lengths[b]].float().mean(0) if pos < 0 else out[b, pos].float())
        acts[layer].append(torch.stack(rows).cpu() if rows else out.new_zeros(0, out.shape[-1]).float())

    handles = [
        f.hook_act.register_forward_hook(lambda m, i, o, j=j: hook(m, i, o, j)) for j, f in enumerate(ffns)
    ]
    was_training = model.training
    model.eval()
    try:
        for chunk, ids in _batches(seqs, batch_size):
            state["chunk"], state["lengths"] = chunk, [len(s.ids) for s in chunk]
            model(ids.to(_device(model)))
            labels += [label for s in chunk for _pos, label in s.examples]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return FamilyActivations([torch.cat(a) for a in acts], torch.tensor(labels, dtype=torch.long))


@contextlib.contextmanager
def deactivated(model: nn.Module, neurons: dict[int, torch.Tensor]) -> Iterator[None]:
    """Zero the activations of `neurons[layer]` (indices into ffn_dim) while the block runs.

    A zero activation contributes nothing to W_down's output: the same as zeroing those columns of
    W_down (or, for gated SiLU/ReLU FFNs, the neurons' gate rows).
    """
    ffns = ffn_modules(model)
    handles = []
    for layer, idx in neurons.items():
        if not 0 <= layer < len(ffns):
            raise AnalysisError(f"layer {layer} out of range: the model has {len(ffns)} FFN layers")

        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor, idx: torch.Tensor = idx) -> torch.Tensor:
            out = out.clone()
            out[..., idx.to(out.device)] = 0
            return out

        handles.append(ffns[layer].hook_act.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def example_losses(model: nn.Module, seqs: list[ProbeSequence], *, batch_size: int = 16) -> torch.Tensor:
    """Next-token loss at each example, in `collect_activations` order.

    Token example at position p: the loss of predicting token p+1 (NaN at a sequence's last token).
    Sequence example: the mean loss over the sequence.
    """
    out: list[float] = []
    was_training = model.training
    model.eval()
    try:
        for chunk, ids in _batches(seqs, batch_size):
            ids = ids.to(_device(model))
            logits = model(ids)
            logits = logits[0] if isinstance(logits, tuple) else logits
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:], reduction="none").cpu()
            for b, s in enumerate(chunk):
                n = len(s.ids) - 1
                for pos, _label in s.examples:
                    if pos < 0:
                        out.append(float(nll[b, :n].mean()) if n > 0 else float("nan"))
                    else:
                        out.append(float(nll[b, pos]) if pos < n else float("nan"))
    finally:
        model.train(was_training)
    return torch.tensor(out, dtype=torch.float64)
