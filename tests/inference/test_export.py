"""`densa export`: HF folder, tokenizer, model card; transformers parity; Hub push (dry run, fake API)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from densa.errors import CheckpointError, DensaError
from densa.inference import GenerationConfig, InferenceEngine, push_to_hub
from densa.inference.model_card import hide_local_paths
from densa.launch.cli import main


def front_matter(readme: str) -> tuple[dict, str]:
    assert readme.startswith("---\n")
    head, body = readme[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_export_writes_hf_folder(exported):
    names = {p.name for p in exported.iterdir()}
    expected = {"model.safetensors", "config.json", "generation_config.json", "README.md", "sparsity.json"}
    assert (
        expected | {"tokenizer.json", "tokenizer.model", "modeling_densa.py", "configuration_densa.py"}
        <= names
    )
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["bos_token_id"] == 1


def test_model_card_contents(exported, run_dir):
    meta, body = front_matter((exported / "README.md").read_text())
    assert meta["library_name"] == "transformers" and meta["license"] == "apache-2.0"
    assert {"densa", "relu", "activation-sparsity", "custom_code"} <= set(meta["tags"])
    recipe = (run_dir / "recipe.yaml").read_text().strip()
    assert hide_local_paths(recipe) in body  # the recipe, local absolute paths shown as <local>/NAME
    assert f"out_dir: <local>/{run_dir.name}" in body and str(run_dir) not in body
    assert "| train | data/train | corpus.txt | 7 | 1234 |" in body  # manifest sources, docs, tokens
    assert "| train loss (last) | 3.8750 | 4 |" in body
    assert "| validation loss | 3.5000 | 4 |" in body and "| validation perplexity | 33.115 | 4 |" in body
    assert "## Activation sparsity" in body and "| 1 | 0 | 0.0000 | 50.00% | 50.00% |" in body
    assert "trust_remote_code=True" in body


def test_export_step_and_dtype(run_dir, tmp_path):
    out = tmp_path / "step2"
    assert main(["export", str(run_dir), "--out", str(out), "--step", "2", "--dtype", "bf16"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype" if "torch_dtype" in config else "dtype"] == "bfloat16"
    _, body = front_matter((out / "README.md").read_text())
    assert "| train loss (last) | 4.5000 | 2 |" in body  # metrics up to the exported step only


def test_same_greedy_text_as_transformers(exported, monkeypatch):
    """The issue's done-criterion: densa.inference (sparse path) and AutoModelForCausalLM agree."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def no_prompt(*_args):
        raise AssertionError("transformers asked whether to trust remote code")

    monkeypatch.setattr("builtins.input", no_prompt)

    engine = InferenceEngine.from_pretrained(exported, sparsity=exported / "sparsity.json")
    prompts = ["hello world", "the quick brown fox"]
    ours = engine.generate(prompts, GenerationConfig(max_new_tokens=12), ffn="sparse")
    hf = AutoModelForCausalLM.from_pretrained(exported, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(exported, trust_remote_code=True)
    for prompt, gen in zip(prompts, ours.generations, strict=True):
        enc = tok(prompt, return_tensors="pt")
        assert enc["input_ids"][0].tolist() == gen.prompt_ids
        with torch.no_grad():
            theirs = hf.generate(**enc, max_new_tokens=12, do_sample=False)[0, enc["input_ids"].shape[1] :]
        theirs = theirs.tolist()
        if tok.eos_token_id in theirs:
            theirs = theirs[: theirs.index(tok.eos_token_id)]
        assert gen.token_ids == theirs
        assert gen.text == tok.decode(theirs, skip_special_tokens=True)
    assert ours.stats.tokens_per_s > 0


def test_push_dry_run_prints_plan(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = tmp_path / "hf"
    args = ["export", str(run_dir), "--out", str(out), "--push-to-hub", "me/tiny", "--dry-run"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "to me/tiny:" in printed
    size = (out / "model.safetensors").stat().st_size
    assert "model.safetensors  " in printed and f"({size} bytes)" in printed
    assert "README.md" in printed and "tokenizer.json" in printed


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


def test_push_calls_hf_api(exported, monkeypatch):
    import huggingface_hub

    made: list[dict] = []

    def factory(**kwargs):
        made.append(kwargs)
        return api

    api = FakeApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", factory)
    plan = push_to_hub(exported, "me/tiny", token="hf_test", private=True)
    assert made == [{"token": "hf_test"}]
    (name, create), (name2, upload) = api.calls
    assert name == "create_repo" and name2 == "upload_folder"
    assert create == {
        "repo_id": "me/tiny",
        "repo_type": "model",
        "private": True,
        "exist_ok": True,
        "token": "hf_test",
    }
    assert upload["repo_id"] == "me/tiny" and upload["folder_path"] == str(exported)
    assert upload["repo_type"] == "model" and upload["token"] == "hf_test"
    assert ("model.safetensors", (exported / "model.safetensors").stat().st_size) in plan.files


def test_push_without_token_fails_clearly(exported, monkeypatch):
    import densa.inference.hub as hub

    monkeypatch.setattr(hub, "find_token", lambda: None)
    with pytest.raises(DensaError, match="no Hugging Face token: set HF_TOKEN"):
        push_to_hub(exported, "me/tiny", api=FakeApi())
    with pytest.raises(DensaError, match="repo id like 'user/name'"):
        push_to_hub(exported, "tiny", dry_run=True)


def test_missing_files_name_path_and_file(run_dir, exported, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=f"{broken}: missing model.safetensors"):
        InferenceEngine.from_pretrained(broken)
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing config.json"):
        InferenceEngine.from_pretrained(broken)
    with pytest.raises(CheckpointError, match="training run dir"):
        InferenceEngine.from_pretrained(run_dir)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "checkpoints" / "step_4" / "deepspeed" / "mp_rank_00_model_states.pt").unlink()
    assert main(["export", str(run), "--out", str(tmp_path / "x")]) == 1
    assert "step_4: no DeepSpeed model states under deepspeed/" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--step", "3"]) == 1
    assert "no complete checkpoint step_3 (have [2, 4])" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--step", "2", "--tokenizer", "nope"]) == 1
    assert "nope: tokenizer not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_ships_predictors_that_the_engine_picks_up(run_dir, relu_model, tmp_path, capsys):
    from densa.sparsity import LowRankPredictor, PredictorMetrics, save_predictors

    c = relu_model.config
    torch.manual_seed(0)
    predictors = [LowRankPredictor(c.dim, c.ffn_dim, 4) for _ in range(c.n_layers)]
    metrics = [PredictorMetrics(j, 4, 0.9, 0.5, 0.6, 0.4, 0.7) for j in range(c.n_layers)]
    path = save_predictors(tmp_path / "p.safetensors", predictors, metrics=metrics)
    out = tmp_path / "with_predictors"
    assert main(["export", str(run_dir), "--out", str(out), "--predictors", str(path)]) == 0
    assert (out / "predictors.safetensors").read_bytes() == path.read_bytes()
    _, body = front_matter((out / "README.md").read_text())
    assert "## Neuron predictors" in body and "| 1 | 0.900 | 0.500 | 40.0% |" in body
    engine = InferenceEngine.from_pretrained(out)  # "auto": the folder's sparsity.json and predictors
    assert engine.thresholds == [0.0] * c.n_layers and len(engine.predictors) == c.n_layers
    plain = InferenceEngine.from_pretrained(out, sparsity=None, predictors=None)
    assert plain.thresholds is None and plain.predictors is None
    wide = save_predictors(
        tmp_path / "wide.safetensors", [LowRankPredictor(c.dim, 2 * c.ffn_dim, 4)] * c.n_layers
    )
    capsys.readouterr()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "bad"), "--predictors", str(wide)]) == 1
    assert f"{wide}: predictors for n_layers, dim, ffn_dim = " in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
