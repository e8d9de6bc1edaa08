"""Map-tuning as recipe kinds run by the trainer: general (mention LM on the KB's statements) and task
(downstream examples, from the general mapper); the model's weights stay bit-identical, the mapper file
loads back for the same model, KB and embeddings; bad recipes fail with the path and rule."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_helpers import sft_corpus, tiny_hf_llama

from densa.config.errors import ConfigError
from densa.config.load import load_recipe_dict
from densa.models.hf import load_hf_state
from densa.plugins.io import load_embeddings, load_plugin, new_plugin, save_embeddings
from densa.plugins.kb import KnowledgeBase, read_kb
from densa.train.finetune import load_model, load_weights
from densa.train.run import train

SEQ = 24
TRIPLES = [("alpha", "near", "beta"), ("gamma", "near", "delta"), ("beta", "far", "gamma")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin_recipe")
    tok, _ = sft_corpus(root)
    tiny_hf_llama(root / "base")
    kb = KnowledgeBase.from_triples(TRIPLES)
    kb.save(root / "kb.tsv")
    save_embeddings(
        root / "emb.safetensors", kb, torch.randn(len(kb.entities), 8, generator=torch.Generator())
    )
    examples = [{"prompt": f"[[{h}]] is {r}", "answer": t} for h, r, t in TRIPLES]
    (root / "task.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    return root, tok


def _recipe(files, run_dir, **plugin):
    root, tok = files
    return {
        "run": {"name": "plugin", "out_dir": str(run_dir), "seed": 3},
        "init": {"from_path": str(root / "base")},
        "plugin": {
            "enabled": True, "kb": str(root / "kb.tsv"), "embeddings": str(root / "emb.safetensors"), **plugin
        },
        "data": {"seq_len": SEQ, "tokenizer": str(tok)},
        "batch": {"global_tokens": 2 * SEQ, "micro_batch": 2},
        "train": {"steps": 4},
        "optim": {"lr": 1e-2, "weight_decay": 0.0},
        "schedule": {"kind": "constant"},
        "checkpoint": {"interval": 1000, "keep_last": 1},
        "logging": {"log_interval": 1, "tensorboard": False, "progress": False},
    }  # fmt: skip


def _cfg(files, run_dir, **plugin):
    return load_recipe_dict(_recipe(files, run_dir, **plugin), str(run_dir.parent / "recipe.yaml"))


def _ask_matches_hf(files, mapper_file, mapper, kb, capsys) -> None:
    """`densa plugin ask` plugs the trained mapper in: its first token is HF's own greedy token for
    inputs_embeds built by hand (W e + b at the [E] position); an unknown mention is counted."""
    from transformers import AutoModelForCausalLM

    from densa.data.tokenizer import load_tokenizer
    from densa.launch.cli import main
    from densa.plugins.inject import encode_mentions

    root, tok_path = files
    tok = load_tokenizer(tok_path)
    args = ["--model", str(root / "base"), "--kb", str(root / "kb.tsv"), "--embeddings"]
    args += [str(root / "emb.safetensors"), "--mapper", str(mapper_file), "--tokenizer", str(tok_path)]
    assert (
        main(["plugin", "ask", "[[alpha]] near", "[[zulu]] far", *args, "--json", "--max-new-tokens", "1"])
        == 0
    )
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["unknown_mentions"] for o in out] == [0, 1]
    enc = encode_mentions("[[alpha]] near", tok.encode, kb, tok.eos_id)
    hf = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32)
    ids = torch.tensor([enc.input_ids])
    embeds = hf.get_input_embeddings()(ids)
    (pos,) = [i for i, e in enumerate(enc.entity_ids) if e >= 0]
    e = mapper.embeddings[kb.entity_id("alpha")]
    embeds[0, pos] = mapper.mapper.weight @ e + mapper.mapper.bias
    first = int(hf(inputs_embeds=embeds).logits[0, -1].argmax())
    assert out[0]["answer"] == tok.decode([first])


def test_embed_cli_writes_embeddings_of_the_kb(files, tmp_path) -> None:
    from densa.launch.cli import main

    root, _ = files
    out = str(tmp_path / "e.safetensors")
    assert main(["plugin", "embed", str(root / "kb.tsv"), "--out", out, "--dim", "4", "--epochs", "3"]) == 0
    emb = load_embeddings(tmp_path / "e.safetensors", read_kb(root / "kb.tsv"))
    assert emb.shape == (4, 4) and torch.allclose(emb.norm(dim=1), torch.ones(4))


def test_general_then_task_map_tuning(files, tmp_path, ds_world, capsys) -> None:
    root, _ = files
    kb = read_kb(root / "kb.tsv")
    emb = load_embeddings(root / "emb.safetensors", kb)
    general = train(_cfg(files, tmp_path / "general"))
    assert general.state.step == 4 and all(h["applied"] for h in general.history)
    _, state = load_weights(tmp_path / "general")
    _, source = load_hf_state(root / "base")
    plain = {k: v for k, v in state.items() if not k.startswith("knowledge_plugin.")}
    assert plain.keys() == source.keys() and all(torch.equal(plain[k], source[k]) for k in source)

    model = load_model(root / "base")
    mapper = load_plugin(tmp_path / "general" / "plugin.safetensors", model, kb, emb)
    fresh = new_plugin(model, kb, emb, seed=3)  # what the run started from (seeded by run.seed)
    assert not torch.equal(mapper.mapper.weight, fresh.mapper.weight)
    assert torch.equal(mapper.mapper.weight, state["knowledge_plugin.mapper.weight"])

    _ask_matches_hf(files, tmp_path / "general" / "plugin.safetensors", mapper, kb, capsys)

    task = train(
        _cfg(
            files,
            tmp_path / "task",
            kind="task",
            examples=str(root / "task.jsonl"),
            init_mapper=str(tmp_path / "general" / "plugin.safetensors"),
        )
    )
    assert task.state.step == 4
    tuned = load_plugin(tmp_path / "task" / "plugin.safetensors", model, kb, emb)
    assert not torch.equal(tuned.mapper.weight, mapper.mapper.weight)


def test_bad_plugin_recipes(files, tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(files, tmp_path / "x", kb="")
    assert "plugin.kb: plugin.enabled needs plugin.kb and plugin.embeddings" in str(err.value)
    recipe = _recipe(files, tmp_path / "y")
    recipe["export"] = {"hf_dir": str(tmp_path / "y" / "hf")}
    recipe["lora"] = {"enabled": True}
    from densa.config.checks import validate

    with pytest.raises(ConfigError) as err:
        validate(load_recipe_dict(recipe, str(tmp_path / "recipe.yaml")))
    assert "export.hf_dir: a map-tuning run writes plugin.out_file, not an HF folder" in str(err.value)
    assert "lora.enabled: cannot be combined with plugin.enabled (the model is frozen)" in str(err.value)
