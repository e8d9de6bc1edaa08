"""Conditional loss and accuracy on lm-eval-style task files, against direct computations with the logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from densa.data.facts import Fact
from densa.density.material import build_material
from densa.density.scoring import encode_pair, loglikelihoods, score_suite, score_task
from densa.density.tasks import TASK_FILES, load_suite, load_task, render, write_task_files
from densa.errors import DataError
from densa.models import ModelConfig, Transformer

ALPHABET = " abcdefghijklmnopqrstuvwxyz.:?\n0123456789ABCD"


def encode(text: str) -> list[int]:
    """Characters, plus one merge (" t" → one id), so context/continuation splits matter."""
    ids, i = [], 0
    while i < len(text):
        if text.startswith(" t", i):
            ids.append(len(ALPHABET))
            i += 2
        else:
            ids.append(ALPHABET.index(text[i]))
            i += 1
    return ids


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=48, dim=32, n_layers=2, n_heads=2, ffn_dim=64, max_seq_len=128)
    return Transformer(cfg).eval()


def write_suite(folder: Path) -> Path:
    def doc(q: str, out: str, ans: str, choices: list[str], gold: int) -> dict:
        ctx = f"q: {q}\nanswer:"
        acc = f"{ctx} the answer is"
        return {
            "instruction": ctx,
            "output": out,
            "acc_context": acc,
            "answer": ans,
            "choices": choices,
            "gold": gold,
        }

    docs = [
        doc("what is two?", "two is 2. the answer is 2.", "2.", ["1", "2", "3"], 1),
        doc("sum 1 and 3", "1 and 3 is 4. the answer is 4.", "4.", ["4", "5", "6"], 0),
    ]
    for name in ("facts", "twohop", "arith"):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    write_task_files(folder)
    return folder


def direct_logprob(model: Transformer, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]), -1)[0]
    rows = logp[len(ctx) - 1 :]
    return sum(rows[i, t].item() for i, t in enumerate(cont)), all(
        rows[i].argmax().item() == t for i, t in enumerate(cont)
    )


def test_encode_pair_follows_lm_eval() -> None:
    # trailing spaces of the context move to the continuation; the continuation is what follows the context
    assert encode_pair(encode, "answer: ", "the") == (encode("answer:"), [len(ALPHABET), *encode("he")])
    assert encode_pair(encode, "answer:", " two") == (encode("answer:"), [len(ALPHABET), *encode("wo")])


def test_conditional_loss_equals_direct_logits(tmp_path: Path, model: Transformer) -> None:
    tasks = load_suite(write_suite(tmp_path))
    loss_task = next(t for t in tasks if t.name == "density_arith_loss")
    total, count = 0.0, 0
    for doc in loss_task.docs:
        ctx, cont = encode(doc["instruction"]), encode(" " + doc["output"])
        lp, _ = direct_logprob(model, ctx, cont)
        total, count = total + lp, count + len(cont)
    assert score_task(model, encode, loss_task) == pytest.approx(-total / count, rel=1e-6)
    # batching and padding do not change a request's log-probability
    reqs = [loss_task.requests(d)[0] for d in loss_task.docs]
    one = [loglikelihoods(model, encode, [r], batch_size=1)[0].logprob for r in reqs]
    assert [r.logprob for r in loglikelihoods(model, encode, reqs, batch_size=8)] == pytest.approx(
        one, abs=1e-5
    )


def test_accuracy_is_greedy_and_multiple_choice(tmp_path: Path, model: Transformer) -> None:
    tasks = {t.name: t for t in load_suite(write_suite(tmp_path))}
    mc, greedy = tasks["density_facts_score"], tasks["density_arith_score"]
    correct_mc = correct_greedy = 0
    for doc in mc.docs:
        ctx = encode(doc["acc_context"])
        lps = [direct_logprob(model, ctx, encode(" " + c))[0] for c in doc["choices"]]
        correct_mc += max(range(len(lps)), key=lps.__getitem__) == doc["gold"]
        correct_greedy += direct_logprob(model, ctx, encode(" " + doc["answer"]))[1]
    assert score_task(model, encode, mc) == correct_mc / 2
    assert score_task(model, encode, greedy) == correct_greedy / 2
    s = score_suite(model, encode, list(tasks.values()))
    assert s.loss == pytest.approx(
        sum(s.tasks[f"density_{n}_loss"] for n in ("facts", "twohop", "arith")) / 3
    )


def test_tokenizer_beyond_model_vocab_is_refused(tmp_path: Path, model: Transformer) -> None:
    task = load_task(write_suite(tmp_path) / "facts_loss.yaml")
    with pytest.raises(
        DataError, match=r"token id 60 ≥ the model's vocab_size 48: the tokenizer is not the model's"
    ):
        score_task(model, lambda s: [60] * len(s), task)


def test_task_files_are_lm_eval_yaml(tmp_path: Path) -> None:
    write_suite(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == sorted(TASK_FILES)
    task = load_task(tmp_path / "facts_score.yaml")
    assert (task.output_type, task.tag) == ("multiple_choice", "density_score")
    assert task.requests(task.docs[0]) == [(task.docs[0]["acc_context"], f" {c}") for c in ("1", "2", "3")]
    assert render("Q {{ answer }}!", {"answer": 4}) == "Q 4!"
    loss = load_task(tmp_path / "arith_loss.yaml")  # lm-eval adds no delimiter to loglikelihood targets
    assert loss.requests(loss.docs[0]) == [(loss.docs[0]["instruction"], " " + loss.docs[0]["output"])]
    with pytest.raises(DataError, match="names field 'missing'"):
        render("{{missing}}", {})


def test_material_holds_test_items_out(tmp_path: Path) -> None:
    facts = []
    for i in range(60):
        c = f"Land{i}"
        facts += [Fact(c, "country", "capital", f"Town{i}"), Fact(c, "country", "continent", f"Cont{i % 5}")]
        facts += [Fact(c, "country", "currency", f"Coin{i % 7}"), Fact(f"City{i}", "city", "country", c)]
    counts = build_material(facts, tmp_path, n_test=20)
    assert counts["facts"] == counts["twohop"] == counts["arith"] == 20
    train = (tmp_path / "synthetic_train.txt").read_text() + (tmp_path / "synthetic_valid.txt").read_text()
    for name in ("facts", "twohop", "arith"):
        for line in (tmp_path / "tasks" / f"{name}.jsonl").read_text().splitlines():
            item = json.loads(line)
            assert item["instruction"] not in train  # the question never occurs in pretraining text
            assert item["output"].endswith(
                f"The answer is {'ABCD'[item['gold']] if 'gold' in item else item['answer']}."
            )
    # single facts of a held-out two-hop city are still stated in the pretraining text
    city = json.loads((tmp_path / "tasks" / "twohop.jsonl").read_text().splitlines()[0])["output"].split(
        " is a city"
    )[0]
    assert f"{city} is a city in" in train
