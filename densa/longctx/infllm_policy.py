"""`InfLLMPolicy`: InfLLM behind the KV-policy interface (`build_policy("infllm")`, `--kv-policy infllm`).

Unlike the eviction policies it does not score a KVCache: it replaces attention, so `PolicySession`
feeds every forward through the `InfLLMContext` that `open` returns (chunked prefill, the tail and batch
decode alike). It needs no budget: device memory is bounded by its own settings.
"""

from __future__ import annotations

import torch

from densa.longctx.infllm import InfLLMConfig, InfLLMContext
from densa.longctx.policy import KVPolicy
from densa.models.transformer import Transformer


class InfLLMPolicy(KVPolicy):
    """Options are InfLLMConfig's fields (defaults: the paper's). `memory_positions`: "constant" (the
    paper: every memory token at one distance), "ordered" (densa: the chosen units in their original
    order just before the window) or "original" (true positions, an ablation)."""

    name = "infllm"
    evicts = False
    replaces_attention = True

    def __init__(
        self,
        n_init: int = 128,
        n_local: int = 4096,
        block_size: int = 128,
        repr_topk: int = 4,
        topk: int = 16,
        exc_block_size: int = 512,
        max_cached_units: int = 32,
        memory_distance: int | None = None,
        memory_positions: str = "constant",
        representative: str = "attention",
        offload_device: str = "cpu",
        backend: str = "auto",
        seed: int = 0,
        record_lookups: bool = False,
    ) -> None:
        super().__init__(0)
        self.config = InfLLMConfig(
            n_init=n_init,
            n_local=n_local,
            block_size=block_size,
            repr_topk=repr_topk,
            topk=topk,
            exc_block_size=exc_block_size,
            max_cached_units=max_cached_units,
            memory_distance=memory_distance,
            memory_positions=memory_positions,
            representative=representative,
            offload_device=offload_device,
            backend=backend,
            seed=seed,
            record_lookups=record_lookups,
        )

    def open(self, model: Transformer) -> InfLLMContext:
        return InfLLMContext(model, self.config)

    def scores(self, layer: int, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("infllm replaces attention; it has no eviction scores")
