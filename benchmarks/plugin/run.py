"""Knowledge plugins on frozen downstream models (map-tuning, Zhang et al. 2023) at small scale.

    nice -n 19 env OMP_NUM_THREADS=1 python -m benchmarks.plugin.run [--quick]

A small densa decoder is pretrained on the known facts (held-out cities never appear). Per task
(relation classification, entity typing, cloze QA) and adaptation (full finetuning, LoRA via peft,
BitFit) a downstream model is adapted without knowledge and frozen; then on the held-out
(knowledge-dependent) test cities: base, + general plug-in, + task-specific map-tuning, finetuning with
the (frozen general) mapper; controls: shuffled entity embeddings and a random mapper; and a domain swap
(KB B's own TransE table and mappers plugged into the same frozen model, tested on domain B's cities).
Writes benchmarks/results/plugin.json and plugin.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from benchmarks.common import machine_info, write_results
from benchmarks.plugin.world import Substrate, build_substrate, pretrain
from densa.models.config import ModelConfig
from densa.plugins.adapt import ADAPTATIONS, adaptable_params
from densa.plugins.inject import plugged_embeds
from densa.plugins.io import new_plugin
from densa.plugins.mapper import KnowledgePlugin
from densa.plugins.tasks import plain
from densa.plugins.training import fit, map_tune, mention_rows, task_row
from densa.plugins.transe import TransEConfig

SEQ_LEN = 24
ORDER = ("qa", "typing", "relation")  # QA first: the paper's largest gain; results are written per step
LR = {"full": 1e-3, "lora": 5e-3, "bitfit": 2e-2}


def rows_for(sub: Substrate, examples, domain: str, plug: bool, form: str = "masked") -> list[dict]:
    kb = sub.kbs[domain]
    return [
        task_row(
            e.prompt if plug else plain(e.prompt),
            e.answer,
            sub.encode,
            kb,
            sub.placeholder,
            SEQ_LEN,
            plug=plug,
            form=form,
        )
        for e in examples
    ]


@torch.no_grad()
def correct(model, plugin: KnowledgePlugin | None, rows: list[dict], candidates: list[int]) -> list[bool]:
    """Per example: is the answer the best-scored of the candidate tokens at the answer position?"""
    model.eval()
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    hidden = model.hidden_states(
        None, inputs_embeds=plugged_embeds(model, plugin, batch["input_ids"], batch["entity_ids"])
    )
    pos = batch["loss_mask"].argmax(1)
    at = hidden[torch.arange(len(rows)), pos] @ model.output_weight[candidates].T
    gold = batch["labels"][torch.arange(len(rows)), pos]
    return (torch.tensor(candidates)[at.argmax(1)] == gold).tolist()


def clock(t0: float) -> str:
    return f"{time.time() - t0:.0f}s, cpu {time.process_time():.0f}s"


def interval(hits: list[bool], base: list[bool] | None = None, n: int = 1000) -> dict:
    """Accuracy (or, with `base`, the paired gain over it) in points with a 95% percentile bootstrap
    interval over examples (1000 resamples)."""
    import numpy as np

    diffs = np.array(hits, dtype=float) - (np.array(base, dtype=float) if base else 0.0)
    draws = np.random.default_rng(0).integers(0, len(diffs), size=(n, len(diffs)))
    boots = np.sort(diffs[draws].mean(1))
    return {
        "value": round(100 * float(diffs.mean()), 1),
        "ci95": [
            round(100 * float(boots[int(0.025 * n)]), 1),
            round(100 * float(boots[int(0.975 * n) - 1]), 1),
        ],
    }


def shuffled(plugin: KnowledgePlugin, seed: int) -> KnowledgePlugin:
    """The same mapper over the entity table with its rows permuted (entity i reads entity π(i)'s vector)."""
    out = copy.deepcopy(plugin)
    perm = torch.randperm(len(out.embeddings), generator=torch.Generator().manual_seed(seed))
    out.embeddings = out.embeddings[perm]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few steps, to check the pipeline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default=",".join(ORDER), help="comma-separated subset of qa,typing,relation")
    ap.add_argument("--name", default="plugin", help="results file stem under benchmarks/results")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every step count")
    args = ap.parse_args()
    scale = 0.02 if args.quick else args.scale
    steps = {
        k: max(5, int(v * scale))
        for k, v in dict(pretrain=600, general=300, adapt=200, task=200, swap=200).items()
    }
    t0 = time.time()
    transe = TransEConfig(dim=64, epochs=max(2, int(30 * scale)), batch_size=1024, seed=args.seed)
    sub = build_substrate(transe)
    model_cfg = ModelConfig(
        vocab_size=len(sub.vocab),
        dim=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=4,
        ffn_dim=384,
        max_seq_len=SEQ_LEN,
        qkv_bias=True,
        tie_embeddings=True,
    )
    plm, pre_losses = pretrain(sub, model_cfg, steps["pretrain"], SEQ_LEN, args.seed)
    print(
        f"pretrained {model_cfg.num_params()} params, loss {pre_losses[-1]:.3f} ({clock(t0)})",
        flush=True,
    )
    general, general_loss = {}, {}
    for d in ("A", "B"):
        general[d] = new_plugin(plm, sub.kbs[d], sub.embeddings[d], seed=args.seed, mention_form="masked")
        statements = sub.world.statements(d)
        rows = mention_rows(statements, sub.encode, sub.kbs[d], sub.placeholder, SEQ_LEN, form="masked")
        losses = map_tune(
            plm, general[d], rows, steps=steps["general"], lr=3e-3, batch_size=128, seed=args.seed
        )
        general_loss[d] = [round(losses[0], 3), round(sum(losses[-50:]) / len(losses[-50:]), 3)]
        print(
            f"general map-tuning {d}: {general_loss[d]} ({clock(t0)})",
            flush=True,
        )
    # The paper's `[E] / name` form, general and task-specific, as the ablation of the masked form.
    general_slash = new_plugin(plm, sub.kbs["A"], sub.embeddings["A"], seed=args.seed)
    statements = sub.world.statements("A")
    rows = mention_rows(statements, sub.encode, sub.kbs["A"], sub.placeholder, SEQ_LEN, form="slash")
    map_tune(plm, general_slash, rows, steps=steps["general"], lr=3e-3, batch_size=128, seed=args.seed)
    random_mapper = new_plugin(plm, sub.kbs["A"], sub.embeddings["A"], seed=args.seed + 99)
    results: dict = {}
    for task in args.tasks.split(","):
        ex_a, cand_a = sub.world.task(task, "A")
        ex_b, cand_b = sub.world.task(task, "B")
        cand_a_ids, cand_b_ids = [sub.encode(c)[0] for c in cand_a], [sub.encode(c)[0] for c in cand_b]
        train_plain = rows_for(sub, [e for e in ex_a if e.split == "train"], "A", False)
        train_plug = rows_for(sub, [e for e in ex_a if e.split == "train"], "A", True)
        test_a = [e for e in ex_a if e.split == "test"]
        test_plain, test_plug = rows_for(sub, test_a, "A", False), rows_for(sub, test_a, "A", True)
        train_slash = rows_for(sub, [e for e in ex_a if e.split == "train"], "A", True, "slash")
        test_slash = rows_for(sub, test_a, "A", True, "slash")
        b_train = rows_for(sub, [e for e in ex_b if e.split == "train"], "B", True)
        test_b = [e for e in ex_b if e.split == "test"]
        b_plain, b_plug = rows_for(sub, test_b, "B", False), rows_for(sub, test_b, "B", True)
        b_with_a_kb = rows_for(sub, test_b, "A", True)  # KB A links no city of domain B: zero vectors
        results[task] = {"n_train": len(train_plain), "n_test": len(test_a), "n_test_domain_b": len(test_b)}
        for method in ADAPTATIONS:
            kw = dict(steps=steps["adapt"], lr=LR[method], batch_size=32, seed=args.seed)
            down = copy.deepcopy(plm)
            fit(down, None, train_plain, adaptable_params(down, method), **kw)
            down.requires_grad_(False)  # frozen from here on
            weights = {k: v.clone() for k, v in down.state_dict().items()}
            specific = copy.deepcopy(general["A"])
            ts_loss = map_tune(
                down, specific, train_plug, steps=steps["task"], lr=5e-3, batch_size=32, seed=args.seed
            )
            assert all(torch.equal(weights[k], v) for k, v in down.state_dict().items()), "model changed"
            specific_slash = copy.deepcopy(general_slash)
            map_tune(
                down, specific_slash, train_slash, steps=steps["task"], lr=5e-3, batch_size=32, seed=args.seed
            )
            ft_mapper = copy.deepcopy(plm)
            fit(ft_mapper, general["A"], train_plug, adaptable_params(ft_mapper, method), **kw)
            base = correct(down, None, test_plain, cand_a_ids)
            runs = {
                "base": base,
                "general": correct(down, general["A"], test_plug, cand_a_ids),
                "task_specific": correct(down, specific, test_plug, cand_a_ids),
                "ft_with_mapper": correct(ft_mapper, general["A"], test_plug, cand_a_ids),
                "general_shuffled": correct(down, shuffled(general["A"], 1), test_plug, cand_a_ids),
                "task_specific_shuffled": correct(down, shuffled(specific, 1), test_plug, cand_a_ids),
                "random_mapper": correct(down, random_mapper, test_plug, cand_a_ids),
                "general_slash": correct(down, general_slash, test_slash, cand_a_ids),
                "task_specific_slash": correct(down, specific_slash, test_slash, cand_a_ids),
            }
            specific_b = copy.deepcopy(general["B"])
            map_tune(down, specific_b, b_train, steps=steps["swap"], lr=5e-3, batch_size=32, seed=args.seed)
            b_base = correct(down, None, b_plain, cand_b_ids)
            swap = {
                "base": b_base,
                "mapper_A": correct(down, specific, b_with_a_kb, cand_b_ids),
                "general_B": correct(down, general["B"], b_plug, cand_b_ids),
                "task_specific_B": correct(down, specific_b, b_plug, cand_b_ids),
                "task_specific_B_shuffled": correct(down, shuffled(specific_b, 1), b_plug, cand_b_ids),
            }
            results[task][method] = {
                "accuracy": {k: interval(v) for k, v in runs.items()},
                "gain_over_base": {k: interval(v, base) for k, v in runs.items() if k != "base"},
                "domain_swap": {
                    "accuracy": {k: interval(v) for k, v in swap.items()},
                    "gain_over_base": {k: interval(v, b_base) for k, v in swap.items() if k != "base"},
                },
                "task_specific_loss": [round(ts_loss[0], 3), round(sum(ts_loss[-20:]) / 20, 3)],
            }
            acc = {k: results[task][method]["accuracy"][k]["value"] for k in runs}
            save(args, sub, model_cfg, steps, transe, pre_losses, general_loss, results, t0)
            print(
                f"{task} {method}: {acc} swap {[interval(v)['value'] for v in swap.values()]} ({clock(t0)})",
                flush=True,
            )
    save(args, sub, model_cfg, steps, transe, pre_losses, general_loss, results, t0)


