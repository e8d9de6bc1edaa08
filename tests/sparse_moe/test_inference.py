import json

import pytest
import torch

from densa.launch.cli import main
from densa.models.checkpoint_io import load_transformer, save_transformer
from densa.sparse_moe import MoEError, load_moe, moefy, perplexity, perplexity_vs_top_k

from .conftest import tiny_model


def sequences():
    gen = torch.Generator().manual_seed(9)
    return [torch.randint(0, 64, (4, 17), generator=gen) for _ in range(2)]


def test_moefy_save_load_and_perplexity_vs_k(tmp_path):
    model = tiny_model(True, "silu").eval()
    dense_ppl = perplexity(model, sequences())
    save_transformer(tmp_path / "dense", model)
    code = main(
        ["moefy", str(tmp_path / "dense"), "--experts", "8", "--top-k", "2", "--out", str(tmp_path / "moe")]
    )
    assert code == 0

    moe = load_moe(tmp_path / "moe")
    assert moe.layers[0].ffn.top_k == 2 and moe.layers[0].ffn.num_experts == 8
    meta = json.loads((tmp_path / "moe" / "moe.json").read_text())
    assert sorted(meta["layouts"][0]) == list(range(64)) and meta["layouts"][0] != list(range(64))
    ppls = perplexity_vs_top_k(moe, sequences(), [1, 2, 4, 8])
    assert ppls[8] == pytest.approx(dense_ppl, rel=1e-5)  # k = E is the dense model
    assert ppls[1] != pytest.approx(dense_ppl, rel=1e-3)
    assert moe.layers[0].ffn.top_k == 2  # restored after the sweep
    # The MoE folder is still a dense checkpoint (permuted neurons): same function.
    assert perplexity(load_transformer(tmp_path / "moe"), sequences()) == pytest.approx(dense_ppl, rel=1e-5)
    # The saved router is the one in use.
    again = load_moe(tmp_path / "moe", top_k=8)
    assert torch.equal(again.layers[1].ffn.router.weight, moe.layers[1].ffn.router.weight)


def test_moefy_in_python_and_bad_input(tmp_path, capsys):
    model = tiny_model(False, "relu")
    layouts = moefy(model, 4, 1, method="random")
    assert [sorted(lay.tolist()) for lay in layouts] == [list(range(64))] * 2
    with pytest.raises(MoEError, match="perplexity_vs_top_k needs an MoE model"):
        perplexity_vs_top_k(tiny_model(), sequences(), [1])

    save_transformer(tmp_path / "dense", tiny_model())
    assert main(["moefy", str(tmp_path / "dense"), "--experts", "5", "--out", str(tmp_path / "x")]) == 1
    assert "num_experts (5) must divide ffn_dim (64)" in capsys.readouterr().err
    assert (
        main(
            ["moefy", str(tmp_path / "dense"), "--experts", "8", "--top-k", "9", "--out", str(tmp_path / "x")]
        )
        == 1
    )
    assert "top_k must be between 1 and num_experts (8), got 9" in capsys.readouterr().err
    assert main(["moefy", str(tmp_path / "nope"), "--experts", "8", "--out", str(tmp_path / "x")]) == 1
    assert "neither a densa model folder nor an HF folder" in capsys.readouterr().err


def test_moefy_reads_hf_folders(tmp_path):
    from densa.models.hf.exporter import export_hf

    model = tiny_model(True, "silu").eval()
    export_hf(tmp_path / "hf", model)
    assert main(["moefy", str(tmp_path / "hf"), "--experts", "4", "--out", str(tmp_path / "moe")]) == 0
    moe = load_moe(tmp_path / "moe", top_k=4)
    assert perplexity(moe, sequences()) == pytest.approx(perplexity(model, sequences()), rel=1e-5)
