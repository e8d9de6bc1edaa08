"""`densa edit add/list/remove/ask/eval` and `densa data eren-sft` end to end on a tiny reader."""

from __future__ import annotations

import json

import pytest

from densa.data.facts import Fact
from densa.launch.cli import main


def test_notebook_commands(tmp_path, capsys):
    book = str(tmp_path / "notes.jsonl")
    assert main(["edit", "add", book, "The capital of France is Lima.", "Lyon is a city in Japan."]) == 0
    assert main(["edit", "remove", book, "n000001"]) == 0
    capsys.readouterr()
    assert main(["edit", "list", book]) == 0
    assert capsys.readouterr().out == "n000002\tLyon is a city in Japan.\n"
    assert main(["edit", "remove", book, "n000009"]) == 1
    assert "no note with id 'n000009'" in capsys.readouterr().err


def test_ask_prints_answer_and_notes(tmp_path, capsys, chat_reader_dir):
    book = tmp_path / "notes.jsonl"
    main(["edit", "add", str(book), "The capital of France is Lima.", "Lyon is a city in Japan."])
    capsys.readouterr()
    code = main(
        [
            "edit",
            "ask",
            "--model",
            str(chat_reader_dir),
            "--notes",
            str(book),
            "--retriever",
            "bm25",
            "--top-k",
            "1",
            "--json",
            "What is the capital of France?",
        ]
    )
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["question"] == "What is the capital of France?"
    assert [n["id"] for n in record["notes"]] == ["n000001"]
    assert record["source"] in ("notes", "closed_book") and isinstance(record["answer"], str)


def test_ask_errors(tmp_path, capsys, chat_reader_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    assert (
        main(
            [
                "edit",
                "ask",
                "--model",
                str(chat_reader_dir),
                "--notes",
                str(empty),
                "--retriever",
                "bm25",
                "q?",
            ]
        )
        == 1
    )
    assert "the notebook is empty" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "\xff"}\n')
    assert (
        main(
            ["edit", "ask", "--model", str(chat_reader_dir), "--notes", str(bad), "--retriever", "bm25", "q?"]
        )
        == 1
    )
    assert "bad.jsonl:1: not valid UTF-8" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    main(["edit", "add", str(good), "The capital of France is Lima."])
    capsys.readouterr()
    assert (
        main(
            [
                "edit",
                "ask",
                "--model",
                str(chat_reader_dir),
                "--notes",
                str(good),
                "--retriever",
                "bm25",
                "France " * 400,
            ]
        )
        == 1
    )
    assert "exceeds the model's context of 256 tokens" in capsys.readouterr().err


def test_eval_writes_metrics_table_plot_and_generations(tmp_path, capsys, chat_reader_dir, facts):
    from densa.editing.probes import build_probes, write_probes
    from densa.editing.world import World

    probes = write_probes(build_probes(World(facts), n_edits=4, seed=0), tmp_path / "probes.json")
    hp = tmp_path / "hp.yaml"
    hp.write_text(
        f"alg_name: EREN\nmodel_name: {chat_reader_dir}\nretriever: bm25\ntop_k: 2\nmax_new_tokens: 3\n"
    )
    out = tmp_path / "eval"
    assert (
        main(
            ["edit", "eval", "--hparams", str(hp), "--data", str(probes), "--out", str(out), "--edits", "2,4"]
        )
        == 0
    )
    report = json.loads((out / "metrics.json").read_text())
    assert [r["edits"] for r in report["results"]] == [2, 4]
    assert report["results"][1]["scored_edits"] == 4
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    n_probes = sum(
        1 + len(r["rephrase_prompt"]) + sum(len(g["prompt"]) for g in r["locality"].values())
        for r in json.loads(probes.read_text())["records"]
    )
    assert sum(r["edits"] == 4 for r in rows) >= n_probes
    assert (out / "metrics.png").stat().st_size > 0 and "| 4 | 4 |" in (out / "metrics.md").read_text()
    assert (
        main(["edit", "eval", "--hparams", str(hp), "--data", str(probes), "--out", str(out), "--edits", "9"])
        == 1
    )
    assert "sizes must be in 1..4" in capsys.readouterr().err


def test_eren_sft_command(tmp_path, capsys, facts):
    table = tmp_path / "facts.jsonl"
    table.write_text("".join(json.dumps(f.to_dict()) + "\n" for f in facts), encoding="utf-8")
    out = tmp_path / "sft"
    assert (
        main(
            [
                "data",
                "eren-sft",
                "--facts",
                str(table),
                "--out",
                str(out),
                "--examples",
                "100",
                "--retriever",
                "bm25",
            ]
        )
        == 0
    )
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    valid = (out / "valid.jsonl").read_text().splitlines()
    assert len(train) == 95 and len(valid) == 5
    assert train[0]["messages"][0]["role"] == "user" and train[0]["messages"][1]["role"] == "assistant"
    assert json.loads((out / "stats.json").read_text())["examples"] == 100
    assert (
        main(["data", "eren-sft", "--facts", str(table), "--out", str(out), "--counterfactual", "0.2"]) == 1
    )


@pytest.mark.parametrize("line", ['{"subject": "x"}', "not json"])
def test_bad_fact_table(tmp_path, capsys, line):
    table = tmp_path / "facts.jsonl"
    table.write_text(json.dumps(Fact("a", "country", "capital", "b").to_dict()) + "\n" + line + "\n")
    assert main(["data", "eren-sft", "--facts", str(table), "--out", str(tmp_path / "o")]) == 1
    assert "facts.jsonl:2: not a fact record" in capsys.readouterr().err
