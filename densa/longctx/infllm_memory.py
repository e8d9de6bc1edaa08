"""InfLLM's two memory tiers for one layer: every unit in an offload store, a bounded LRU cache on the device.

A memory unit is `block_size` consecutive tokens that left the local window: their unrotated keys and
values [B, Hkv, block_size, D] for every row of the batch (rows advance in lockstep). The store keeps all
units on `offload_device` (CPU; pinned when the compute device is CUDA, so copies can overlap). Each batch
row has its own cache (rows choose different units), which keeps at most `capacity` of that row's units on
the compute device and replaces the least recently used one; a request for more units than that holds
them all until it is done. `loads` counts units copied from the store, `hits` units found in the cache.
"""

from __future__ import annotations

from collections import OrderedDict

import torch


class UnitStore:
    """All memory units of one layer, append-only, on the offload device."""

    def __init__(self, offload_device: torch.device | str = "cpu") -> None:
        self.offload_device = torch.device(offload_device)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> int:
        """Offload one unit ([B, Hkv, block, D] each); returns its id."""
        pin = keys.device.type == "cuda" and self.offload_device.type == "cpu"
        for store, t in ((self.keys, keys), (self.values, values)):
            copy = t.detach().to(self.offload_device, copy=True)
            store.append(copy.pin_memory() if pin else copy)
        return len(self.keys) - 1

    def tokens(self) -> int:
        return sum(k.shape[2] for k in self.keys)


class UnitCache:
    """LRU cache of units on the compute device, filled from a `UnitStore`."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"max_cached_units must be ≥ 1, got {capacity}")
        self.capacity = capacity
        self._units: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.loads = 0
        self.hits = 0
        self.peak_units = 0

    def __len__(self) -> int:
        return len(self._units)

    def __contains__(self, unit: int) -> bool:
        return unit in self._units

    def order(self) -> list[int]:
        """Cached unit ids, least recently used first."""
        return list(self._units)

    def fetch(
        self, units: list[int], store: UnitStore, device: torch.device, row: int | None = None
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """The K/V of `units` on `device` (each id once; only batch row `row` of them when given), loading
        misses and evicting LRU entries the request does not need until the cache is back within
        max(capacity, len(request))."""
        wanted = list(dict.fromkeys(units))
        for unit in wanted:
            if unit in self._units:
                self.hits += 1
                self._units.move_to_end(unit)
            else:
                self.loads += 1
                k, v = store.keys[unit], store.values[unit]
                if row is not None:
                    k, v = k[row], v[row]
                k, v = k.to(device, non_blocking=True), v.to(device, non_blocking=True)
                self._units[unit] = (k, v)
        limit = max(self.capacity, len(wanted))
        needed = set(wanted)
        for unit in list(self._units):
            if len(self._units) <= limit:
                break
            if unit not in needed:
                del self._units[unit]
        self.peak_units = max(self.peak_units, len(self._units))
        return {unit: self._units[unit] for unit in wanted}
