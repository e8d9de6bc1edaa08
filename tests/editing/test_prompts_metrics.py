"""Answer normalisation, the reader prompts and the metric arithmetic, against hand-computed values."""

from __future__ import annotations

import pytest

from densa.editing.metrics import harmonic, intervals, summarize
from densa.editing.prompts import ONE_STEP, READ, is_abstention, matches, normalize, read_prompt


def test_normalize_and_match():
    assert normalize("  The Capital is PARIS. ") == "capital is paris"
    assert normalize(".fr") == ".fr" and normalize("+33") == "+33"
    assert matches("The capital of France is Paris.", "Paris")
    assert matches("paris", "Paris") and not matches("Parisian", "Paris")
    assert matches("It is in South America.", "South America")  # a whole-word span counts
    assert not matches("", "Paris") and not matches("Paris", "")
    assert is_abstention("Unanswerable.") and not is_abstention("It is unanswerable, maybe")


def test_read_prompt_is_flan_squad_v2_template():
    prompt = read_prompt(
        "What is the capital of France?", ["The capital of France is Lima.", "Lyon is in Peru"]
    )
    assert prompt == (
        'Read this and answer the question. If the question is unanswerable, say "unanswerable".\n\n'
        "The capital of France is Lima.\nLyon is in Peru.\n\nWhat is the capital of France?"
    )
    one_step = read_prompt("q?", ["a"], abstain=False)
    assert one_step == "Read this and answer the question.\n\na.\n\nq?" and "unanswerable" not in ONE_STEP
    assert "unanswerable" in READ


def _row(group, correct, **kw):
    return {"group": group, "correct": correct, **kw}


def test_summarize_pins_es_bp_eq():
    rows = [
        _row("rewrite", True, retrieved_edit=True),
        _row("rewrite", False, retrieved_edit=False),
        _row("rephrase", True, retrieved_edit=True),
        _row("rephrase", True, retrieved_edit=True),
        _row("same_subject", True),
        _row("same_subject", False),
        _row("same_relation", True),
        _row("unrelated", True),
        _row("two_hop", False, retrieved_edit=True),
    ]
    m = summarize(rows)
    assert m["ES"] == pytest.approx(3 / 4)
    assert m["rewrite_acc"] == pytest.approx(0.5) and m["rephrase_acc"] == pytest.approx(1.0)
    assert m["BP_same_subject"] == pytest.approx(0.5)
    assert m["BP"] == pytest.approx((0.5 + 1 + 1) / 3)  # mean of the three probe types
    assert (
        m["EQ"]
        == pytest.approx(harmonic(0.75, 2.5 / 3))
        == pytest.approx(2 * 0.75 * (2.5 / 3) / (0.75 + 2.5 / 3))
    )
    assert m["locality_acc"] == m["BP"] and m["locality.same_subject_acc"] == m["BP_same_subject"]
    assert m["retrieval_recall"] == pytest.approx(3 / 4) and m["two_hop_acc"] == 0.0
    assert m["counts"] == {
        "rewrite": 2,
        "rephrase": 2,
        "same_subject": 2,
        "same_relation": 1,
        "unrelated": 1,
        "two_hop": 1,
    }
    assert "greedy generation" in m["protocol"]
    assert harmonic(0.0, 0.0) == 0.0 and harmonic(None, 1.0) is None


def test_intervals_resample_edits_and_match_the_normal_approximation():
    # 400 edits with one rewrite probe each, 320 correct: the bootstrap interval of ES must agree with
    # the binomial normal interval 0.8 +- 1.96 * sqrt(0.8 * 0.2 / 400) = [0.7608, 0.8392].
    rows = [_row("rewrite", i < 320, case_id=i) for i in range(400)]
    lo, hi = intervals(rows, ("ES",), n_boot=4000)["ES"]
    assert lo == pytest.approx(0.7608, abs=0.006) and hi == pytest.approx(0.8392, abs=0.006)
    # Probes of one edit move together: 200 edits with two identical probes each is no more certain than
    # 200 edits with one probe (a row-level bootstrap would shrink the interval by sqrt(2)).
    one = [_row("rewrite", i < 160, case_id=i) for i in range(200)]
    two = one + [_row("rephrase", r["correct"], case_id=r["case_id"]) for r in one]
    assert intervals(one, ("ES",))["ES"] == intervals(two, ("ES",))["ES"]
    # Degenerate and empty cases; two-hop rows (no case) are left out.
    perfect = [_row("rewrite", True, case_id=0), _row("same_subject", True, case_id=0)]
    assert intervals(perfect) == {"ES": [1.0, 1.0], "BP": [1.0, 1.0], "EQ": [1.0, 1.0]}
    assert intervals([_row("two_hop", True)]) == {"ES": None, "BP": None, "EQ": None}
