"""Supervised finetuning data: chats -> token ids with loss only on assistant tokens.

Each example is `{"messages": [{"role": ..., "content": ...}, ...]}` or `{"prompt": ..., "response": ...}`
(the latter is a user turn plus an assistant turn): a line of a JSONL file, or a row of a parquet file,
a `datasets` folder (`save_to_disk`) or a local hub cache folder (`densa.data.tables`). Formatting:

- an HF tokenizer with a `chat_template` renders with `apply_chat_template`; the assistant span of turn
  i is the tokens between the rendering of `messages[:i]` (with generation prompt) and of `messages[:i+1]`;
- otherwise the built-in ChatML template is used, encoded message by message:
  `<|im_start|>{role}\\n{content}<|im_end|>\\n`; loss covers the assistant content and its `<|im_end|>`
  (so the model learns to stop), never the header, system or user text.

Examples are truncated/padded to `seq_len + 1` tokens, then shifted: `input_ids = ids[:-1]`,
`labels = ids[1:]`, `loss_mask[t] = 1` iff `labels[t]` is an assistant token. Padding uses `pad_id`
(EOS if the tokenizer has none) with loss_mask 0.
"""

from __future__ import annotations

import json
from pathlib import Path

from densa.data.readers import iter_jsonl_lines
from densa.data.tables import (
    data_files,
    iter_table_rows,
    resolve_dataset_input,
    saved_dataset_kind,
    table_columns,
)
from densa.data.tokenizer import HFTokenizer, Tokenizer, load_tokenizer
from densa.errors import DataError

ROLES = ("system", "user", "assistant")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def _validate(record, where: str) -> list[dict]:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            got = "an empty list" if isinstance(msgs, list) else type(msgs).__name__
            raise DataError(f"{where}: 'messages' must be a non-empty list, got {got}")
        for j, m in enumerate(msgs):
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise DataError(f"{where}: messages[{j}] needs string 'role' and 'content'")
            if m["role"] not in ROLES:
                raise DataError(f"{where}: messages[{j}] has unknown role {m['role']!r} (expected {ROLES})")
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{where}: no assistant message, nothing to learn")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if "prompt" in record or "response" in record:
        for k in ("prompt", "response"):
            if k not in record:
                raise DataError(f"{where}: missing or non-string key {k!r}")
            if not isinstance(record[k], str):
                raise DataError(f"{where}: {k!r} must be a string, got {type(record[k]).__name__}")
        return [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["response"]},
        ]
    raise DataError(
        f"{where}: expected key 'messages' or keys 'prompt'/'response' (got {sorted(record)[:10]})"
    )


