"""The predictor-driven sparse path: only predicted rows are read, misses count as zero, files round-trip."""

from __future__ import annotations

import pytest
import torch

from densa.inference import GenerationConfig, InferenceEngine
from densa.inference.sparse_path import SparseDecodeFFN
from densa.sparsity import LowRankPredictor, SparsityError, load_predictors, save_predictors
from tests.inference.conftest import tiny_model

PROMPTS = [[1, 5, 9, 3], [1, 7], [1, 8, 8, 2, 40, 11, 6]]
GREEDY = GenerationConfig(max_new_tokens=8, stop_at_eos=False)


def oracle_predictor(ffn: torch.nn.Module) -> LowRankPredictor:
    """Logits = the gate pre-activations: it selects exactly the ReLU-active rows."""
    dim, ffn_dim = ffn.up_proj.weight.shape[1], ffn.up_proj.weight.shape[0]
    predictor = LowRankPredictor(dim, ffn_dim, rank=dim)
    with torch.no_grad():
        predictor.down.weight.copy_(torch.eye(dim))
        predictor.up.weight.copy_(ffn.up_proj.weight)
    return predictor


def random_predictors(model, rank: int = 4, seed: int = 0) -> list[LowRankPredictor]:
    torch.manual_seed(seed)
    return [LowRankPredictor(model.config.dim, model.config.ffn_dim, rank) for _ in model.layers]


def test_one_step_reads_only_predicted_rows():
    """FFN output = dense ReLU FFN with every neuron outside the predicted set zeroed (computed by hand)."""
    model = tiny_model(64)
    ffn = model.layers[0].ffn
    predictor = random_predictors(model)[0]
    wrapper = SparseDecodeFFN(ffn, torch.zeros(model.config.ffn_dim), predictor=predictor, track=True)
    x = torch.randn(1, 1, model.config.dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = wrapper(x)
        predicted = predictor(x[0]) >= 0  # [1, ffn_dim]
        act = torch.relu(x[0] @ ffn.up_proj.weight.T) * predicted
        expected = act @ ffn.down_proj.weight.T
    assert 0 < int(predicted.sum()) < model.config.ffn_dim  # a real subset, so the check can fail
    torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-6)
    assert wrapper.read == int(predicted.sum())
    active = torch.relu(x[0] @ ffn.up_proj.weight.T) > 0
    assert wrapper.recall == pytest.approx(int((active & predicted).sum()) / int(active.sum()))


def test_oracle_predictors_give_dense_greedy_text_and_read_only_active_rows():
    engine = InferenceEngine(tiny_model(64))
    dense = engine.generate(PROMPTS, GREEDY)
    engine.set_sparsity([0.0, 0.0])
    engine.set_predictors([oracle_predictor(block.ffn) for block in engine.model.layers])
    sparse = engine.generate(PROMPTS, GREEDY, ffn="sparse", track_sparsity=True)
    assert [g.token_ids for g in sparse.generations] == [g.token_ids for g in dense.generations]
    assert sparse.stats.predictor_recall == [1.0, 1.0]
    # batch 1 per length group here, so the rows read are exactly the active ones
    assert sparse.stats.read_ratio == pytest.approx(sparse.stats.activation_ratio)
    assert all(r < 0.8 for r in sparse.stats.read_ratio)


def test_fit_predictors_then_generate_reports_recall():
    engine = InferenceEngine(tiny_model(64, seed=2))
    seqs = torch.randint(0, 64, (8, 33), generator=torch.Generator().manual_seed(0))
    metrics = engine.fit_predictors(seqs, rank=8, epochs=5, lr=1e-2, val_fraction=0.2)
    assert [m.layer for m in metrics] == [0, 1] and all(0 <= m.recall <= 1 for m in metrics)
    with pytest.raises(ValueError, match="set_sparsity"):  # thresholds are still required
        engine.generate(PROMPTS[:1], GREEDY, ffn="sparse")
    engine.set_sparsity([0.0, 0.0])
    out = engine.generate(PROMPTS, GREEDY, ffn="sparse", track_sparsity=True)
    assert all(0 < r <= 1 for r in out.stats.predictor_recall)
    assert all(0 < r < 1 for r in out.stats.read_ratio)
    engine.set_predictors(None)
    out = engine.generate(PROMPTS, GREEDY, ffn="sparse", track_sparsity=True)
    assert out.stats.read_ratio == [1.0, 1.0] and out.stats.predictor_recall == [1.0, 1.0]


def test_predictors_file_round_trip_and_mismatch(tmp_path):
    model = tiny_model(64)
    predictors = random_predictors(model)
    path = save_predictors(tmp_path / "p.safetensors", predictors, layer_thresholds=[0.0, 0.5])
    loaded = load_predictors(path, model)
    x = torch.randn(3, model.config.dim)
    for a, b in zip(predictors, loaded, strict=True):
        torch.testing.assert_close(a(x), b(x))
    engine = InferenceEngine(model)
    engine.set_predictors(path)
    assert len(engine.predictors) == 2
    with pytest.raises(SparsityError, match=r"ffn_dim=64; this model has n_layers=2, dim=32, ffn_dim=48"):
        load_predictors(path, _model_with_ffn_dim(48))
    with pytest.raises(SparsityError, match="no such predictors file"):
        load_predictors(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(SparsityError, match="bad.safetensors: not a safetensors file"):
        load_predictors(bad)
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed, not left behind


def _model_with_ffn_dim(ffn_dim: int):
    from densa.models.config import ModelConfig
    from densa.models.transformer import Transformer

    config = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=ffn_dim)
    return Transformer(config)


def test_untracked_predicted_decode_equals_tracked():
    """Untracked steps take the fused native call (when built), tracked ones the generic path: same text."""
    engine = InferenceEngine(tiny_model(64, seed=4))
    engine.set_sparsity([0.0, 0.0])
    engine.set_predictors(random_predictors(engine.model, rank=6, seed=1))
    fast = engine.generate(PROMPTS, GREEDY, ffn="sparse")
    tracked = engine.generate(PROMPTS, GREEDY, ffn="sparse", track_sparsity=True)
    assert [g.token_ids for g in fast.generations] == [g.token_ids for g in tracked.generations]
    assert all(r < 1 for r in tracked.stats.read_ratio)
