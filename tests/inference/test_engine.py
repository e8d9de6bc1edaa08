"""InferenceEngine: batching, sampling, sparse-FFN exactness and fallback, MoE and KV-policy paths."""

from __future__ import annotations

import warnings

import pytest
import torch

from densa.inference import GenerationConfig, InferenceEngine
from densa.kernels import SparseFFNFallbackWarning
from tests.inference.conftest import tiny_model

PROMPTS = [[1, 5, 9, 3], [1, 7], [1, 8, 8, 2, 40, 11, 6], [1, 12, 13, 14], [1]]
GREEDY = GenerationConfig(max_new_tokens=8, stop_at_eos=False)


def ids(out) -> list[list[int]]:
    return [g.token_ids for g in out.generations]


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return InferenceEngine(tiny_model(64))


@pytest.mark.parametrize(
    "config", [GREEDY, GenerationConfig(max_new_tokens=8, temperature=0.9, top_p=0.8, seed=7)]
)
def test_batched_equals_one_by_one(engine, config):
    batched = engine.generate(PROMPTS, config)
    assert batched.stats.groups == 4  # lengths 4, 2, 7, 1: the two length-4 prompts share a batch
    assert ids(batched) == [ids(engine.generate([p], config))[0] for p in PROMPTS]
    assert all(len(g.token_ids) == 8 and g.finish_reason == "length" for g in batched.generations)
    assert batched.stats.new_tokens == 40 and batched.stats.tokens_per_s > 0


def test_sampling_depends_on_seed(engine):
    a = engine.generate(PROMPTS, GenerationConfig(max_new_tokens=12, temperature=1.0, seed=1))
    b = engine.generate(PROMPTS, GenerationConfig(max_new_tokens=12, temperature=1.0, seed=2))
    assert ids(a) == ids(
        engine.generate(PROMPTS, GenerationConfig(max_new_tokens=12, temperature=1.0, seed=1))
    )
    assert ids(a) != ids(b)


def test_sparse_at_threshold_zero_equals_dense(engine):
    engine.set_sparsity([0.0, 0.0])
    dense = engine.generate(PROMPTS, GREEDY)
    sparse = engine.generate(PROMPTS, GREEDY, ffn="sparse", track_sparsity=True)
    assert ids(sparse) == ids(dense)
    ratios = sparse.stats.activation_ratio
    assert len(ratios) == 2 and all(0.2 < r < 0.8 for r in ratios)  # ReLU: about half the neurons are zero
    # the wrappers are removed again: the model's FFNs are the dense modules
    assert all(type(block.ffn).__name__ == "FeedForward" for block in engine.model.layers)


def test_sparse_single_step_matches_dense_ffn(engine):
    """One decode step through the sparse path: same logits as dense at threshold 0 (ReLU zeros are exact)."""
    from densa.inference import sparse_ffn_installed

    x = torch.tensor([[1, 5, 9]])
    cache = engine.model.new_kv_cache()
    engine.model(x[:, :2], kv_cache=cache)
    dense = engine.model(x[:, 2:], kv_cache=cache).clone()
    cache = engine.model.new_kv_cache()
    with sparse_ffn_installed(engine.model, [0.0, 0.0]):
        engine.model(x[:, :2], kv_cache=cache)
        sparse = engine.model(x[:, 2:], kv_cache=cache)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


def test_cett_calibrated_sparse_path_runs():
    engine = InferenceEngine(tiny_model(64, seed=3))
    seqs = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    thresholds = engine.calibrate_sparsity(seqs, cett_target=0.2)
    assert len(thresholds) == 2 and all(t > 0 for t in thresholds)
    out = engine.generate(PROMPTS[:2], GREEDY, ffn="sparse", track_sparsity=True)
    engine.set_sparsity([0.0, 0.0])
    exact = engine.generate(PROMPTS[:2], GREEDY, ffn="sparse", track_sparsity=True)
    assert all(a < b for a, b in zip(out.stats.activation_ratio, exact.stats.activation_ratio))


def test_unsupported_dtype_falls_back_with_warning():
    model = tiny_model(64).double()
    engine = InferenceEngine(model)
    engine.set_sparsity([0.0, 0.0])
    dense = engine.generate(PROMPTS[:2], GREEDY)
    with pytest.warns(SparseFFNFallbackWarning, match="float64"):
        sparse = engine.generate(PROMPTS[:2], GREEDY, ffn="sparse")
    assert ids(sparse) == ids(dense)


def test_sparse_needs_thresholds_and_dense_ffn():
    engine = InferenceEngine(tiny_model(64))
    with pytest.raises(ValueError, match="set_sparsity or calibrate_sparsity"):
        engine.generate(PROMPTS[:1], GREEDY, ffn="sparse")
    with pytest.raises(ValueError, match="2 layers"):
        engine.set_sparsity([0.0])


def test_kv_policies_delegate_to_longctx(engine):
    dense = engine.generate(PROMPTS, GREEDY)
    full = engine.generate(PROMPTS, GREEDY, kv_policy="full", kv_chunk=3)
    assert ids(full) == ids(dense)
    h2o = engine.generate([list(range(1, 30))], GREEDY, kv_policy="h2o", kv_budget=8, kv_chunk=4)
    assert len(h2o.generations[0].token_ids) == 8
    assert h2o.stats.kv[0].peak_kv_tokens <= 8 + 4 and h2o.stats.kv[0].evictions > 0


def test_moe_path_top_k(tmp_path):
    from densa.sparse_moe import moefy, save_moe

    model = tiny_model(64, gated=True, activation="silu", seed=1)
    dense = InferenceEngine(tiny_model(64, gated=True, activation="silu", seed=1)).generate(PROMPTS, GREEDY)
    layouts = moefy(model, num_experts=4, top_k=1)
    save_moe(tmp_path / "moe", model, layouts)
    all_experts = InferenceEngine.from_pretrained(tmp_path / "moe", moe_top_k=4)
    assert all_experts.is_moe
    assert ids(all_experts.generate(PROMPTS, GREEDY)) == ids(dense)  # k = E is the dense model
    engine = InferenceEngine.from_pretrained(tmp_path / "moe")  # saved k = 1
    assert ids(engine.generate(PROMPTS, GREEDY)) == [ids(engine.generate([p], GREEDY))[0] for p in PROMPTS]
    with pytest.raises(NotImplementedError, match="MoE"):
        engine.set_sparsity([0.0, 0.0])
        engine.generate(PROMPTS[:1], GREEDY, ffn="sparse")


def test_text_prompts_and_eos(sp_model, relu_model):
    from densa.data.tokenizer import load_tokenizer

    tok = load_tokenizer(sp_model)
    engine = InferenceEngine(relu_model, tok)
    out = engine.generate(["hello world", "the fox"], GenerationConfig(max_new_tokens=6))
    for g, text in zip(out.generations, ["hello world", "the fox"]):
        assert g.prompt_ids[0] == tok.bos_id and g.prompt_ids[1:] == tok.encode(text)
        assert g.text == tok.decode(g.token_ids) and tok.eos_id not in g.token_ids
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="non-empty"):
            engine.generate([[]], GREEDY)
