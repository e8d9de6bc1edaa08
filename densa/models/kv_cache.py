"""An explicit key/value cache for incremental decoding.

Keys are stored after RoPE, so the cache may later drop entries (eviction policies) without
re-rotating anything. `seen_tokens` counts every token ever appended and gives the next RoPE position;
`length(layer)` is how many entries a layer holds now, which is smaller than `seen_tokens` after eviction.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer key/value tensors of shape [B, n_kv_heads, T, head_dim], grown by doubling."""

    def __init__(self, n_layers: int, initial_capacity: int = 256) -> None:
        self.n_layers = n_layers
        self.initial_capacity = initial_capacity
        self._keys: list[torch.Tensor | None] = [None] * n_layers
        self._values: list[torch.Tensor | None] = [None] * n_layers
        self._lengths = [0] * n_layers
        self.seen_tokens = 0

    def length(self, layer: int = 0) -> int:
        return self._lengths[layer]

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append keys/values [B, H, T_new, D] to `layer`; return all of the layer's keys and values."""
        start, new = self._lengths[layer], keys.shape[2]
        end = start + new
        buffer_k = self._keys[layer]
        if buffer_k is None or end > buffer_k.shape[2]:
            capacity = max(self.initial_capacity, end, 2 * (buffer_k.shape[2] if buffer_k is not None else 0))
            shape = (keys.shape[0], keys.shape[1], capacity, keys.shape[3])
            grown_k = keys.new_empty(shape)
            grown_v = values.new_empty(shape)
            if buffer_k is not None:
                grown_k[:, :, :start] = buffer_k[:, :, :start]
                grown_v[:, :, :start] = self._values[layer][:, :, :start]
            self._keys[layer], self._values[layer] = grown_k, grown_v
        self._keys[layer][:, :, start:end] = keys
        self._values[layer][:, :, start:end] = values
        self._lengths[layer] = end
        if layer == self.n_layers - 1:
            self.seen_tokens += new
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._lengths[layer]
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def keep(self, layer: int, indices: torch.Tensor) -> None:
        """Keep only the entries at `indices` ([B, H, K] or [K], sorted) of a layer (eviction primitive)."""
        keys, values = self.get(layer)
        if indices.dim() == 1:
            kept_k, kept_v = keys[:, :, indices], values[:, :, indices]
        else:
            gather = indices.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])
            kept_k, kept_v = keys.gather(2, gather), values.gather(2, gather)
        n = kept_k.shape[2]
        self._keys[layer][:, :, :n] = kept_k
        self._values[layer][:, :, :n] = kept_v
        self._lengths[layer] = n

    def reset(self) -> None:
        self.__init__(self.n_layers, self.initial_capacity)
