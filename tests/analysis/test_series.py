"""SSD checkpoints read in original neuron order; partition seeds and family subsets of the analysis;
knowledge probe sentences from fact templates."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from densa.analysis.errors import AnalysisError
from densa.analysis.modularity import Settings, analyze_modularity, emergence
from densa.analysis.modularity.activations import example_losses
from densa.analysis.modularity.emergence import compare_snapshots, snapshot
from densa.analysis.modularity.perturbation import eval_subset
from densa.analysis.modularity.series import original_order_, series_checkpoints, ssd_state
from densa.analysis.probes import TEMPLATES, knowledge_material, load_probes
from densa.data.facts import Fact
from densa.models import Transformer
from densa.sparse_moe import SSDCallback, SSDConfig, split_neurons
from densa.sparse_moe.moefication import neuron_rows
from densa.testing.models import tiny_model_config
from densa.train import safe_load
from tests.analysis.test_probes import probes_dir  # noqa: F401  (fixture)


def _relu_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_model_config(activation="relu", gated=False)).eval()


def _ssd(model: Transformer) -> SSDCallback:
    cb = SSDCallback(SSDConfig(num_experts=4, top_k=2), total_steps=100)
    cb.bind(model, None)
    return cb


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("mode", ["sparse", "dense after a sparse phase"])
def test_ssd_weights_read_back_in_original_neuron_order(mode: str) -> None:
    original = _relu_model()
    trained = copy.deepcopy(original)
    cb = _ssd(trained)
    cb.switch_to_sparse(10)
    if mode != "sparse":
        cb.switch_to_dense(20)
    # what a checkpoint holds: the (permuted) dense weights without routers, read into a dense model
    state = {k: v for k, v in trained.state_dict().items() if "router" not in k}
    read = Transformer(original.config).eval()
    read.load_state_dict(state)
    assert not torch.equal(read.layers[0].ffn.up_proj.weight, original.layers[0].ffn.up_proj.weight)
    _assert_same_weights(original_order_(read, cb.layouts), original)


def test_series_checkpoints_report_ssd_modes_and_layouts(tmp_path: Path) -> None:
    model = _relu_model()
    cb = _ssd(model)
    states = {}
    for step in (1, 2, 3):
        folder = tmp_path / "run" / "checkpoints" / f"step_{step}"
        folder.mkdir(parents=True)
        if step == 2:
            cb.switch_to_sparse(2)
            cb.sparse_steps_done = 5
        if step == 3:
            cb.switch_to_dense(3)
        states[step] = cb.state_dict()
        safe_load.save({"ssd": states[step]}, folder / "callbacks.pt")
        (folder / "COMPLETE").write_text(f"step {step}\n")
    ckpts = series_checkpoints(tmp_path / "run")
    assert [(c.step, c.mode, c.sparse_steps) for c in ckpts] == [
        (1, "dense", 0),
        (2, "sparse", 5),
        (3, "dense", 5),
    ]
    assert all(torch.equal(a, b) for a, b in zip(ckpts[2].layouts, states[3]["layouts"], strict=True))
    assert all(torch.equal(t, torch.arange(64)) for t in ckpts[0].layouts)
    assert ssd_state(tmp_path) is None  # a folder without callbacks.pt: no SSD
    with pytest.raises(AnalysisError, match="1 layouts for a model with 2 FFN layers"):
        original_order_(model, ckpts[2].layouts[:1])


def test_emergence_needs_the_original_order(probes_dir: Path) -> None:  # noqa: F811
    model = _relu_model()
    permuted = copy.deepcopy(model)
    cb = _ssd(permuted)
    cb.switch_to_sparse(1)
    cb.switch_to_dense(2)
    p = load_probes(probes_dir)
    raw = emergence([(1, model), (2, permuted), (3, permuted)], p, 4, log=lambda m: None)
    assert raw["to_final"][0]["neuron_spearman"] < 0.9  # neuron i is another neuron after the switch
    restored = original_order_(copy.deepcopy(permuted), cb.layouts)
    res = emergence([(1, model), (2, restored), (3, restored)], p, 4, log=lambda m: None)
    assert res["to_final"][0]["neuron_spearman"] == pytest.approx(1.0)
    assert res["to_final"][0]["param_ari"] == pytest.approx(1.0)
    assert len(res["param_seed_ari"]) == 3
    quick = emergence(
        [(1, model), (2, restored), (3, restored)], p, 4, clustering_noise=False, log=lambda m: None
    )
    assert quick["param_seed_ari"] == [] and quick["to_final"] == res["to_final"]


def test_cached_snapshots_give_the_same_curves_as_emergence(probes_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    p = load_probes(probes_dir)
    models = []
    for step in (1, 2, 3):
        m = _relu_model()
        with torch.no_grad():  # three different checkpoints: weights drifting away from the first
            for layer in m.layers:
                gen = torch.Generator().manual_seed(step)
                w = layer.ffn.up_proj.weight
                w.add_(0.3 * (3 - step) * torch.randn(w.shape, generator=gen))
        models.append((step, m))
    whole = emergence(models, p, 4, clustering_noise=False, log=lambda m: None)
    for step, m in models:  # taken one at a time, saved and read back, as run.py's snapshot stage does
        torch.save(snapshot(m, p, 4, clustering_noise=False), tmp_path / f"step_{step}.pt")
    snaps = [torch.load(tmp_path / f"step_{s}.pt") for s, _ in models]
    cached = compare_snapshots([1, 2, 3], snaps, 4)
    assert cached == {k: v for k, v in whole.items() if k != "seconds"}
    assert cached["to_final"][0]["neuron_spearman"] < 0.99  # the checkpoints do differ
    with pytest.raises(AnalysisError, match="emergence needs at least 3 checkpoints, found 2"):
        compare_snapshots([1, 2], snaps[:2], 4)


def test_perturbation_per_partition_seed_matches_zeroed_weights(probes_dir: Path) -> None:  # noqa: F811
    model = _relu_model()
    p = load_probes(probes_dir)
    settings = Settings(
        experts=4, perturb_per_label=2, partition_seeds=2, random_partitions=2, perturb_random=2
    )
    res = analyze_modularity(model, p, settings, log=lambda m: None)
    fam = res["families"]["linguistic"]
    runs = fam["perturbation"]["by_partition_seed"]
    assert len(runs) == 2 and runs[0]["delta"] == fam["perturbation"]["delta"]
    assert fam["experts"]["param"]["functional_fraction"]["sd"] >= 0.0
    subset = eval_subset(p.family("linguistic"), len(fam["labels"]), 2, 0)
    labels = torch.tensor([label for s in subset for _pos, label in s.examples])
    base = example_losses(model, subset)
    parts = [
        split_neurons(neuron_rows(layer.ffn).detach().float(), 4, seed=1).labels for layer in model.layers
    ]
    assert not all(
        torch.equal(a, split_neurons(neuron_rows(layer.ffn).detach().float(), 4, seed=0).labels)
        for a, layer in zip(parts, model.layers, strict=True)
    )
    for g, experts in enumerate(runs[1]["functional_experts"]):
        zeroed = copy.deepcopy(model)
        with torch.no_grad():
            for layer, e in enumerate(experts):
                zeroed.layers[layer].ffn.down_proj.weight[:, parts[layer] == e] = 0
        diff = example_losses(zeroed, subset) - base
        for j in range(len(fam["labels"])):
            keep = (labels == j) & diff.isfinite()
            assert runs[1]["delta"][g][j] == pytest.approx(float(diff[keep].mean()), abs=1e-5, nan_ok=True)


def test_a_family_subset_keeps_the_full_runs_partitions(probes_dir: Path) -> None:  # noqa: F811
    model = _relu_model()
    p = load_probes(probes_dir)
    # a loose test level, so that which experts are functional depends on the partition
    settings = Settings(experts=4, perturb=False, top_fraction=0.25, alpha=0.3)
    full = analyze_modularity(model, p, settings, log=lambda m: None)
    part = analyze_modularity(model, p, replace(settings, families=("knowledge",)), log=lambda m: None)
    assert list(part["families"]) == ["knowledge"]
    coact = full["families"]["knowledge"]["experts"]["coact"]["per_label_functional_fraction"]
    assert sum(coact) > 0
    assert json.dumps(part["families"]["knowledge"]) == json.dumps(full["families"]["knowledge"])
    with pytest.raises(AnalysisError, match=r"families \['topics'\] are not in the probes"):
        analyze_modularity(model, p, Settings(experts=4, families=("topics",)), log=lambda m: None)


def test_knowledge_sentences_rotate_templates_and_mark_the_object() -> None:
    facts = [Fact(f"Land{i}", "country", "capital", f"City{i}") for i in range(5)]
    facts += [
        Fact("Zürich", "city", "country", "Switzerland"),
        Fact("Bern", "city", "country", "Switzerland"),
    ]
    items = knowledge_material(facts, random.Random(0), per_relation=4)
    capital = [it for it in items if it["relation"] == "capital"]
    assert len(capital) == 4 and [it["template"] for it in capital] == [0, 1, 2, 0]
    for it in capital:
        written = {
            TEMPLATES["capital"][it["template"]].format(s=f.subject) + f" {f.object}." for f in facts[:5]
        }
        assert it["text"] in written
        assert it["text"][it["object_start"] :] == it["text"].rsplit(" ", 1)[1]  # "CityN."
    country = [it for it in items if it["relation"] == "country"]
    assert [it["text"] for it in country] == ["Bern is a city in the country of Switzerland."]  # ASCII only
