"""LoRA SFT from a recipe: only the adapters train, the base stays bit-identical, the run resumes exactly,
and both exports (adapter folder at the end of training, `densa export --lora merged`) give the logits of
densa's own model read from the checkpoint, in `peft` and in `transformers` (fp32, ≤ 1e-5)."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import SFT_VOCAB, StopAt, sft_corpus, tiny_hf_llama, weights

from densa.config.load import load_recipe_dict
from densa.launch.cli import main
from densa.models.hf import load_hf_state
from densa.train.finetune import load_model, load_weights
from densa.train.run import build_trainer, train

SEQ, TOL = 48, 1e-5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_sft")
    tok, jsonl = sft_corpus(root)
    return tiny_hf_llama(root / "base"), tok, jsonl


def _cfg(files, run_dir, *, steps=4, export=None, zero_stage=0):
    base, tok, jsonl = files
    recipe = {  # no model: section, the shapes come from the base folder
        "run": {"name": "lora", "out_dir": str(run_dir), "seed": 3},
        "init": {"from_path": str(base)},
        "lora": {"enabled": True, "rank": 4, "alpha": 8, "export": "adapter"},
        "data": {"format": "sft", "train": [{"path": str(jsonl)}], "seq_len": SEQ, "tokenizer": str(tok)},
        "batch": {"global_tokens": 4 * SEQ, "micro_batch": 2},
        "train": {"steps": steps},
        "optim": {"lr": 1e-2, "weight_decay": 0.1},
        "schedule": {"kind": "cosine", "warmup_steps": 1},
        "checkpoint": {"interval": 1000, "keep_last": 2},
        "logging": {"log_interval": 1, "tensorboard": False, "progress": False},
        "export": {"hf_dir": export},
        "parallel": {"zero_stage": zero_stage},
    }  # fmt: skip
    return load_recipe_dict(recipe, str(run_dir.parent / "recipe.yaml"))


@pytest.fixture(scope="module")
def run(files, tmp_path_factory, ds_world):
    run_dir = tmp_path_factory.mktemp("lora_run") / "run"
    result = train(_cfg(files, run_dir, export=str(run_dir / "adapter")))
    assert result.state.step == 4 and result.history[-1]["loss"] < result.history[0]["loss"]
    return run_dir


def test_only_adapters_train_and_the_base_is_unchanged(run, files):
    _, state = load_weights(run, merge_lora=False)
    _, source = load_hf_state(files[0])
    adapters = {k for k in state if ".lora_" in k}
    assert len(adapters) == 16  # 2 layers x 4 projections x (A, B)
    assert all(torch.any(state[k] != 0) for k in adapters if ".lora_B." in k)  # B left zero: trained
    plain = {k.replace(".base_layer.", "."): v for k, v in state.items() if k not in adapters}
    assert plain.keys() == source.keys()
    assert all(torch.equal(plain[k], source[k]) for k in source)  # bit-identical base weights


def _ids():
    return torch.randint(0, SFT_VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))


def test_adapter_export_loads_in_peft(run, files):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = run / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    assert not (folder / "config.json").exists()
    hf = AutoModelForCausalLM.from_pretrained(files[0], dtype=torch.float32)
    model = PeftModel.from_pretrained(hf, folder).eval()
    ours = load_model(run)  # densa reads the checkpoint merged
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()).logits, ours(_ids()), rtol=0, atol=TOL)


def test_cli_merged_export_loads_in_transformers(run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["export", str(run), "--out", str(tmp_path / "hf"), "--lora", "merged"]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").vocab_size == SFT_VOCAB
    with torch.no_grad():
        torch.testing.assert_close(hf(_ids()).logits, load_model(run)(_ids()), rtol=0, atol=TOL)


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_lora_run_resumes_exactly(files, tmp_path, ds_world, zero_stage):
    ref_trainer = build_trainer(_cfg(files, tmp_path / "full", zero_stage=zero_stage))
    ref = ref_trainer.fit()
    split = _cfg(files, tmp_path / "split", zero_stage=zero_stage)
    first = build_trainer(split, callbacks=[StopAt(1)]).fit()
    assert first.interrupted and first.state.step == 2
    second_trainer = build_trainer(split)
    second = second_trainer.fit()
    assert [h["loss"] for h in first.history + second.history] == [h["loss"] for h in ref.history]
    a, b = weights(ref_trainer), weights(second_trainer)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
