"""SFT chat data: loss masks cover exactly the assistant tokens; bad lines are reported at file:line."""

from __future__ import annotations

import json

import pytest
import torch

from densa.data.sft import SFTDataset, read_sft_jsonl
from densa.data.tokenizer import HFTokenizer, load_tokenizer
from densa.errors import DataError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATION = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "привет мир"},
        {"role": "user", "content": "东京?"},
        {"role": "assistant", "content": "data 😀"},
    ]
}


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _masked_text(tok, sample):
    return tok.decode(sample["labels"][sample["loss_mask"] > 0].tolist())


def test_builtin_template_masks_only_responses(tmp_path, sp_model):
    src = _write(tmp_path / "s.jsonl", [{"prompt": "hello world", "response": "привет мир"}, CONVERSATION])
    ds = SFTDataset(src, sp_model, seq_len=96)
    tok = ds.tok
    a = ds[0]
    assert a["input_ids"].shape == a["labels"].shape == a["loss_mask"].shape == (96,)
    assert torch.equal(a["input_ids"][1:], a["labels"][:-1])
    assert a["input_ids"][0].item() == tok.bos_id
    ids, mask = ds.ids_and_mask(0)
    response = tok.encode("привет мир<|im_end|>")
    masked = [i for i, m in zip(ids, mask) if m]
    assert masked == response  # exactly the response tokens plus the end marker, nothing else
    assert _masked_text(tok, a) == "привет мир<|im_end|>"
    b = ds[1]
    assert _masked_text(tok, b) == "привет мир<|im_end|>data 😀<|im_end|>"
    n = len(ds.ids_and_mask(1)[0])
    assert b["loss_mask"][n - 1 :].sum() == 0 and (b["labels"][n - 1 :] == tok.pad_id).all()


def test_hf_chat_template_masks_only_responses(tmp_path, hf_folder):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(hf_folder), local_files_only=True)
    hf.chat_template = CHATML
    tok = HFTokenizer(hf)
    assert tok.has_chat_template
    src = _write(tmp_path / "s.jsonl", [CONVERSATION])
    ds = SFTDataset(src, tok, seq_len=128)
    ids, mask = ds.ids_and_mask(0)
    expected = tok.encode("<|im_start|>system\nbe brief<|im_end|>\n")
    assert ids[1 : 1 + len(expected)] == expected and not any(mask[: 1 + len(expected)])
    assert _masked_text(tok, ds[0]) == "привет мир<|im_end|>\ndata 😀<|im_end|>\n"
    builtin = SFTDataset(src, load_tokenizer(hf_folder), seq_len=128, template="builtin")
    assert _masked_text(tok, builtin[0]) == "привет мир<|im_end|>data 😀<|im_end|>"


def test_truncation(tmp_path, sp_model):
    src = _write(tmp_path / "s.jsonl", [{"prompt": "hello " * 50, "response": "world"}])
    s = SFTDataset(src, sp_model, seq_len=16)[0]
    assert s["input_ids"].shape == (16,) and s["loss_mask"].sum() == 0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a", "response": ', "s.jsonl:2: malformed JSON"),
        ('{"prompt": "a"}', "s.jsonl:2: missing or non-string key 'response'"),
        ('{"text": "a"}', "s.jsonl:2: expected key 'messages'"),
        (
            '{"messages": [{"role": "bot", "content": "x"}]}',
            "s.jsonl:2: messages\\[0\\] has unknown role 'bot'",
        ),
        ('{"messages": [{"role": "user", "content": "x"}]}', "s.jsonl:2: no assistant message"),
    ],
)
def test_bad_lines_name_file_line(tmp_path, line, message):
    src = tmp_path / "s.jsonl"
    src.write_text('{"prompt": "ok", "response": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_sft_jsonl(src)
    assert len(read_sft_jsonl(src, skip_bad_lines=True)) == 1


def test_non_utf8_and_empty(tmp_path):
    src = tmp_path / "s.jsonl"
    src.write_bytes(b'{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(DataError, match="s.jsonl:1: not valid UTF-8"):
        read_sft_jsonl(src)
    src.write_text("\n")
    with pytest.raises(DataError, match="contains no examples"):
        read_sft_jsonl(src)
