"""The MoE path from the CLI (issue 18, item 5): `densa moefy` carries the tokenizer and warns when quality
collapses, `densa generate` runs an MoE folder's top-k experts, `densa export` refuses an MoE folder unless
`--dense`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from densa.launch.cli import main
from densa.launch.commands.moefy import quality_warning
from densa.models.checkpoint_io import load_transformer, save_transformer
from densa.models.generation import generate
from densa.sparse_moe import load_moe

from .conftest import tiny_model

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def dense(tmp_path_factory, sp_model) -> Path:
    """A densa model folder (ReLU, 2 layers, ffn_dim 64) with its SentencePiece tokenizer.model."""
    from densa.data.tokenizer import load_tokenizer

    folder = tmp_path_factory.mktemp("dense") / "model"
    model = tiny_model(load_tokenizer(sp_model).vocab_size, seed=3)
    with torch.no_grad():  # larger FFN weights: routing matters, so top-2 of 8 is not the dense model
        for layer in model.layers:
            for p in layer.ffn.parameters():
                p.normal_(0.0, 0.3)
    save_transformer(folder, model)
    shutil.copy(sp_model, folder / "tokenizer.model")
    return folder


@pytest.fixture(scope="module")
def moe(dense, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("moe") / "moe"
    assert main(["moefy", str(dense), "--experts", "8", "--top-k", "2", "--out", str(out)]) == 0
    return out


def _greedy(model, ids: list[int], n: int = 8) -> list[int]:
    return generate(model, torch.tensor([ids]), n)[0, len(ids) :].tolist()


def test_moefy_carries_the_tokenizer(dense, moe):
    from densa.data.tokenizer import load_tokenizer

    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in moe.iterdir()}
    source, carried = load_tokenizer(dense / "tokenizer.model"), load_tokenizer(moe)
    assert (
        carried.encode(PROMPT)
        == source.encode(PROMPT)
        == [299, 263, 293, 317, 305, 309, 316, 306, 293, 285, 293, 291]
    )
    assert (carried.bos_id, carried.eos_id) == (source.bos_id, source.eos_id) == (1, 2)


def test_generate_runs_the_moe_form(moe, capsys):
    from densa.data.tokenizer import load_tokenizer

    tok = load_tokenizer(moe)
    ids = [tok.bos_id, *tok.encode(PROMPT)]
    routed = _greedy(load_moe(moe), ids)  # the reference MoE forward, top-2 of 8
    dense = _greedy(load_transformer(moe), ids)
    assert routed == [228, 186, 182, 106, 164, 264, 212, 62]
    assert dense == [241, 107, 228, 241, 249, 182, 233, 246] and routed != dense

    argv = [
        "generate",
        "--model",
        str(moe),
        "--prompt",
        PROMPT,
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == tok.decode(ids[1:] + routed) + "\n"
    assert "densa generate: MoE form (moe.json): top-2 of 8 experts per token" in err

    # --moe-top-k E runs every expert: the dense model.
    assert main([*argv, "--moe-top-k", "8"]) == 0
    out, err = capsys.readouterr()
    assert out == tok.decode(ids[1:] + dense) + "\n" and "top-8 of 8 experts" in err


def test_generate_moe_flag_errors(dense, moe, capsys):
    assert main(["generate", "--model", str(dense), "--prompt", PROMPT, "--moe-top-k", "2"]) == 1
    assert f"--moe-top-k needs an MoE folder (densa moefy output); {dense} has no moe.json" in (
        capsys.readouterr().err
    )
    assert main(["generate", "--model", str(moe), "--prompt", PROMPT, "--sparsity", "0,0"]) == 1
    assert "--sparsity runs dense FFN layers" in capsys.readouterr().err


def test_export_refuses_an_moe_folder_unless_dense(moe, tmp_path, capsys):
    assert main(["export", str(moe), "--out", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err
    assert (
        f"{moe} is an MoE folder (8 experts, top-2); an HF export cannot route to the top-k experts and would"
        f" be the dense model. Export the dense equivalent (same weights, every expert active) with"
        f" `densa export {moe} --out DIR --dense`; run the MoE form with `densa generate --model {moe}`"
    ) in err
    assert not (tmp_path / "hf").exists()

    assert main(["export", str(moe), "--out", str(tmp_path / "hf"), "--dense"]) == 0
    capsys.readouterr()
    from densa.models.hf.importer import load_hf_model

    hf = load_hf_model(tmp_path / "hf")
    ids = [1, 299, 263, 293, 317, 305]
    assert _greedy(hf, ids) == _greedy(load_moe(moe, top_k=8), ids) == _greedy(load_transformer(moe), ids)
    assert not (tmp_path / "hf" / "moe.json").exists() and (tmp_path / "hf" / "tokenizer.json").is_file()


def test_quality_warning_text():
    assert quality_warning(30.0, 20.0, 4, 16, "relu") is None  # 1.5x: under the threshold
    assert quality_warning(76012.0, 20.5, 4, 16, "silu") == (
        "MoEfication destroyed quality: top-4 of 16 experts gives perplexity 7.601e+04, 3.71e+03x the dense"
        " model's 20.5 (warning above 2x). To keep quality: this model's silu FFN is not activation-sparse:"
        " ReLU-fy and finetune it first (sparsity.prosparse in a recipe, docs/sparsity.md), or train with SSD"
        " (docs/ssd.md); activate more experts (--top-k 8, or pick k from the table above); cluster into"
        " more, smaller experts (--experts); train the router on activation mass (--router mlp) instead of"
        " centroids; if k-means on weights (parameter clustering) splits badly, co-activation clustering may"
        " not."
    )
    random = quality_warning(9.0, 3.0, 1, 4, "relu", "random")
    assert random is not None and "ReLU-fy" not in random
    assert random.endswith("cluster by parameters (--method kmeans; random is a baseline).")


def test_moefy_eval_warns_on_a_tiny_model(dense, tmp_path, capsys):
    from densa.data.indexed import IndexedWriter

    model = load_transformer(dense)
    with IndexedWriter(tmp_path / "eval", vocab_size=320) as writer:
        for start in range(10, 18):  # the dense model's own greedy text: low dense perplexity
            writer.add_document([start, *_greedy(model, [1, start], 39)])
        writer.finalize()
    argv = ["moefy", str(dense), "--experts", "8", "--top-k", "1", "--out", str(tmp_path / "moe")]
    code = main([*argv, "--eval", str(tmp_path / "eval"), "--eval-tokens", "128", "--seq-len", "16"])
    out, err = capsys.readouterr()
    assert code == 0, err
    ppl = {int(line.split()[0][4:]): float(line.split()[-1]) for line in out.splitlines()[1:]}
    assert sorted(ppl) == [1, 2, 4, 8]
    assert (ppl[1], ppl[8]) == pytest.approx((230.04, 39.83), rel=1e-3)
    assert (
        "densa moefy: warning: MoEfication destroyed quality: top-1 of 8 experts gives perplexity 230,"
        " 5.78x the dense model's 39.83 (warning above 2x)."
    ) in err
    assert "activate more experts (--top-k 2, or pick k from the table above)" in err


def test_moefy_notes_a_non_sparse_activation(tmp_path, capsys):
    save_transformer(tmp_path / "silu", tiny_model(320, gated=True, activation="silu"))
    assert main(["moefy", str(tmp_path / "silu"), "--experts", "4", "--out", str(tmp_path / "moe")]) == 0
    assert capsys.readouterr().err.endswith(
        "densa moefy: note: this model's silu FFN is not activation-sparse, so top-1 of 4 experts may lose"
        " much of its quality; measure it with --eval DATA_PREFIX\n"
    )
