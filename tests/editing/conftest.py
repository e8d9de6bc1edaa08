"""Tiny fixtures for the editing tests: a fact table, a SentencePiece tokenizer exported as an HF folder,
and random tiny Llama readers (with and without a chat template)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from densa.data.facts import Fact

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

COUNTRIES = {
    # name: (capital, continent, currency, demonym)
    "France": ("Paris", "Europe", "Euro", "French"),
    "Germany": ("Berlin", "Europe", "Euro", "German"),
    "Japan": ("Tokyo", "Asia", "Yen", "Japanese"),
    "Kenya": ("Nairobi", "Africa", "Shilling", "Kenyan"),
    "Peru": ("Lima", "South America", "Sol", "Peruvian"),
    "Canada": ("Ottawa", "North America", "Dollar", "Canadian"),
    "Guinea": ("Conakry", "Africa", "Franc", "Guinean"),
    "Guinea-Bissau": ("Bissau", "Africa", "Franc", "Bissau-Guinean"),
    "Niger": ("Niamey", "Africa", "Franc", "Nigerien"),
    "Nigeria": ("Abuja", "Africa", "Naira", "Nigerian"),
    "Chile": ("Santiago", "South America", "Peso", "Chilean"),
    "Spain": ("Madrid", "Europe", "Euro", "Spanish"),
}
CITIES = {
    "Lyon": "France", "Osaka": "Japan", "Hamburg": "Germany", "Mombasa": "Kenya", "Cusco": "Peru",
    "Toronto": "Canada", "Kano": "Nigeria", "Valparaiso": "Chile", "Seville": "Spain", "Munich": "Germany",
    "Kyoto": "Japan", "Marseille": "France", "Lagos": "Nigeria", "Arequipa": "Peru", "Calgary": "Canada",
    "Bilbao": "Spain", "Kisumu": "Kenya", "Dresden": "Germany",
}  # fmt: skip


def small_facts() -> list[Fact]:
    facts = []
    for name, (capital, continent, currency, demonym) in COUNTRIES.items():
        facts += [
            Fact(name, "country", "capital", capital),
            Fact(name, "country", "continent", continent),
            Fact(name, "country", "currency", currency),
            Fact(name, "country", "demonym", demonym),
        ]
    for city, country in CITIES.items():
        facts += [
            Fact(city, "city", "country", country),
            Fact(city, "city", "continent", COUNTRIES[country][1]),
        ]
    return facts


@pytest.fixture(scope="session")
def facts() -> list[Fact]:
    return small_facts()


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory) -> Path:
    from densa.data.hf_export import export_sentencepiece_to_hf
    from densa.data.sp_train import train_sentencepiece
    from densa.editing.templates import TEMPLATES

    lines = []
    for f in small_facts():
        t = TEMPLATES[f.relation]
        lines += [t.statement(f.subject, f.object, i) for i in range(len(t.statements))]
        lines += [t.question(f.subject, i) for i in range(len(t.train_questions))]
    lines.append('Read this and answer the question. If the question is unanswerable, say "unanswerable".')
    corpus = tmp_path_factory.mktemp("corpus") / "facts.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sp = train_sentencepiece([corpus], tmp_path_factory.mktemp("sp"), vocab_size=400, num_threads=1)
    return export_sentencepiece_to_hf(sp, tmp_path_factory.mktemp("hf_tok"))


def _tiny_llama(folder: Path, tokenizer_dir: Path, chat: bool, max_positions: int = 256) -> Path:
    import shutil

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # well-separated logits: no greedy ties between batched and single runs
    model.save_pretrained(folder)
    for item in tokenizer_dir.iterdir():
        if item.is_file() and item.name != "config.json":
            shutil.copy2(item, folder / item.name)
    if chat:
        tok.chat_template = CHATML
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def chat_reader_dir(tmp_path_factory, hf_tokenizer_dir) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("chat_llama"), hf_tokenizer_dir, chat=True)


@pytest.fixture(scope="session")
def base_reader_dir(tmp_path_factory, hf_tokenizer_dir) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("base_llama"), hf_tokenizer_dir, chat=False)
