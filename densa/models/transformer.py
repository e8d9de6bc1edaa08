"""The densa decoder: embeddings → n_layers × (RMSNorm → attention, RMSNorm → FFN) → RMSNorm → LM head."""

from __future__ import annotations

import math

import torch
from torch import nn

from densa.models.attention import Attention, document_mask
from densa.models.config import ModelConfig
from densa.models.ffn import FeedForward
from densa.models.hooks import HookPoint
from densa.models.kv_cache import KVCache
from densa.models.norm import RMSNorm
from densa.models.rope import RotaryEmbedding


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, tp_size: int = 1) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config, layer_idx, tp_size)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn = FeedForward(config, tp_size)
        self.hook_resid = HookPoint()  # block output [B, T, dim]

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attn_mask is None:  # the common path calls attention exactly as before packing existed
            x = x + self.attn(self.attn_norm(x), cos, sin, kv_cache)
        else:
            x = x + self.attn(self.attn_norm(x), cos, sin, kv_cache, attn_mask=attn_mask)
        x = x + self.ffn(self.ffn_norm(x))
        return self.hook_resid(x)


class Transformer(nn.Module):
    """A Llama-family decoder. `tp_size > 1` needs megatron-core's parallel_state initialised first."""

    def __init__(self, config: ModelConfig, tp_size: int = 1) -> None:
        super().__init__()
        self.config = config
        self.tp_size = tp_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config, i, tp_size) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.rope = RotaryEmbedding(
            config.head_dim, config.rope_theta, config.rope_scaling, config.max_seq_len
        )
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.reset_parameters()

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.config.tie_embeddings else self.lm_head.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std); residual output projections scaled by 1/sqrt(2·n_layers) (GPT-2)."""
        if self.tp_size > 1:
            # Per-shard normal_ would give identically seeded ranks identical shards (a symmetry
            # training never breaks): draw the tp = 1 weights and keep this rank's shard instead.
            from densa.models.parallel import init_from_full

            init_from_full(self)
            return
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                param.normal_(0.0, out_std)
            else:
                param.normal_(0.0, std)

    def hidden_states(
        self,
        input_ids: torch.Tensor | None,
        *,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        doc_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, T] -> final normed hidden states [B, T, dim].

        `doc_ids` [B, T] (packed rows): attention stays within equal ids; pass `position_ids` [B, T]
        that restart at 0 per document so each one sees the positions it would see alone.
        `inputs_embeds` [B, T, dim] replaces the token embeddings (input_ids None): knowledge plugins
        feed extra input vectors this way without changing a weight."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        seq = x.shape[1]
        mask = document_mask(doc_ids) if doc_ids is not None else None
        if position_ids is None:
            start = kv_cache.seen_tokens if kv_cache is not None else 0
            position_ids = torch.arange(start, start + seq, device=x.device)
        cos, sin = self.rope(position_ids, x.dtype)
        for layer in self.layers:
            if mask is not None:
                if self.gradient_checkpointing and self.training:
                    x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, None, mask, use_reentrant=False)
                else:
                    x = layer(x, cos, sin, kv_cache, attn_mask=mask)
            elif self.gradient_checkpointing and self.training and kv_cache is None:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, kv_cache)
        return self.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        *,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        doc_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, vocab_size] (`doc_ids`, `inputs_embeds`: see `hidden_states`)."""
        hidden = self.hidden_states(
            input_ids,
            position_ids=position_ids,
            kv_cache=kv_cache,
            doc_ids=doc_ids,
            inputs_embeds=inputs_embeds,
        )
        return nn.functional.linear(hidden, self.output_weight)

    def new_kv_cache(self, initial_capacity: int = 256) -> KVCache:
        return KVCache(self.config.n_layers, initial_capacity)
