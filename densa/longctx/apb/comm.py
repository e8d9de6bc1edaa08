"""Collectives of sequence-parallel prefill, each one counted: bytes sent and received per host, per layer
and phase (prefill or decode). Bytes are logical payload (what the algorithm moves), not wire bytes: an
all-gather of an X-byte tensor on H hosts sends X to each of the H - 1 others and receives (H - 1)·X.

A collective that fails (a peer died, or the process group's timeout passed) raises SequenceParallelError
naming the rank, the collective and the layer, so every surviving rank exits with a message, not a hang.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist

from densa.longctx.apb.errors import SequenceParallelError


class CountingComm:
    """Counted wrappers of the collectives Ring, Star and APB need, over one process group."""

    def __init__(self, group: Any = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise SequenceParallelError(
                "torch.distributed is not initialised: start the ranks with `densa longctx prefill --nproc H`"
                " or torchrun, and call torch.distributed.init_process_group first"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        # (phase, layer) -> {"sent": bytes, "received": bytes, "calls": n}
        self.bytes: dict[tuple[str, int], dict[str, int]] = defaultdict(
            lambda: {"sent": 0, "received": 0, "calls": 0}
        )

    def _count(self, phase: str, layer: int, sent: int, received: int) -> None:
        entry = self.bytes[(phase, layer)]
        entry["sent"] += sent
        entry["received"] += received
        entry["calls"] += 1

    def _fail(self, what: str, phase: str, layer: int, err: Exception) -> SequenceParallelError:
        return SequenceParallelError(
            f"rank {self.rank}/{self.world}: {what} in {phase} layer {layer} failed; a peer process died"
            f" or did not answer within the process group's timeout ({type(err).__name__}: {err})"
        )

    def all_gather(self, tensor: torch.Tensor, phase: str, layer: int) -> list[torch.Tensor]:
        """Every rank's tensor (same shape on all ranks), in rank order."""
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(self.world)]
        try:
            dist.all_gather(out, tensor, group=self.group)
        except (RuntimeError, dist.DistBackendError) as err:
            raise self._fail("all_gather", phase, layer, err) from None
        size = tensor.numel() * tensor.element_size() * (self.world - 1)
        self._count(phase, layer, size, size)
        return out

    def ring_exchange(self, tensor: torch.Tensor, phase: str, layer: int) -> torch.Tensor:
        """Send `tensor` to rank + 1 and receive the same shape from rank - 1 (around the ring)."""
        tensor = tensor.contiguous()
        received = torch.empty_like(tensor)
        peer_to, peer_from = (self.rank + 1) % self.world, (self.rank - 1) % self.world
        try:
            ops = [
                dist.P2POp(dist.isend, tensor, peer_to, group=self.group),
                dist.P2POp(dist.irecv, received, peer_from, group=self.group),
            ]
            for req in dist.batch_isend_irecv(ops):
                req.wait()
        except (RuntimeError, dist.DistBackendError) as err:
            raise self._fail("ring send/recv", phase, layer, err) from None
        size = tensor.numel() * tensor.element_size()
        self._count(phase, layer, size, size)
        return received

    def broadcast(self, tensor: torch.Tensor, src: int, phase: str, layer: int = -1) -> torch.Tensor:
        try:
            dist.broadcast(tensor, src, group=self.group)
        except (RuntimeError, dist.DistBackendError) as err:
            raise self._fail("broadcast", phase, layer, err) from None
        size = tensor.numel() * tensor.element_size()
        if self.rank == src:
            self._count(phase, layer, size * (self.world - 1), 0)
        else:
            self._count(phase, layer, 0, size)
        return tensor

    def per_layer(self, n_layers: int) -> list[dict[str, Any]]:
        """[{layer, prefill: {sent, received, calls}, decode: {...}}] for layers 0..n_layers-1; a layer
        -1 entry (outside the layers: the broadcast of next-token ids) is reported as `other`."""
        zero = {"sent": 0, "received": 0, "calls": 0}
        rows = []
        for layer in range(n_layers):
            rows.append(
                {"layer": layer}
                | {phase: dict(self.bytes.get((phase, layer), zero)) for phase in ("prefill", "decode")}
            )
        return rows

    def totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (phase, _layer), entry in self.bytes.items():
            tot = out.setdefault(phase, {"sent": 0, "received": 0, "calls": 0})
            for key, value in entry.items():
                tot[key] += value
        return out
