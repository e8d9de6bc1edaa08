"""`densa generate --chat` (issue 18, item 6): the prompt becomes a user message in the tokenizer's chat
template, the reply is printed alone and cut at the model's end tokens; no template is a clear error."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from densa.launch.cli import main
from densa.launch.commands.generate import _until_end
from densa.models.generation import generate

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _hf_folder(base: Path, sp_model: Path, template: str | None) -> Path:
    """A tiny Llama HF folder with the SentencePiece tokenizer as HF files, with or without a template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from densa.data.hf_export import export_sentencepiece_to_hf

    tok = AutoTokenizer.from_pretrained(export_sentencepiece_to_hf(sp_model, base / "tok"))
    tok.chat_template = template
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, initializer_range=0.2,
    )  # fmt: skip
    folder = base / "hf"
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory, sp_model) -> Path:
    return _hf_folder(tmp_path_factory.mktemp("chat"), sp_model, CHATML)


def test_chat_applies_the_template(chat_folder, capsys):
    from densa.data.tokenizer import load_tokenizer
    from densa.models.hf.importer import load_hf_model

    tok = load_tokenizer(chat_folder)
    ids = tok.tok.apply_chat_template(
        [{"role": "user", "content": "hello world"}], add_generation_prompt=True
    )
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert tok.decode(ids) == "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    assert ids[0] == tok.tok.convert_tokens_to_ids("<|im_start|>") == 4  # no BOS added on top
    reply = generate(load_hf_model(chat_folder), torch.tensor([ids]), 6)[0, len(ids) :].tolist()

    argv = ["generate", "--model", str(chat_folder), "--prompt", "hello world", "--temperature", "0"]
    assert main([*argv, "--max-new-tokens", "6", "--chat"]) == 0
    assert capsys.readouterr().out == tok.decode(reply) + "\n"  # the reply alone, not the template


def test_chat_without_a_template_is_an_error(tmp_path, sp_model, capsys):
    folder = _hf_folder(tmp_path, sp_model, None)
    capsys.readouterr()  # transformers' save progress
    assert main(["generate", "--model", str(folder), "--prompt", "hi", "--chat"]) == 1
    assert capsys.readouterr().err == (
        f"densa generate: error: --chat: the tokenizer {folder} has no chat template (chat_template in"
        " tokenizer_config.json or chat_template.jinja); drop --chat or pass a chat model's --tokenizer\n"
    )
    # A SentencePiece tokenizer has none either.
    argv = ["generate", "--model", str(folder), "--prompt", "hi", "--chat", "--tokenizer", str(sp_model)]
    assert main(argv) == 1
    assert f"--chat: the tokenizer {sp_model} has no chat template" in capsys.readouterr().err


def test_chat_stops_at_the_generation_configs_end_tokens(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}), encoding="utf-8")
    args = argparse.Namespace(model=str(tmp_path), chat=True)
    assert _until_end([9, 8, 5, 7, 2], args) == [9, 8]
    assert _until_end([9, 8, 7], args) == [9, 8, 7]
    assert _until_end([9, 5], argparse.Namespace(model=str(tmp_path), chat=False)) == [9, 5]


def test_chat_stops_at_a_chat_turns_end_token(chat_folder, tmp_path, capsys):
    """generate() stops at any listed end token; `--chat` lists generation_config.json's."""
    import shutil

    from densa.data.tokenizer import load_tokenizer
    from densa.models.hf.importer import load_hf_model

    model, tok = load_hf_model(chat_folder), load_tokenizer(chat_folder)
    ids = tok.tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    full = generate(model, torch.tensor([ids]), 6)[0, len(ids) :].tolist()
    end = full[2]  # pretend the model's turn ends with its third token
    cut = full[: full.index(end)]
    stopped = generate(model, torch.tensor([ids]), 6, eos_token_id=[2, end])[0, len(ids) :].tolist()
    assert stopped == [*cut, end]

    folder = tmp_path / "chat"
    shutil.copytree(chat_folder, folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, end]}), encoding="utf-8")
    argv = ["generate", "--model", str(folder), "--prompt", "hello", "--temperature", "0", "--chat"]
    assert main([*argv, "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == tok.decode(cut) + "\n"