def save(args, sub, model_cfg, steps, transe, pre_losses, general_loss, results, t0) -> None:
    """Write the results so far (called after every task and adaptation)."""
    unknown_a = sum(
        r["entity_ids"].eq(-2).any().item() for r in rows_for(sub, sub.world.task("qa", "B")[0], "A", True)
    )
    payload = {
        "config": {
            "model": model_cfg.to_dict(),
            "params": model_cfg.num_params(),
            "steps": steps,
            "lr": LR,
            "transe": dataclasses.asdict(transe),
            "seq_len": SEQ_LEN,
            "seed": args.seed,
            "quick": args.quick,
            "kb_triples": {d: len(kb.triples) for d, kb in sub.kbs.items()},
            "kb_entities": {d: len(kb.entities) for d, kb in sub.kbs.items()},
            "vocab": len(sub.vocab),
        },
        "machine": machine_info(),
        "pretrain_loss_last": round(sum(pre_losses[-50:]) / 50, 3),
        "general_map_tuning_loss_first_last": general_loss,
        "domain_b_qa_mentions_unknown_to_kb_a": unknown_a,
        "results": results,
        "seconds": round(time.time() - t0),
    }
    name = args.name + ("_quick" if args.quick else "")
    Path(f"runs/{name}.json").parent.mkdir(exist_ok=True)
    Path(f"runs/{name}.json").write_text(json.dumps(payload))  # kept should the report fail
    write_results(name, payload, report(payload))


def report(p: dict) -> str:
    from benchmarks.plugin.report import markdown

    return markdown(p)


if __name__ == "__main__":
    main()
