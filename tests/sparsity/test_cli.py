import json

import pytest

from densa.data.indexed import IndexedWriter
from densa.launch.cli import main
from densa.models.checkpoint_io import save_transformer
from densa.sparsity import SparsityReport


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, relu_model):
    return save_transformer(tmp_path_factory.mktemp("ckpt") / "tiny", relu_model)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, eval_seqs):
    prefix = tmp_path_factory.mktemp("data") / "calib"
    with IndexedWriter(prefix, vocab_size=32) as writer:
        for row in eval_seqs:  # several documents: the reader must concatenate them
            writer.add_document(row.numpy())
        writer.finalize()
    return prefix


def test_measure_writes_json_markdown_and_plots(checkpoint, dataset, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["sparsity", "measure", "--model", str(checkpoint), "--data", str(dataset), "--ppl-p", "1"]
    argv += ["--seq-len", "32", "--num-tokens", "512", "--out", str(out), "--sweep", "0.05,0.1"]
    assert main(argv) == 0
    data = json.loads((out / "sparsity.json").read_text())
    assert data["p"] == 1.0 and data["num_tokens"] == 512 and len(data["layers"]) == 2
    assert data["ppl_ratio"] == pytest.approx(1.01, abs=0.0005)
    assert {pt["knob"] for pt in data["curve"]} >= {0.05, 0.1}
    report = SparsityReport.load(out / "sparsity.json")
    assert report.sparsity == pytest.approx(data["sparsity"])
    md = (out / "sparsity.md").read_text()
    assert md.startswith("# PPL-1% sparsity: tiny") and md.count("\n| ") >= 3
    for name in ("sparsity_per_layer.png", "ppl_vs_sparsity.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_measure_rejects_short_data(checkpoint, dataset, tmp_path, capsys):
    argv = ["sparsity", "measure", "--model", str(checkpoint), "--data", str(dataset)]
    assert main(argv + ["--seq-len", "32", "--num-tokens", "100000", "--out", str(tmp_path)]) == 1
    assert (
        "calibration data has 528 tokens, fewer than the 103125 needed for num_tokens=100000"
        in capsys.readouterr().err
    )


def test_measure_rejects_bad_p_before_loading(tmp_path, capsys):
    argv = ["sparsity", "measure", "--model", str(tmp_path), "--data", str(tmp_path), "--ppl-p", "100"]
    assert main(argv) == 1
    assert "p must be in (0, 100)" in capsys.readouterr().err


def test_measure_rejects_non_model_folder(dataset, tmp_path, capsys):
    assert main(["sparsity", "measure", "--model", str(tmp_path), "--data", str(dataset)]) == 1
    assert "neither a densa model folder nor an HF folder" in capsys.readouterr().err
