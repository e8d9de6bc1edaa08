"""Decoder models: config, layers, KV cache, hook points, HF interop (`densa.models.hf`)."""

from densa.models.config import ModelConfig, RopeScaling
from densa.models.hooks import HookPoint, capture
from densa.models.kv_cache import KVCache
from densa.models.loss import causal_lm_loss
from densa.models.transformer import Transformer

__all__ = ["HookPoint", "KVCache", "ModelConfig", "RopeScaling", "Transformer", "capture", "causal_lm_loss"]
