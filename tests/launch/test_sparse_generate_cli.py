"""`densa generate --sparsity/--predictors` and `densa sparsity predictors`, in-process, tiny ReLU model."""

from __future__ import annotations

import json
import random
import re
import shutil

import pytest

from densa.launch.cli import main
from densa.models.checkpoint_io import save_transformer
from densa.sparsity import load_predictors
from tests.inference.conftest import WORDS, tiny_model

PROMPT = ["--prompt", "the quick brown fox", "--max-new-tokens", "12"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(400))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, corpus):
    """A densa model folder (plain ReLU FFN, 2 layers) with its SentencePiece tokenizer.model."""
    from densa.data.sp_train import train_sentencepiece
    from densa.data.tokenizer import load_tokenizer

    sp = train_sentencepiece([corpus], tmp_path_factory.mktemp("sp"), vocab_size=320, num_threads=1)
    folder = save_transformer(
        tmp_path_factory.mktemp("model") / "tiny", tiny_model(load_tokenizer(sp).vocab_size)
    )
    shutil.copy(sp, folder / "tokenizer.model")
    return folder


@pytest.fixture(scope="module")
def predictors(tmp_path_factory, model_dir, corpus):
    out = tmp_path_factory.mktemp("pred") / "tiny.safetensors"
    argv = ["sparsity", "predictors", "--model", str(model_dir), "--data", str(corpus), "--rank", "8"]
    argv += ["--out", str(out), "--seq-len", "16", "--num-tokens", "512", "--epochs", "5", "--lr", "1e-2"]
    assert main(argv) == 0
    return out


