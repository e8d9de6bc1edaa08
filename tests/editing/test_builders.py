"""Probe and instruction-data builders: splits, held-out wordings, counterfactual share, and that a
negative context never holds a note answering its question."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from densa.editing.probes import build_probes
from densa.editing.prompts import ABSTAIN
from densa.editing.retriever import BM25Retriever
from densa.editing.sft_data import build_eren_sft
from densa.editing.templates import SFT_RELATIONS, TEMPLATES
from densa.editing.world import World, split_of


@pytest.fixture(scope="module")
def world(facts):
    return World(facts)


def test_probes_layout_and_locality_subjects(world):
    probes = build_probes(world, n_edits=6, seed=0)
    records = probes["records"]
    assert len(records) == 6 and [r["case_id"] for r in records] == list(range(6))
    edited = {r["requested_rewrite"]["subject"] for r in records}
    assert all(split_of(s) == "eval" for s in edited)
    for r in records:
        rw = r["requested_rewrite"]
        assert r["target_new"] == rw["target_new"] != rw["target_true"] == r["ground_truth"]
        assert rw["target_new"] in world.ranges[rw["relation"]]
        assert r["prompt"] == TEMPLATES[rw["relation"]].question(rw["subject"], 0)
        assert r["rephrase_prompt"] == [
            q.format(s=rw["subject"]) for q in TEMPLATES[rw["relation"]].heldout_questions
        ]
        for group in ("same_relation", "unrelated"):
            for prompt in r["locality"][group]["prompt"]:
                assert not any(re.search(rf"\b{re.escape(s)}\b", prompt) for s in edited), prompt
        for prompt, truth in zip(
            r["locality"]["same_subject"]["prompt"], r["locality"]["same_subject"]["ground_truth"]
        ):
            assert (
                rw["subject"] in prompt
                and truth != rw["target_new"]
                or truth == world.get(rw["subject"], "continent")
            )


def test_sft_data_teaches_reading_and_abstaining(world):
    records, stats = build_eren_sft(world, BM25Retriever(), n_examples=300, seed=1, max_k=4)
    assert stats["examples"] == 300
    kinds = Counter(r["kind"] for r in records)
    positives = [r for r in records if r["kind"] == "positive"]
    share_cf = sum(r["detail"] == "counterfactual" for r in positives) / len(positives)
    assert share_cf >= 0.5
    sft_subjects = set(world.subjects("sft"))
    heldout = {
        q.split("{s}")[0]
        for rel in TEMPLATES.values()
        for q in rel.heldout_questions
        if not q.startswith("{s}")
    }
    for r in records:
        user, target = r["messages"][0]["content"], r["messages"][1]["content"]
        assert not any(h and h in user for h in heldout), user
        if r["kind"] == "two_hop":
            continue
        # which (subject, relation) is asked: find the training template that produced the question
        asked = [
            (s, rel)
            for rel in SFT_RELATIONS
            for q in TEMPLATES[rel].train_questions
            for s in sft_subjects
            if q.format(s=s) in user
        ]
        assert asked, user
        s, rel = max(asked, key=lambda x: len(x[0]))  # "Guinea-Bissau" over "Guinea"
        answering = {
            TEMPLATES[rel].statement(s, o, i)
            for o in world.ranges[rel]
            for i in range(len(TEMPLATES[rel].statements))
        }
        notes = set(user.splitlines())
        if r["kind"] == "positive":
            assert any(
                n in answering and n.rstrip(".").endswith(target) or target in n for n in notes & answering
            )
            if r["context"] == "same_subject":  # a note on another of s's relations sits next to the answer
                other = {
                    TEMPLATES[r2].statement(s, o, i)
                    for r2 in SFT_RELATIONS
                    if r2 != rel
                    for o in world.ranges.get(r2, ())
                    for i in range(len(TEMPLATES[r2].statements))
                }
                assert notes & other, user
        elif r["kind"] == "negative":
            assert target == ABSTAIN and not (notes & answering), (user, target)
        else:
            assert r["kind"] == "closed_book" and target == world.get(s, rel)
    assert kinds["closed_book"] > 0 and kinds["two_hop"] > 0 and kinds["negative"] > 0
    contexts = Counter(r["context"] for r in positives)
    assert contexts["same_subject"] > 0 and contexts["same_relation"] > 0 and contexts["retrieved"] > 0
