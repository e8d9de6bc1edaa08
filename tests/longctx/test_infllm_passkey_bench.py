"""benchmarks/infllm/smollm2_passkey.py: the prompt it builds (length, needle at the drawn depth, variants),
its answer check and its row cache, with a character-level tokenizer standing in for SmolLM2's."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.infllm.smollm2_passkey import (
    INTRO,
    NEEDLE,
    QUESTION,
    is_correct,
    load_rows,
    passkey_prompt,
    save_rows,
)


class CharTokenizer:
    bos_id = 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))


TEXT = [ord(c) for c in "abcdefghij" * 300]


@pytest.mark.parametrize("variant", ["plain", "instruct", "repeat"])
def test_prompt_has_the_length_and_the_needle_at_the_drawn_depth(variant: str) -> None:
    tok = CharTokenizer()
    ids, key = passkey_prompt(tok, TEXT, 700, torch.Generator().manual_seed(3), variant)
    gen = torch.Generator().manual_seed(3)  # replay the draws: key, text start, depth
    assert key == str(int(torch.randint(10000, 99999, (1,), generator=gen)))
    text = tok.decode(ids[1:])
    needle = NEEDLE.format(key=key) * (3 if variant == "repeat" else 1)
    intro = INTRO if variant == "instruct" else ""
    body = 700 - 1 - len(intro) - len(needle) - len(QUESTION)
    start = int(torch.randint(0, len(TEXT) - body, (1,), generator=gen))
    depth = int(torch.randint(0, body, (1,), generator=gen))
    hay = tok.decode(TEXT[start : start + body])
    assert len(ids) == 700 and ids[0] == 0
    assert text == intro + hay[:depth] + needle + hay[depth:] + QUESTION


def test_answer_check_and_bad_prompts() -> None:
    assert is_correct(" 4 3115.\n", "43115") and not is_correct(" 4311.", "43115")
    with pytest.raises(ValueError, match="passkey variant must be one of"):
        passkey_prompt(CharTokenizer(), TEXT, 700, torch.Generator(), "chat")
    with pytest.raises(ValueError, match="passkey length 50 leaves -"):
        passkey_prompt(CharTokenizer(), TEXT, 50, torch.Generator())


def test_row_cache_merges_what_another_process_wrote(tmp_path) -> None:
    cache, settings = tmp_path / "rows.json", {"chunk": 512}
    save_rows(cache, settings, {"a": {"correct": True}})
    merged = save_rows(cache, settings, {"b": {"correct": False}})
    assert merged == {"a": {"correct": True}, "b": {"correct": False}}
    assert json.loads(cache.read_text())["rows"] == merged
    assert load_rows(cache, {"chunk": 256}) == {}  # other settings: nothing reused


def test_wilson_interval_against_the_closed_form() -> None:
    from benchmarks.infllm.smollm2_passkey import wilson_interval

    # 4 of 5: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.96 -> 0.3755 .. 0.9638
    low, high = wilson_interval(4, 5)
    assert low == pytest.approx(0.37553, abs=1e-4) and high == pytest.approx(0.96378, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(0, 20)[1] == pytest.approx(0.16113, abs=1e-4)
    assert wilson_interval(20, 20)[1] == 1.0


def test_every_method_is_full_attention_on_a_prompt_inside_the_window() -> None:
    # 40 prompt tokens fit InfLLM's window (2048) and StreamingLLM's budget (4096): every method, ordered
    # memory positions included, must decode the same tokens as full attention and hold the same K/V
    from benchmarks.infllm.smollm2_passkey import METHODS, NEW_TOKENS, run_row
    from densa.models import Transformer
    from densa.testing.models import random_tokens, tiny_model_config

    torch.manual_seed(0)
    model = Transformer(tiny_model_config()).eval()
    ids = random_tokens(model.config, batch=1, seq=40)[0].tolist()
    rows = {m: run_row(model, CharTokenizer(), ids, "x", m) for m in METHODS}
    assert set(rows) == {"full", "streaming_llm", "infllm", "infllm_ordered"}
    assert len({r["answer"] for r in rows.values()}) == 1 and len(rows["full"]["answer"]) == NEW_TOKENS
    assert {r["peak_kv_tokens"] for r in rows.values()} == {40 + NEW_TOKENS - 1}