def generate(capsys, model_dir, *extra: str) -> tuple[str, str]:
    assert main(["generate", "--model", str(model_dir), *PROMPT, *extra]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def ratios(err: str, name: str) -> list[float]:
    found = re.search(rf"{name} \[([^\]]*)\]", err)
    assert found, err
    return [float(x) for x in found.group(1).split(",")]


def test_zero_thresholds_give_the_dense_text(model_dir, tmp_path, capsys):
    """At t = 0 a ReLU model's sparse decode is exact: same greedy and same sampled text as the dense path."""
    dense, dense_err = generate(capsys, model_dir, "--temperature", "0")
    assert dense.strip() and "sparse FFN" not in dense_err
    sparse, err = generate(capsys, model_dir, "--temperature", "0", "--sparsity", "0,0")
    assert sparse == dense
    assert ratios(err, "read ratio") == [1.0, 1.0] and ratios(err, "predictor recall") == [1.0, 1.0]
    assert all(0 < r < 1 for r in ratios(err, "activation ratio"))
    assert re.search(r"; [0-9.]+ decode tok/s\n$", err)
    report = tmp_path / "sparsity.json"  # the same thresholds from a `densa sparsity measure` report
    layers = [{"layer": i, "threshold": 0.0, "cett": 0.0, "sparsity": 0.5} for i in range(2)]
    fields = {"p": 1.0, "cett_target": 0.0, "ppl_dense": 9.0, "ppl_sparse": 9.0, "converged": True}
    report.write_text(json.dumps({**fields, "num_tokens": 64, "layers": layers}), encoding="utf-8")
    assert generate(capsys, model_dir, "--temperature", "0", "--sparsity", str(report))[0] == dense
    sampled = ["--temperature", "0.8", "--top-p", "0.9", "--seed", "3"]
    assert (
        generate(capsys, model_dir, *sampled, "--sparsity", "0,0")[0]
        == generate(capsys, model_dir, *sampled)[0]
    )


def test_kv_policy_with_sparse_path(model_dir, capsys):
    kv = ["--temperature", "0", "--kv-policy", "full", "--chunk", "4"]
    dense, _ = generate(capsys, model_dir, *kv)
    sparse, err = generate(capsys, model_dir, *kv, "--sparsity", "0,0")
    assert sparse == dense
    assert "densa generate: policy full, budget None, chunk 4: peak" in err and "read ratio" in err


def test_predictors_trained_saved_and_used(predictors, model_dir, capsys):
    out = capsys.readouterr().out  # the fixture's output, when it ran within this test
    loaded = load_predictors(predictors)
    assert len(loaded) == 2 and loaded[0].down.out_features == 8
    summary = json.loads(predictors.with_name("tiny.metrics.json").read_text())
    assert summary["rank"] == 8 and [m["layer"] for m in summary["layers"]] == [0, 1]
    assert all(0 <= m["recall"] <= 1 for m in summary["layers"])
    if out:
        assert "| layer | recall | precision | true sparsity | predicted sparsity |" in out
    _, err = generate(
        capsys, model_dir, "--temperature", "0", "--sparsity", "0,0", "--predictors", str(predictors)
    )
    assert f"predictors {predictors}" in err
    assert all(0 < r < 1 for r in ratios(err, "read ratio"))
    assert all(0 <= r <= 1 for r in ratios(err, "predictor recall"))


def error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    return capsys.readouterr().err.strip()


def test_generate_errors(model_dir, predictors, tmp_path, capsys):
    base = ["generate", "--model", str(model_dir), *PROMPT]
    assert error(capsys, [*base, "--predictors", str(predictors)]) == (
        "densa generate: error: --predictors needs --sparsity "
        "(e.g. --sparsity 0,0,0,0 for exact ReLU thresholds)"
    )
    assert error(capsys, [*base, "--sparsity", "0,0,0"]) == (
        "densa generate: error: --sparsity 0,0,0: 3 layer thresholds, the model has 2 layers"
    )
    assert error(capsys, [*base, "--sparsity", "nope"]) == (
        "densa generate: error: --sparsity nope: no such file, "
        "and not comma-separated thresholds such as 0,0,0,0"
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    assert error(capsys, [*base, "--sparsity", str(bad)]).startswith(
        f"densa generate: error: --sparsity {bad}: not a sparsity report from `densa sparsity measure`"
    )
    assert error(capsys, [*base, "--sparsity", "0,0", "--sparse-backend", "triton"]) == (
        "densa generate: error: --sparse-backend triton needs --device cuda"
    )
    # no such device here (CPU build: not compiled with CUDA; CUDA build: no 100th GPU)
    assert error(capsys, [*base, "--sparsity", "0,0", "--device", "cuda:99"]).startswith(
        "densa generate: error: --device cuda:99: "
    )
    assert error(capsys, [*base, "--sparse-backend", "torch"]) == (
        "densa generate: error: --sparse-backend and --device apply to the sparse path; add --sparsity"
    )


def test_predictors_errors(model_dir, corpus, tmp_path, capsys):
    base = ["sparsity", "predictors", "--data", str(corpus), "--out", str(tmp_path / "p.safetensors")]
    assert error(capsys, [*base, "--model", str(model_dir), "--rank", "0"]) == (
        "densa sparsity: error: --rank must be >= 1, got 0"
    )
    missing = tmp_path / "missing"
    assert error(capsys, [*base, "--model", str(missing), "--rank", "4"]) == (
        f"densa sparsity: error: {missing}: no such model folder"
    )
    report = tmp_path / "sparsity.json"
    layers = [{"layer": i, "threshold": 0.0, "cett": 0.0, "sparsity": 0.5} for i in range(3)]
    fields = {"p": 1.0, "cett_target": 0.0, "ppl_dense": 9.0, "ppl_sparse": 9.0, "converged": True}
    report.write_text(json.dumps({**fields, "num_tokens": 64, "layers": layers}), encoding="utf-8")
    assert error(capsys, [*base, "--model", str(model_dir), "--rank", "4", "--thresholds", str(report)]) == (
        f"densa sparsity: error: --thresholds {report}: 3 layer thresholds, the model has 2 layers"
    )
    assert not (tmp_path / "p.safetensors").exists()