def read_sft_jsonl(
    path: str | Path, skip_bad_lines: bool = False, allow_empty: bool = False
) -> list[list[dict]]:
    """All conversations of a JSONL file, validated; errors name `file:line`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SFT file {path} does not exist")
    out = []
    for where, line, _ in iter_jsonl_lines(path):
        try:
            out.append(_validate(json.loads(line), where))
        except json.JSONDecodeError as err:
            if not skip_bad_lines:
                raise DataError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
        except DataError:
            if not skip_bad_lines:
                raise
    if not out and not allow_empty:
        raise DataError(f"SFT file {path} contains no examples")
    return out


def _read_sft_table(path: Path, skip_bad_lines: bool) -> list[list[dict]]:
    columns = table_columns(path)
    if "messages" in columns:
        wanted = ["messages"]
    elif "prompt" in columns and "response" in columns:
        wanted = ["prompt", "response"]
    else:
        raise DataError(
            f"{path}: needs a column 'messages' or columns 'prompt' and 'response' (columns: {columns})"
        )
    out = []
    for where, row in iter_table_rows(path, wanted):
        try:
            out.append(_validate(row, where))
        except DataError:
            if not skip_bad_lines:
                raise
    return out


def read_sft(path: str | Path, skip_bad_lines: bool = False) -> list[list[dict]]:
    """All conversations of a JSONL or parquet file, a `datasets` folder, a hub cache folder or a folder
    of such files (only the train split's when file names carry split names).

    Errors name `file:line` (JSONL) or `file:row N` (tables) and the key or column at fault."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"SFT data {path} does not exist")
    files = resolve_dataset_input(path) if path.is_dir() else [path]
    if files is None:  # a plain folder (e.g. a hub snapshot): its data files, train split only
        files = data_files(path)
    out: list[list[dict]] = []
    for f in files:
        if saved_dataset_kind(f) or f.suffix.lower() == ".parquet":
            out += _read_sft_table(f, skip_bad_lines)
        else:  # JSONL, whatever the suffix (as before tables were read)
            out += read_sft_jsonl(f, skip_bad_lines, allow_empty=True)
    if not out:
        raise DataError(f"SFT data {path} contains no examples")
    return out


def _tokenize_builtin(tok: Tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    ids, mask = [], []
    for m in messages:
        head = tok.encode(f"{IM_START}{m['role']}\n")
        body = tok.encode(m["content"] + IM_END)
        tail = tok.encode("\n")
        learn = int(m["role"] == "assistant")
        ids += head + body + tail
        mask += [0] * len(head) + [learn] * len(body) + [0] * len(tail)
    return ids, mask


def _tokenize_template(tok: HFTokenizer, messages: list[dict], where: str) -> tuple[list[int], list[int]]:
    def render(msgs: list[dict], gen: bool) -> list[int]:
        text = tok.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        return tok.encode(text)

    ids = render(messages, False)
    mask = [0] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start, end = render(messages[:i], True), render(messages[: i + 1], False)
        if ids[: len(start)] != start or ids[: len(end)] != end:
            raise DataError(
                f"{where}: the chat template is not prefix-stable; cannot locate assistant tokens"
            )
        for t in range(len(start), len(end)):
            mask[t] = 1
    return ids, mask


def tokenize_conversation(
    tok: Tokenizer, messages: list[dict], template: str = "auto", where: str = "example"
) -> tuple[list[int], list[int]]:
    """Token ids and a per-token 0/1 mask marking assistant tokens (unshifted)."""
    use_hf = template == "hf" or (
        template == "auto" and isinstance(tok, HFTokenizer) and tok.has_chat_template
    )
    if use_hf:
        if not isinstance(tok, HFTokenizer) or not tok.has_chat_template:
            raise DataError(f"tokenizer {tok.path} has no chat template")
        return _tokenize_template(tok, messages, where)
    if template not in ("auto", "builtin"):
        raise DataError(f"unknown chat template mode {template!r} (auto, hf, builtin)")
    return _tokenize_builtin(tok, messages)


class SFTDataset:
    """`ds[i]` -> `{"input_ids", "labels", "loss_mask"}` of length `seq_len` (map-style); `path` as in
    `read_sft`. `densa.data.packing.PackedSFTDataset` packs several examples per row instead."""

    def __init__(
        self,
        path: str | Path,
        tokenizer: Tokenizer | str | Path,
        seq_len: int,
        template: str = "auto",
        prepend_bos: bool = True,
        skip_bad_lines: bool = False,
    ) -> None:
        self.tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
        self.path, self.seq_len, self.template = str(path), seq_len, template
        self.prepend_bos = prepend_bos and self.tok.bos_id is not None
        self.conversations = read_sft(path, skip_bad_lines)
        pad = self.tok.pad_id if self.tok.pad_id is not None else self.tok.eos_id
        if pad is None:
            raise DataError(f"tokenizer {self.tok.path} has neither a pad nor an EOS token for padding")
        self.pad_id = pad

    def __len__(self) -> int:
        return len(self.conversations)

    def ids_and_mask(self, idx: int) -> tuple[list[int], list[int]]:
        ids, mask = tokenize_conversation(
            self.tok, self.conversations[idx], self.template, f"{self.path}#{idx}"
        )
        if self.prepend_bos and (not ids or ids[0] != self.tok.bos_id):
            ids, mask = [self.tok.bos_id, *ids], [0, *mask]
        return ids, mask

    def __getitem__(self, idx: int) -> dict:
        import torch

        ids, mask = self.ids_and_mask(idx)
        n = self.seq_len + 1
        ids, mask = ids[:n], mask[:n]
        pad = n - len(ids)
        ids, mask = ids + [self.pad_id] * pad, mask + [0] * pad
        t = torch.tensor(ids, dtype=torch.long)
        return {
            "input_ids": t[:-1],
            "labels": t[1:],
            "loss_mask": torch.tensor(mask[1:], dtype=torch.float32),
        }
