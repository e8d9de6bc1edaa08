"""Tokenize documents into a Megatron `.bin/.idx` pair plus a JSON manifest.

The run is all-or-nothing: data goes to temp files that are renamed into place at the end, and the
manifest (written last, after the old one is removed) marks a complete dataset. Documents are
encoded in batches (SentencePiece and HF fast tokenizers are much faster on lists) and optionally in
`workers` processes; the output order never depends on the number of workers.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from densa import __version__
from densa.data.indexed import IndexedWriter, dtype_for_vocab
from densa.data.manifest import Manifest, manifest_path, write_manifest
from densa.data.readers import Document, ReadStats, expand_inputs, iter_documents
from densa.data.tokenizer import Tokenizer, load_tokenizer
from densa.errors import DataError


@dataclass
class PreprocessResult:
    prefix: str
    manifest: Manifest
    skipped_lines: int
    skipped_empty: int


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer_path: str) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = load_tokenizer(tokenizer_path)


def _encode_in_worker(texts: list[str]) -> list[list[int]]:
    assert _WORKER_TOKENIZER is not None
    return _WORKER_TOKENIZER.encode_batch(texts)


def _batches(docs: Iterable[Document], batch_size: int) -> Iterator[list[Document]]:
    it = iter(docs)
    while batch := list(islice(it, batch_size)):
        yield batch


def preprocess(
    inputs: list[str | Path],
    tokenizer: Tokenizer | str | Path,
    output_prefix: str | Path,
    fmt: str = "auto",
    key: str = "text",
    text_mode: str = "file",
    append_eos: bool = True,
    prepend_bos: bool = False,
    streaming: bool = False,
    skip_bad_lines: bool = False,
    workers: int = 1,
    batch_size: int = 256,
    progress: bool = True,
) -> PreprocessResult:
    """Tokenize `inputs` into `<output_prefix>.bin/.idx/.json`; returns what was written."""
    from tqdm import tqdm

    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
    if append_eos and tok.eos_id is None:
        raise DataError(f"tokenizer {tok.path} has no EOS token; pass --no-eos or use another tokenizer")
    if prepend_bos and tok.bos_id is None:
        raise DataError(f"tokenizer {tok.path} has no BOS token; drop --bos")
    files = expand_inputs(inputs)
    total_bytes = sum(_size(f) for f in files)
    stats = ReadStats()
    docs = (d for d in iter_documents(files, fmt, key, text_mode, streaming, skip_bad_lines, stats))
    prefix = str(output_prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    skipped_empty = 0
    pool = None
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(tok.path,))
    bar = tqdm(
        total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", file=sys.stderr, disable=not progress
    )
    try:
        with IndexedWriter(prefix, tok.vocab_size) as writer:
            batches = _batches(docs, batch_size)
            if pool is None:
                encoded = ((b, tok.encode_batch([d.text for d in b])) for b in batches)
            else:
                pending = ((b, [d.text for d in b]) for b in batches)
                encoded = _pooled(pool, pending)
            for batch, ids_list in encoded:
                for doc, ids in zip(batch, ids_list):
                    bar.update(doc.nbytes)
                    if not doc.text.strip():
                        skipped_empty += 1
                        continue
                    ids = list(ids)
                    if prepend_bos:
                        ids.insert(0, tok.bos_id)
                    if append_eos:
                        ids.append(tok.eos_id)
                    writer.add_document(ids, doc.name)
            if writer.num_documents == 0:
                raise DataError(f"no documents found in {[str(f) for f in files]} (all inputs empty)")
            manifest_path(prefix).unlink(missing_ok=True)
            writer.finalize()
            manifest = Manifest(
                tokenizer_fingerprint=tok.fingerprint,
                tokenizer_path=str(tok.path),
                vocab_size=tok.vocab_size,
                bos_id=tok.bos_id,
                eos_id=tok.eos_id,
                dtype=dtype_for_vocab(tok.vocab_size).__name__,
                num_documents=writer.num_documents,
                num_tokens=writer.num_tokens,
                sources=[str(f) for f in files],
                append_eos=append_eos,
                prepend_bos=prepend_bos,
                densa_version=__version__,
                extra={"skipped_bad_lines": stats.skipped_lines, "skipped_empty_documents": skipped_empty},
            )
            write_manifest(prefix, manifest)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return PreprocessResult(prefix, manifest, stats.skipped_lines, skipped_empty)


def _size(path: Path) -> int:
    """Bytes of a file, or of all files in a `datasets` folder (for the progress bar)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _pooled(pool, pending: Iterator[tuple[list[Document], list[str]]], ahead: int = 8):
    """Ordered parallel encoding with a bounded number of batches in flight."""
    window: list = []
    for batch, texts in pending:
        window.append((batch, pool.apply_async(_encode_in_worker, (texts,))))
        if len(window) >= ahead:
            b, res = window.pop(0)
            yield b, res.get()
    for b, res in window:
        yield b, res.get()
