"""Editor API (EasyEdit-style hparams and requests), its semantics, and its errors."""

from __future__ import annotations

import json

import pytest

from densa.config.errors import ConfigError
from densa.editing.editor import Editor, EditorError
from densa.editing.hparams import EditHParams
from densa.editing.requests import RequestError, parse_requests

REQUESTS = [
    {
        "prompt": "What is the capital of France?",
        "target_new": "Lima",
        "ground_truth": "Paris",
        "rephrase_prompt": "Name the capital city of France.",
        "locality": {
            "same_subject": {"prompt": ["On which continent is France?"], "ground_truth": ["Europe"]}
        },
        "requested_rewrite": {"statement": "The capital of France is Lima."},
    },
    {"prompt": "In which country is Lyon?", "target_new": "Japan"},
]


def _hparams(tmp_path, text: str):
    path = tmp_path / "hp.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_hparams_are_validated_like_recipes(tmp_path):
    path = _hparams(tmp_path, "alg_name: EREN\nmodel_name: m\nretriver: bm25\ntop_k: 0\n")
    with pytest.raises(ConfigError) as err:
        EditHParams.from_hparams(path)
    text = str(err.value)
    assert f"{path}: retriver: unknown key (did you mean 'retriever'?)" in text
    path = _hparams(tmp_path, "alg_name: EREN\nmodel_name: m\nretriever: contriever\n")
    with pytest.raises(ConfigError, match=r"retriever: 'contriever' is not one of minilm, bm25"):
        EditHParams.from_hparams(path)
    path = _hparams(tmp_path, "alg_name: ROME\nmodel_name: m\n")
    with pytest.raises(ConfigError, match=r"alg_name: 'ROME' is not one of EREN, ONE_STEP, FT, NONE"):
        EditHParams.from_hparams(path)
    path = _hparams(tmp_path, "alg_name: EREN\nmodel_name: m\ntop_k: 0\n")
    with pytest.raises(ConfigError, match=r"top_k: must be >= 1"):
        EditHParams.from_hparams(path)


def test_unknown_reader_is_refused(tmp_path):
    with pytest.raises(
        EditorError, match=r"model_name: 'no/such/reader' is neither a model folder nor a known model"
    ):
        Editor(EditHParams(alg_name="EREN", model_name="no/such/reader", retriever="bm25"))


def test_shipped_hparams_load():
    for path in (
        "hparams/EREN/smollm2-135m.yaml",
        "hparams/ONE_STEP/smollm2-135m.yaml",
        "hparams/FT/smollm2-135m.yaml",
        "hparams/NONE/smollm2-135m.yaml",
        "hparams/EREN/smollm2-135m-untuned.yaml",
        "hparams/EREN/smollm2-135m-2hop.yaml",
        "hparams/ONE_STEP/smollm2-135m-untuned.yaml",
    ):
        hp = EditHParams.from_hparams(path)
        assert hp.chat == "required" and hp.max_new_tokens == 16


def test_requests_schema():
    reqs = parse_requests(REQUESTS)
    assert reqs[0].note == "The capital of France is Lima."
    assert reqs[1].note == "In which country is Lyon? Japan."  # no statement: question + new answer
    assert reqs[0].rephrase_prompts == ("Name the capital city of France.",)
    assert reqs[0].locality == {"same_subject": (("On which continent is France?", "Europe"),)}
    with pytest.raises(RequestError, match=r"requests\[0\]: missing or empty string key 'target_new'"):
        parse_requests([{"prompt": "q"}])
    with pytest.raises(RequestError, match=r"locality.x has 2 prompts but 1 ground_truth"):
        parse_requests(
            [
                {
                    "prompt": "q",
                    "target_new": "a",
                    "locality": {"x": {"prompt": ["a", "b"], "ground_truth": ["c"]}},
                }
            ]
        )


def test_edit_sequential_and_single_semantics(chat_reader_dir):
    hp = EditHParams(
        alg_name="EREN", model_name=str(chat_reader_dir), retriever="bm25", top_k=2, max_new_tokens=4
    )
    editor = Editor(hp)
    result = editor.edit(REQUESTS)  # sequential: both notes stay
    assert [n.text for n in editor.notebook] == [
        "The capital of France is Lima.",
        "In which country is Lyon? Japan.",
    ]
    groups = [r["group"] for r in result.rows]
    assert groups == ["rewrite", "rephrase", "same_subject", "rewrite"]
    from densa.editing.prompts import normalize

    locality = result.rows[2]
    unedited = editor.ask_unedited(["On which continent is France?"])[0].text
    assert locality["pre"] == unedited  # BP compares with the same system without edits
    assert locality["correct"] == (normalize(locality["post"]) == normalize(unedited))
    assert set(result.metrics) >= {"ES", "BP", "EQ", "rewrite_acc", "rephrase_acc", "locality_acc"}
    editor.reset()
    assert len(editor.notebook) == 0
    single = editor.edit(REQUESTS, sequential_edit=False)
    assert len(editor.notebook) == 0  # each edit was undone after scoring
    assert len(single.rows) == 4
    assert all(set(r["notes"]) <= {"n000003", "n000004"} for r in single.rows)


def test_editor_never_writes_the_hparams_notebook(tmp_path, chat_reader_dir):
    book = tmp_path / "notes.jsonl"
    book.write_text('{"id": "n000001", "text": "Lyon is a city in Peru."}\n', encoding="utf-8")
    before = book.read_bytes()
    hp = EditHParams(alg_name="EREN", model_name=str(chat_reader_dir), retriever="bm25", notebook=str(book))
    editor = Editor(hp)
    editor.edit(REQUESTS[:1], evaluate=False)
    assert [n.text for n in editor.notebook] == ["Lyon is a city in Peru.", "The capital of France is Lima."]
    assert book.read_bytes() == before
    editor.reset()
    assert [n.text for n in editor.notebook] == ["Lyon is a city in Peru."]


def test_ft_baseline_moves_weights_and_reset_restores(chat_reader_dir):
    import torch

    editor = Editor(
        EditHParams(alg_name="FT", model_name=str(chat_reader_dir), ft_steps_per_edit=1, ft_lr=1e-2)
    )
    before = {k: v.clone() for k, v in editor.reader.model.state_dict().items()}
    editor.apply(parse_requests(REQUESTS))
    after = editor.reader.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    editor.reset()
    assert all(torch.equal(before[k], v) for k, v in editor.reader.model.state_dict().items())


def test_metrics_json_is_serialisable(chat_reader_dir):
    editor = Editor(EditHParams(alg_name="NONE", model_name=str(chat_reader_dir), max_new_tokens=3))
    result = editor.edit(REQUESTS)
    json.dumps(result.metrics)
    # NONE never changes an answer: behaviour is preserved exactly.
    assert result.metrics["BP"] == 1.0
