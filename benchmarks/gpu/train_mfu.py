"""A ~1B-parameter densa decoder trained in bf16 on one GPU: tokens/s and MFU (issue 19, item 6).

The model is Llama-3.2-1B-shaped (dim 2048, 16 layers, 32 query / 8 KV heads, SwiGLU FFN 8192, vocabulary
32000, untied head: 1.10B parameters), trained through densa's own `Engine` (DeepSpeed, bf16, ZeRO-0, torch
AdamW, clipping) on synthetic tokens; no checkpoint is written (a 1B checkpoint is ~14 GB of disk and not what
is measured). Each step is 8 sequences of 2048 tokens (2 micro-batches of 4); the first --warmup steps are
dropped, the rest are timed one by one (a scalar read of a weight after each step waits for the GPU).

    MFU = 6 · N · tokens/s / peak bf16 FLOP/s of the device (densa.train.engine.peak_flops: H100/H200 989e12)

with N the parameters that take part in matmuls (all but the input embedding table, whose lookup costs no
FLOPs; the untied output head counts). `mfu_with_attention` adds attention's 12 · layers · dim · seq FLOPs
per token (PaLM, appendix B). Both are reported; neither counts recomputation (none is done here).

    python benchmarks/gpu/train_mfu.py                 # on a GPU: writes benchmarks/results/train_mfu_gpu.*
    python benchmarks/gpu/train_mfu.py --dry-run       # CPU check: tiny model, bf16, 3 steps, no files
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from benchmarks.common import machine_info, write_results  # noqa: E402
from densa.config.schema import (  # noqa: E402
    BatchSection,
    DataSection,
    LoggingSection,
    OptimSection,
    ParallelSection,
    RunConfig,
    RunSection,
    ScheduleSection,
    TrainSection,
)
from densa.data.sampler import BatchIterator  # noqa: E402
from densa.kernels.timing import device_name, peak_memory  # noqa: E402
from densa.models.config import ModelConfig  # noqa: E402
from densa.train import engine as eng  # noqa: E402
from densa.train.run import build_model  # noqa: E402
from densa.train.synthetic import SyntheticDataset  # noqa: E402

LLAMA_1B = dict(vocab_size=32000, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192)
TINY = dict(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128)


def run_config(model: dict, seq: int, micro: int, global_samples: int, steps: int) -> RunConfig:
    return RunConfig(
        run=RunSection(out_dir="runs/train_mfu", seed=0),
        model=ModelConfig(**model, max_seq_len=seq),
        data=DataSection(seq_len=seq),
        batch=BatchSection(global_tokens=global_samples * seq, micro_batch=micro),
        train=TrainSection(steps=steps),
        optim=OptimSection(lr=3e-4, weight_decay=0.1, grad_clip=1.0),
        schedule=ScheduleSection(kind="cosine", warmup_steps=1),
        logging=LoggingSection(log_interval=1, tensorboard=False, progress=False),
        parallel=ParallelSection(precision="bf16"),
    )


def matmul_params(model: ModelConfig) -> int:
    """Parameters that take part in matmuls: all but the input embedding table (a lookup)."""
    return model.num_params(include_embeddings=True) - model.vocab_size * model.dim


def measure(args: argparse.Namespace) -> dict:
    shape = TINY if args.dry_run else LLAMA_1B
    cfg = run_config(shape, args.seq, args.micro_batch, args.global_batch, args.warmup + args.steps)
    world = eng.init_distributed()
    engine = eng.Engine(cfg, build_model(cfg), world)
    device = engine.device
    data = BatchIterator(
        SyntheticDataset(cfg.model.vocab_size, args.seq), args.global_batch, args.micro_batch, 0, 1, 0
    )
    probe = next(engine.module.parameters())
    step_s, losses = [], []
    for step, micro in enumerate(data):
        if step >= args.warmup + args.steps:
            break
        t0 = time.perf_counter()
        out = engine.train_step(micro)
        float(probe.detach().view(-1)[0])  # waits for this step's optimizer update on the GPU
        if step >= args.warmup:
            step_s.append(time.perf_counter() - t0)
        losses.append(out.loss)
    tokens = args.global_batch * args.seq
    n = matmul_params(cfg.model)
    attention_flops = 12 * cfg.model.n_layers * cfg.model.dim * args.seq
    median_s = statistics.median(step_s)
    tps = tokens / median_s
    peak = eng.peak_flops()
    return {
        "device": device_name(device),
        "dtype": "bf16",
        "model": {**shape, "max_seq_len": args.seq},
        "params_total": cfg.model.num_params(),
        "params_matmul": n,
        "seq_len": args.seq,
        "micro_batch": args.micro_batch,
        "global_batch": args.global_batch,
        "tokens_per_step": tokens,
        "warmup_steps": args.warmup,
        "step_s": step_s,
        "step_s_median": median_s,
        "tokens_per_s": tps,
        "peak_flops": peak,
        "mfu": 6 * n * tps / peak,
        "mfu_with_attention": (6 * n + attention_flops) * tps / peak,
        "losses": losses,
        "peak_memory_gib": peak_memory(device) / 2**30,
    }


def markdown(r: dict) -> str:
    return "\n".join(
        [
            f"# {r['params_total'] / 1e9:.2f}B-parameter densa decoder, bf16 training step on {r['device']}",
            "",
            f"{r['params_total'] / 1e9:.2f}B parameters ({r['params_matmul'] / 1e9:.2f}B in matmuls), "
            f"{r['global_batch']} x {r['seq_len']} tokens per step (micro-batch {r['micro_batch']}), "
            f"DeepSpeed bf16 ZeRO-0 with torch AdamW; median of {len(r['step_s'])} steps after "
            f"{r['warmup_steps']} warm-up steps. Peak {r['peak_flops'] / 1e12:.0f} TFLOP/s.",
            "",
            "| step s | tokens/s | MFU (6N) | MFU (6N + attention) | peak memory GiB |",
            "| --- | --- | --- | --- | --- |",
            f"| {r['step_s_median']:.3f} | {r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% |"
            f" {100 * r['mfu_with_attention']:.1f}% | {r['peak_memory_gib']:.1f} |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="steps run before timing")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--global-batch", type=int, default=8, help="sequences per step")
    p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, 3 steps, no files")
    args = p.parse_args(argv)
    if args.dry_run:
        args.steps, args.warmup, args.seq, args.micro_batch, args.global_batch = 2, 1, 32, 2, 4
    elif eng.device_kind() != "cuda":
        sys.exit("no CUDA device: run on a GPU machine (or --dry-run to check the script on the CPU)")
    result = measure(args)
    md = markdown(result)
    print(md)
    if args.dry_run:
        if not all(map(lambda x: x == x, result["losses"])):  # NaN != NaN
            sys.exit(f"dry run: non-finite loss {result['losses']}")
        print(
            f"dry run: {len(result['step_s'])} timed steps, MFU {100 * result['mfu']:.3g}% of a CPU estimate"
        )
        return 0
    payload = {"benchmark": "train_mfu_gpu", "machine": machine_info(), **result}
    print("wrote", *write_results("train_mfu_gpu", payload, md))
    eng.shutdown_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
