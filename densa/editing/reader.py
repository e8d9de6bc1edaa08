"""A reader: greedy short answers from a causal LM, batched, over an HF or densa model folder.

HF folders run through `transformers` (left-padded batches); densa model folders run through
`densa.inference.InferenceEngine` (batches of equal-length prompts). The user turn is wrapped in the
tokenizer's chat template when it has one; `chat="required"` refuses a model without one (a base model
would continue the prompt instead of answering it), `chat="never"` sends the raw text.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from densa.errors import DensaError

ChatMode = Literal["auto", "required", "never"]


class ReaderError(DensaError):
    """A reader model that cannot be used as configured."""


class Reader:
    def __init__(
        self,
        path: str | os.PathLike,
        *,
        chat: ChatMode = "auto",
        max_new_tokens: int = 16,
        batch_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        from densa.models.checkpoint_io import is_densa_checkpoint
        from densa.models.hf.importer import is_hf_folder

        self.path = Path(path)
        if not self.path.is_dir():
            raise ReaderError(f"{self.path}: no such model folder")
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        if is_hf_folder(self.path):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.backend = "hf"
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.tokenizer.padding_side = "left"
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).to(device).eval()
            self.max_len = int(getattr(self.model.config, "max_position_embeddings", 2048))
        elif is_densa_checkpoint(self.path):
            from densa.inference import InferenceEngine

            self.backend = "densa"
            self.engine = InferenceEngine.from_pretrained(self.path, dtype=dtype, device=device)
            self.tokenizer = self.engine.tokenizer
            if self.tokenizer is None:
                raise ReaderError(f"{self.path}: a reader needs a tokenizer in the model folder")
            self.max_len = self.engine.model.config.max_seq_len
        else:
            raise ReaderError(f"{self.path}: not an HF folder or a densa model folder")
        template = getattr(self.tokenizer, "chat_template", None) or getattr(
            getattr(self.tokenizer, "tok", None), "chat_template", None
        )
        if chat == "required" and not template:
            raise ReaderError(
                f"{self.path}: reader.chat is 'required' but the tokenizer has no chat template"
                " (use an instruction-tuned model, or set chat: never)"
            )
        self.use_chat = bool(template) and chat != "never"

    def render(self, user: str) -> list[int]:
        """Token ids of one user turn, ready for generation."""
        tok = self.tokenizer if self.backend == "hf" else getattr(self.tokenizer, "tok", self.tokenizer)
        if self.use_chat:
            ids = tok.apply_chat_template(
                [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        return list(tok.encode(user))

    def check_length(self, user: str, what: str = "prompt") -> list[int]:
        ids = self.render(user)
        if len(ids) + self.max_new_tokens > self.max_len:
            raise ReaderError(
                f"{what} is {len(ids)} tokens; with max_new_tokens={self.max_new_tokens} it exceeds the"
                f" model's context of {self.max_len} tokens ({self.path})"
            )
        return ids

    @torch.no_grad()
    def answer(self, prompts: Sequence[str]) -> list[str]:
        """Greedy answers (first line, stripped) for each user prompt."""
        rendered = [self.check_length(p) for p in prompts]
        order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
        answers: list[str] = [""] * len(rendered)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            texts = self._generate([rendered[i] for i in rows])
            for i, text in zip(rows, texts, strict=True):
                answers[i] = text.strip().split("\n")[0].strip()
        return answers

    def _generate(self, batch: list[list[int]]) -> list[str]:
        if self.backend == "densa":
            from densa.inference.engine import GenerationConfig

            out = self.engine.generate(
                batch, GenerationConfig(max_new_tokens=self.max_new_tokens, add_bos=False)
            )
            return [g.text or "" for g in out.generations]
        width = max(map(len, batch))
        pad = self.tokenizer.pad_token_id
        device = self.model.device
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in batch], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device=device)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        return self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
