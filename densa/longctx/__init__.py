"""Long-context inference: KV policies (full, StreamingLLM, H2O, SnapKV, random, Locret) and InfLLM's
block memory behind one interface, a chunked-prefill driver with a token budget, and synthetic
long-context tasks."""

from densa.longctx.errors import KVPolicyError
from densa.longctx.infllm import InfLLMConfig, InfLLMContext, InfLLMStats
from densa.longctx.infllm_policy import InfLLMPolicy
from densa.longctx.policies import (
    POLICIES,
    FullPolicy,
    H2OPolicy,
    LocretPolicy,
    RandomPolicy,
    SnapKVPolicy,
    StreamingLLMPolicy,
    build_policy,
)
from densa.longctx.policy import KVPolicy
from densa.longctx.prefill import GenerationResult, PolicySession, PolicyStats, generate_with_policy

__all__ = [
    "POLICIES",
    "FullPolicy",
    "GenerationResult",
    "H2OPolicy",
    "InfLLMConfig",
    "InfLLMContext",
    "InfLLMPolicy",
    "InfLLMStats",
    "KVPolicy",
    "KVPolicyError",
    "LocretPolicy",
    "PolicySession",
    "PolicyStats",
    "RandomPolicy",
    "SnapKVPolicy",
    "StreamingLLMPolicy",
    "build_policy",
    "generate_with_policy",
]
