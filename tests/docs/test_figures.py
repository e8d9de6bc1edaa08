"""Figures in the docs' result tables come from committed results files.

A results table in README.md or docs/*.md is announced by a marker on the line before it:
`<!-- figures: NAME [NAME ...] -->`, NAME a results file stem under benchmarks/results/. Every figure in that
table (a decimal number, or an integer with %, × or x) must round, at the digits shown, from a number printed
in NAME.md or a value (or 100× a value, for percentages) outside lists in NAME.json. Many numbers can back a
figure by chance, so this catches most typed or drifted figures rather than all of them; prose is left to
review.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- figures: ([\w ]+) -->$")
# The look-behind skips version numbers, dates and identifiers (no letter, dot, dash or slash before).
FIGURE = re.compile(r"(?<![\w.\-/])(\d+(?:,\d{3})*\.\d+|\d+(?=\s?(?:%|×|x\b)))")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _json_numbers(obj: object, out: list[float]) -> None:
    # Lists are skipped: they hold per-item rows and traces (hundreds of per-document NLLs would back
    # almost any figure), while the tables quote summaries.
    if isinstance(obj, dict):
        for v in obj.values():
            _json_numbers(v, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out += [float(obj), 100.0 * obj]


def source_numbers(stems: list[str], results: Path = RESULTS) -> list[float]:
    """Every number printed in the results markdown or held in the results JSON of `stems`."""
    values: list[float] = []
    for stem in stems:
        md, js = results / f"{stem}.md", results / f"{stem}.json"
        if not (md.exists() or js.exists()):
            raise FileNotFoundError(f"no results file {results / stem}.{{md,json}}")
        if md.exists():
            printed = re.findall(r"\d+(?:,\d{3})*(?:\.\d+)?", md.read_text())
            values += [float(m.replace(",", "")) for m in printed]
        if js.exists():
            _json_numbers(json.loads(js.read_text()), values)
    return values


def marked_tables(text: str) -> list[tuple[list[str], list[tuple[int, str]]]]:
    """(stems, [(line number, table line)]) for each table that follows a figures marker."""
    tables, stems, rows = [], None, []
    for lineno, line in enumerate(text.splitlines(), 1):
        if m := MARKER.match(line.strip()):
            stems, rows = m.group(1).split(), []
        elif stems is not None and line.lstrip().startswith("|"):
            rows.append((lineno, line))
        elif stems is not None and rows:
            tables.append((stems, rows))
            stems = None
    if stems is not None and rows:
        tables.append((stems, rows))
    return tables


def backed(figure: str, values: list[float]) -> bool:
    plain = figure.replace(",", "")
    digits = len(plain.split(".")[1]) if "." in plain else 0
    x = float(plain)
    return any(abs(round(v, digits) - x) < 1e-9 for v in values)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_marked_table_figures_come_from_results(doc: Path) -> None:
    missing = []
    for stems, rows in marked_tables(doc.read_text()):
        values = source_numbers(stems)
        figures = [(n, f) for n, line in rows for f in FIGURE.findall(line)]
        missing += [f"line {n}: {f} (from {stems})" for n, f in figures if not backed(f, values)]
    assert not missing, f"{doc.name}: table figures not in their results files: {missing}"


def test_results_tables_are_marked() -> None:
    marked = {doc.name: len(marked_tables(doc.read_text())) for doc in DOCS}
    # The docs that quote benchmark tables; a marker dropped in an edit shows up here.
    expected = {"analysis.md": 1, "data.md": 1, "editing.md": 1, "inference.md": 2, "infllm.md": 1}
    expected |= {"kernels.md": 2, "locret.md": 2, "sparsing_law.md": 1, "sparsity.md": 1}
    expected |= {"ssd_experiment.md": 2}
    assert {k: marked[k] for k in expected} == expected


def test_an_invented_figure_is_caught(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"nll": 3.6831, "share": 0.614}))
    (tmp_path / "r.md").write_text("| x | 1.04x |\n")
    values = source_numbers(["r"], tmp_path)
    assert all(backed(f, values) for f in ["3.68", "3.7", "61", "61.4", "1.04"])
    assert not any(backed(f, values) for f in ["3.61", "62", "1.4", "3.684"])
    doc = "text\n<!-- figures: r -->\n| a | 3.68 | 61% | 3.61 |\n\nafter 9.99\n"
    ((stems, rows),) = marked_tables(doc)
    assert stems == ["r"] and [n for n, _ in rows] == [3]
