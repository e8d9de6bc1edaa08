"""InfLLM on a GPU: the Triton two-stage kernel, and SmolLM2-135M-Instruct passkey retrieval on real text.

1. Kernel: one execution block of 512 queries (Llama-3-8B heads: 32 query / 8 KV, head_dim 128, bf16)
   over InfLLM's context (4096 local keys, 128 sinks + 16 units of 128 in memory) with the Triton kernel
   vs the torch path, checked against each other, next to SDPA over a full causal prefix of 32K / 128K keys.
2. Passkey (issue 12 item 4): "The pass key is NNNNN. Remember it." hidden at a random depth of real text
   (--text, e.g. the KJV Bible or the Shakespeare corpus of ../shared/MATERIAL.md), then "What is the pass
   key? The pass key is"; greedy 8 tokens, correct when the digits appear. Lengths 1×, 2×, 4× SmolLM2's
   8192 context; full attention vs StreamingLLM (4 sinks, budget 4096) vs InfLLM (n_init 128, n_local 2048,
   block 128, topk 16, exc_block 512, 32 cached units); prefill tokens/s and peak GPU memory.

    python benchmarks/gpu/infllm.py --model runs/smollm2-hf --text kjv.txt     # on a GPU machine
    TRITON_INTERPRET=1 python benchmarks/gpu/infllm.py --smoke                 # CPU check of this script
Writes benchmarks/results/infllm_gpu.{json,md} (the --smoke run writes nothing).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from benchmarks.common import machine_info, median, write_results  # noqa: E402

# The CPU benchmark's settings and prompt (benchmarks/infllm/smollm2_passkey.py), so the two compare.
from benchmarks.infllm.smollm2_passkey import INFLLM, passkey_prompt  # noqa: E402
from densa.kernels.timing import device_name, peak_memory, time_interleaved_device  # noqa: E402
from densa.kernels.two_stage_attention import two_stage_attention  # noqa: E402
from densa.longctx import build_policy, generate_with_policy  # noqa: E402


def kernel_bench(device: torch.device, smoke: bool, repeats: int) -> list[dict]:
    b, hq, hk, d, n = (1, 2, 1, 16, 5) if smoke else (1, 32, 8, 128, 512)
    local, memory = (9, 20) if smoke else (4096 + 512, 128 + 16 * 128 + 128)
    dtype = torch.float32 if smoke else torch.bfloat16
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    q, k1, v1, k2, v2 = (
        rand(b, hq, n, d),
        rand(b, hk, local, d),
        rand(b, hk, local, d),
        rand(b, hk, memory, d),
        rand(b, hk, memory, d),
    )
    m1 = torch.ones(b, n, local, dtype=torch.bool, device=device).tril(diagonal=local - n)
    m2 = torch.ones(b, n, memory, dtype=torch.bool, device=device)
    args = (q, k1, v1, m1, q, k2, v2, m2, d**-0.5)
    ref, _ = two_stage_attention(*args, backend="torch")
    out, _ = two_stage_attention(*args, backend="triton")
    err = float((out.float() - ref.float()).abs().max())
    fns = {
        "triton": lambda: two_stage_attention(*args, backend="triton"),
        "torch": lambda: two_stage_attention(*args, backend="torch"),
    }
    for total in (64,) if smoke else (32768, 131072):
        kf, vf = rand(b, hk, total, d), rand(b, hk, total, d)
        fns[f"sdpa_full_{total}"] = lambda kf=kf, vf=vf: torch.nn.functional.scaled_dot_product_attention(
            q, kf, vf, enable_gqa=True
        )
    times = time_interleaved_device(fns, repeats, device)
    return [{"variant": k, "ms": 1e3 * median(t), "max_abs_err_vs_torch": err} for k, t in times.items()]


def passkey_bench(model, tok, text: str, lengths: list[int], rows: int, device) -> list[dict]:
    text_ids = tok.encode(text)
    results = []
    for length in lengths:
        for method, opts, budget in (
            ("full", {}, None),
            ("streaming_llm", {"n_sink": 4}, 4096),
            ("infllm", INFLLM, None),
        ):
            gen = torch.Generator().manual_seed(length)
            correct, seconds, peaks = 0, [], []
            for _ in range(rows):
                ids, key = passkey_prompt(tok, text_ids, length, gen)
                peak_memory(device, reset=True)
                start = time.perf_counter()
                res = generate_with_policy(
                    model, torch.tensor([ids], device=device), build_policy(method, **opts), budget, 512, 8
                )
                seconds.append(time.perf_counter() - start)
                peaks.append(peak_memory(device))
                answer = tok.decode(res.tokens[0, len(ids) :].tolist())
                correct += key in re.sub(r"\s", "", answer)
            speed = length / median(seconds)
            results.append(
                {"T": length, "method": method, "accuracy": correct / rows, "prefill_tokens_per_s": speed,
                 "peak_memory_gib": max(peaks) / 2**30}
            )  # fmt: skip
            print(results[-1], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny kernel shapes on CPU (TRITON_INTERPRET=1)")
    parser.add_argument(
        "--model", default=None, help="SmolLM2-135M-Instruct HF folder (skip passkey if absent)"
    )
    parser.add_argument("--text", default=None, help="a long real text for the haystack")
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    kernel = kernel_bench(device, args.smoke, 2 if args.smoke else args.repeats)
    print(kernel, flush=True)
    passkey = []
    if args.model and args.text:
        from densa.data.tokenizer import load_tokenizer
        from densa.train.finetune import find_tokenizer, load_model

        model = load_model(args.model).to(device, torch.bfloat16)
        tok = load_tokenizer(find_tokenizer(args.model))
        lengths = [512, 1024] if args.smoke else [8192, 16384, 32768]
        passkey = passkey_bench(model, tok, Path(args.text).read_text(), lengths, args.rows, device)
    if args.smoke:
        return
    lines = [
        f"# InfLLM on {device_name(device)}",
        "",
        "| kernel variant | ms | max abs err (triton vs torch) |",
    ]
    lines += ["|---|---|---|"] + [
        f"| {r['variant']} | {r['ms']:.3f} | {r['max_abs_err_vs_torch']:.1e} |" for r in kernel
    ]
    if passkey:
        lines += ["", "| T | method | passkey accuracy | prefill tok/s | peak GiB |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['T']} | {r['method']} | {r['accuracy']:.2f} | {r['prefill_tokens_per_s']:.0f} | "
            f"{r['peak_memory_gib']:.2f} |"
            for r in passkey
        ]
    machine = machine_info() | {"device": device_name(device)}
    payload = {
        "config": vars(args) | {"infllm": INFLLM},
        "machine": machine,
        "kernel": kernel,
        "passkey": passkey,
    }
    print(*write_results("infllm_gpu", payload, "\n".join(lines) + "\n"), sep="\n")


if __name__ == "__main__":
    main()
