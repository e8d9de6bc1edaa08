"""The MoE decode path (densa.inference.moe_path): an MoE model's small steps through the expert kernels
give the reference MoEFeedForward's outputs (fp32: max |Δlogits| ≤ 1e-5 · max |logits|) and the same greedy
tokens and expert loads; large steps and unsupported layers keep the reference path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from densa.inference import InferenceEngine
from densa.inference.engine import GenerationConfig
from densa.inference.moe_path import MAX_TOKENS, MoEDecodeFFN, kernel_unsupported, moe_kernels_installed
from densa.kernels import native_cpu
from densa.models.transformer import Transformer
from densa.sparse_moe import moefy

from .conftest import tiny_model

PROMPTS = [[1, 5, 9, 3], [1, 7], [1, 8, 8, 2, 40, 11, 6], [1, 12, 13, 14]]
GREEDY = GenerationConfig(max_new_tokens=10, stop_at_eos=False)
needs_native = pytest.mark.skipif(not native_cpu.available(), reason="no C compiler here")


def _moe(gated: bool, activation: str, seed: int = 2, **config) -> Transformer:
    model = tiny_model(64, gated=gated, activation=activation, seed=seed)
    if config:
        model = Transformer(dataclasses.replace(model.config, **config)).eval()
    with torch.no_grad():  # larger FFN weights: routing matters
        for layer in model.layers:
            for p in layer.ffn.parameters():
                p.normal_(0.0, 0.3)
    moefy(model, num_experts=8, top_k=2)
    return model.eval()


def _loads(model) -> list[list[float]]:
    return [layer.ffn.pop_load().tolist() for layer in model.layers]


@needs_native
@pytest.mark.parametrize("gated,activation", [(False, "relu"), (True, "silu")])
def test_small_steps_match_the_reference_moe(gated, activation):
    model = _moe(gated, activation)
    gen = torch.Generator().manual_seed(0)
    for shape in [(1, 1), (3, 1), (2, 7)]:
        tokens = torch.randint(0, 64, shape, generator=gen)
        with torch.no_grad():
            ref = model(tokens)
            with moe_kernels_installed(model) as layers:
                out = model(tokens)
        assert all(isinstance(m, MoEDecodeFFN) and m.kernel.last_path == "native" for m in layers)
        err = (out - ref).abs().max().item()
        assert err <= 1e-5 * ref.abs().max().item()


@needs_native
def test_generation_is_identical_and_counts_the_same_loads():
    model = _moe(False, "relu")
    engine = InferenceEngine(model)
    _loads(model)
    ref = engine.generate(PROMPTS, GREEDY, moe_backend="reference")
    ref_loads = _loads(model)
    fast = engine.generate(PROMPTS, GREEDY)  # auto: the kernels
    assert [g.token_ids for g in fast.generations] == [g.token_ids for g in ref.generations]
    assert _loads(model) == ref_loads
    assert all(type(layer.ffn).__name__ == "MoEFeedForward" for layer in model.layers)  # restored


def test_large_steps_and_unsupported_layers_keep_the_reference_path():
    model = _moe(False, "relu")
    tokens = torch.randint(0, 64, (1, MAX_TOKENS + 1))
    with torch.no_grad():
        ref = model(tokens)
        with moe_kernels_installed(model):
            assert torch.equal(model(tokens), ref)  # prefill: MoEFeedForward itself, bit for bit
    fat = _moe(False, "relu", activation_threshold=0.1)
    reason = kernel_unsupported(fat.layers[0].ffn)
    assert reason == "FATReLU (activation_threshold > 0) is not a kernel activation"
    with moe_kernels_installed(fat) as layers:
        assert all(type(m).__name__ == "MoEFeedForward" for m in layers)
    dense = tiny_model(64)
    assert kernel_unsupported(dense.layers[0].ffn) == "layer FFN is a FeedForward, not an MoEFeedForward"
    bad = pytest.raises(ValueError, match="moe backend must be auto, native, triton, torch or reference")
    with bad, moe_kernels_installed(model, "fast"):  # type: ignore[arg-type]
        pass


@needs_native
def test_prepared_kernels_are_reused_until_the_weights_change():
    model = _moe(False, "relu")
    tokens = torch.tensor([[3, 9]])
    with torch.no_grad(), moe_kernels_installed(model) as first:
        model(tokens)
    with torch.no_grad(), moe_kernels_installed(model) as second:
        model(tokens)
    assert all(a.kernel is b.kernel for a, b in zip(first, second, strict=True))  # no second W_down copy
    with torch.no_grad():
        model.layers[0].ffn.down_proj.weight.mul_(2.0)  # in place: the prepared copy is stale
        ref = model(tokens)
        with moe_kernels_installed(model) as third:
            out = model(tokens)
    assert third[0].kernel is not first[0].kernel and third[1].kernel is first[1].kernel
    assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
