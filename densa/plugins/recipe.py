"""The `plugin:` recipe section as trainer parts (registered in densa.train.methods): attach a mapper to
the loaded model and freeze the model (prepare), generate the map-tuning rows (data), the loss
(densa.plugins.training.plugin_loss) and a callback that writes the mapper file at the end."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from densa.errors import DataError
from densa.plugins.config import PluginConfig
from densa.plugins.io import load_embeddings, load_plugin, new_plugin, save_plugin
from densa.plugins.kb import KnowledgeBase, read_kb
from densa.plugins.training import Row, attach_plugin, attached_plugin, mention_rows, task_row
from densa.train.callbacks import Callback

RunConfig = Any  # densa.config.schema.RunConfig (the schema imports this package's config)


def prepare(cfg: RunConfig, model: nn.Module) -> None:
    """Attach a fresh (seeded) or `init_mapper` plugin and freeze the model: before the optimizer exists."""
    p: PluginConfig = cfg.plugin
    kb = read_kb(p.kb)
    emb = load_embeddings(p.embeddings, kb)
    if p.init_mapper:
        plugin = load_plugin(p.init_mapper, model, kb, emb)
        if plugin.mention_form != p.mention_form:
            raise DataError(
                f"plugin.init_mapper: {p.init_mapper} was tuned with mention_form {plugin.mention_form!r},"
                f" this run's plugin.mention_form is {p.mention_form!r}"
            )
    else:
        plugin = new_plugin(model, kb, emb, kind=p.mapper, seed=cfg.run.seed, mention_form=p.mention_form)
    ref = next(model.parameters())
    attach_plugin(model, plugin.to(device=ref.device, dtype=ref.dtype))


def _examples(p: PluginConfig, kb: KnowledgeBase) -> list[dict[str, str]]:
    if not p.examples:  # general map-tuning on the KB itself: one statement per triple
        return [
            {"text": f"[[{kb.entities[h]}]] {kb.relations[r].replace('_', ' ')} [[{kb.entities[t]}]] ."}
            for h, r, t in kb.triples
        ]
    want = ("text",) if p.kind == "general" else ("prompt", "answer")
    out = []
    with open(p.examples, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                out.append({k: str(record[k]) for k in want})
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                keys = ", ".join(want)
                raise DataError(f"{p.examples}:{n}: expected a JSON object with {keys} ({err})") from None
    if not out:
        raise DataError(f"{p.examples}: no examples")
    return out


class CycledRows:
    """`num_samples` rows drawn epoch by epoch, each epoch a seeded shuffle of `rows` (map-style)."""

    def __init__(self, rows: list[Row], num_samples: int, seed: int) -> None:
        if not rows:
            raise DataError("map-tuning: no rows (no example has a linked mention or an answer)")
        self.rows, self.num_samples, self.seed = rows, num_samples, seed
        self._orders: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> Row:
        epoch, k = divmod(i, len(self.rows))
        if epoch not in self._orders:
            order = list(range(len(self.rows)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._orders = {epoch: order}
        return self.rows[self._orders[epoch][k]]


def rows(cfg: RunConfig, num_samples: int) -> CycledRows:
    from densa.data.tokenizer import load_tokenizer

    p: PluginConfig = cfg.plugin
    kb, tok = read_kb(p.kb), load_tokenizer(cfg.data.tokenizer)
    placeholder = tok.eos_id if tok.eos_id is not None else 0  # its embedding is replaced: any id serves
    examples, seq = _examples(p, kb), cfg.data.seq_len
    if p.kind == "general":
        texts = [e["text"] for e in examples]
        built = mention_rows(texts, tok.encode, kb, placeholder, seq, form=p.mention_form)
    else:
        built = [
            task_row(e["prompt"], " " + e["answer"], tok.encode, kb, placeholder, seq, form=p.mention_form)
            for e in examples
        ]
    return CycledRows(built, num_samples, cfg.run.seed)


class PluginCallback(Callback):
    """Write the trained mapper to run.out_dir / plugin.out_file when training ends (rank 0)."""

    def __init__(self, out_file: str) -> None:
        self.out_file = out_file

    @property
    def name(self) -> str:
        return "plugin"

    def on_train_end(self, trainer: Any, step: int) -> None:
        plugin = attached_plugin(trainer.engine.module)
        if trainer.is_main and plugin is not None:
            save_plugin(Path(trainer.run_dir) / self.out_file, plugin.to(torch.float32))
