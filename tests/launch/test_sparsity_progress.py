"""Long commands report progress on stderr: `densa sparsity measure` prints a line per batch, per CETT target
tried and per layer (it printed nothing for minutes on a real model)."""

from __future__ import annotations

import json
import re

from densa.launch.cli import main
from tests.launch.test_sparse_generate_cli import corpus, model_dir  # noqa: F401 - fixtures


def test_measure_prints_progress_lines(model_dir, corpus, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "report"
    argv = ["sparsity", "measure", "--model", str(model_dir), "--data", str(corpus), "--seq-len", "16"]
    argv += ["--num-tokens", "64", "--batch-size", "2", "--sweep", "0.1", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    # 64 tokens / 16 per sequence = 4 sequences, 2 per batch: 2 batches per pass.
    assert err[:5] == [
        "densa sparsity: FFN activations: batch 1/2",
        "densa sparsity: FFN activations: batch 2/2",
        "densa sparsity: CETT candidates: layer 1/2",
        "densa sparsity: CETT candidates: layer 2/2",
        "densa sparsity: perplexity: batch 1/2",
    ]
    tried = [line for line in err if re.match(r"densa sparsity: CETT \d\.\d{4}: ppl ", line)]
    report = json.loads((out / "sparsity.json").read_text())
    assert len(tried) == len(report["curve"])  # one line per evaluated target (the sweep included)
    assert any(line.startswith("densa sparsity: CETT 0.1000: ppl ") for line in tried)
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_moefy_announces_its_stages(tmp_path, capsys):
    from densa.models.checkpoint_io import save_transformer
    from tests.sparse_moe.conftest import tiny_model

    save_transformer(tmp_path / "dense", tiny_model(True, "silu"))
    argv = [
        "moefy",
        str(tmp_path / "dense"),
        "--experts",
        "8",
        "--top-k",
        "2",
        "--out",
        str(tmp_path / "moe"),
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()  # then a note: a SiLU FFN is not activation-sparse
    assert err[0] == "densa moefy: clustering 2 layers into 8 experts (kmeans)"
    assert err[1].startswith("densa moefy: note: this model's silu FFN is not activation-sparse")
