"""One export path, faithful to HF conventions (issue 18, item 1).

A tiny chat Llama on the Hub-cache layout (chat template, generation config with two end tokens, a model
card with license and datasets) is finetuned by a real SFT run that gives no `model:` section and exports
to `export.hf_dir`; `densa export RUN` then writes a second folder. Both must be the same files, and the
export must work in `transformers`: chat template, end tokens, `generate` stopping where densa's greedy
decoding reaches an end token, with the same tokens.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from densa.launch.cli import main

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ("red", "green", "blue", "cat", "dog", "bird", "one", "two", "three", "yes", "no", "maybe")
REPO = "densa-tests/tiny-chat"
SEQ = 32
# Files a chat export must have; .densa-output differs only in its timestamp.
EXPECTED = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "README.md", "model.safetensors"}  # fmt: skip


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """An HF chat model folder as huggingface_hub caches it: models--ORG--NAME/snapshots/REV/."""
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from densa.data.hf_export import export_sentencepiece_to_hf
    from densa.data.sp_train import train_sentencepiece

    base = tmp_path_factory.mktemp("source")
    rng = random.Random(0)
    (base / "corpus.txt").write_text(
        "\n".join(" ".join(rng.choices(WORDS, k=8)) for _ in range(300)) + "\n", encoding="utf-8"
    )
    sp = train_sentencepiece([base / "corpus.txt"], base / "sp", vocab_size=300, num_threads=1)
    tok = AutoTokenizer.from_pretrained(export_sentencepiece_to_hf(sp, base / "tok"))
    tok.chat_template = CHATML
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, im_end) == (1, 2, 3, 5)
    folder = base / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / "0123abcd"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    # An instruct model stops at either end token: EOS and the chat turn's <|im_end|>.
    GenerationConfig(bos_token_id=1, eos_token_id=[2, im_end], pad_token_id=3).save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "README.md").write_text(
        "---\nlicense: mit\ndatasets:\n- densa-tests/tiny-chat-data\nlanguage: en\n---\n# tiny chat\n",
        encoding="utf-8",
    )
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory, source, ds_world) -> Path:
    """A 40-step SFT run from `source` with no model: section; every answer is "yes" and an end token."""
    from densa.config.load import load_recipe
    from densa.train.run import train

    base = tmp_path_factory.mktemp("sft")
    rng = random.Random(1)
    rows = [{"prompt": " ".join(rng.choices(WORDS[:9], k=3)), "response": "yes"} for _ in range(64)]
    (base / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run_dir = base / "run"
    recipe = {
        "run": {"name": "chat", "out_dir": str(run_dir), "seed": 1},
        "init": {"from_path": str(source)},
        "data": {"format": "sft", "train": [{"path": str(base / "sft.jsonl")}], "seq_len": SEQ,
                 "tokenizer": str(source)},
        "batch": {"global_tokens": 4 * SEQ, "micro_batch": 2},
        "train": {"steps": 40},
        "optim": {"lr": 3e-3, "weight_decay": 0.0},
        "schedule": {"kind": "constant"},
        "checkpoint": {"interval": 1000, "keep_last": 1},
        "logging": {"log_interval": 10, "tensorboard": False, "progress": False},
        "export": {"hf_dir": str(run_dir / "hf")},
    }  # fmt: skip
    (base / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    result = train(load_recipe(base / "recipe.yaml"))
    assert result.state.step == 40 and result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    return run_dir


@pytest.fixture(scope="module")
def cli_export(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "hf"
    assert main(["export", str(run), "--out", str(out)]) == 0
    return out


def front_matter(folder: Path) -> tuple[str, dict]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    head = text[4:].split("\n---\n", 1)[0]
    return head, yaml.safe_load(head)


def test_both_routes_write_the_same_files(run, cli_export):
    from safetensors.torch import load_file

    end_of_run = run / "hf"
    names = {p.name for p in end_of_run.iterdir()} - {".densa-output"}
    assert names >= EXPECTED and names == {p.name for p in cli_export.iterdir()} - {".densa-output"}
    for name in names - {"model.safetensors"}:
        assert (end_of_run / name).read_bytes() == (cli_export / name).read_bytes(), name
    a, b = load_file(end_of_run / "model.safetensors"), load_file(cli_export / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ids_generation_config_and_card_follow_the_source(run, source):
    out = run / "hf"
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 3)
    assert config["max_position_embeddings"] == 128  # the source's, not the run's seq_len
    assert "| context | 128 |" in (out / "README.md").read_text()
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, 5] and generation["bos_token_id"] == 1
    assert generation["pad_token_id"] == 3
    assert (out / "chat_template.jinja").read_text() == (source / "chat_template.jinja").read_text()
    head, meta = front_matter(out)
    assert meta["base_model"] == REPO and meta["license"] == "mit"
    assert meta["datasets"] == ["densa-tests/tiny-chat-data"]
    assert str(Path.home()) not in head and "/tmp" not in head and str(run) not in head
    assert all(not str(v).startswith("/") for v in meta.values())


def test_transformers_generate_stops_at_the_end_token_like_densa(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from densa.inference import GenerationConfig, InferenceEngine

    out = run / "hf"
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert model.generation_config.eos_token_id == [2, 5]
    engine = InferenceEngine.from_pretrained(out)
    max_new = 12
    for prompt in ("red cat one", "blue bird three"):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)  # fmt: skip
        assert text == f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hf = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False)
        new = hf[0, len(ids) :].tolist()
        assert len(new) < max_new and new[-1] in (2, 5), new  # stopped at an end token
        assert tok.decode(new, skip_special_tokens=True).strip() == "yes"
        ours = (
            engine.generate([ids], GenerationConfig(max_new_tokens=max_new, stop_at_eos=False, add_bos=False))
            .generations[0]
            .token_ids
        )
        stop = next(i for i, t in enumerate(ours) if t in (2, 5))
        assert ours[: stop + 1] == new  # densa's greedy tokens up to its first end token
