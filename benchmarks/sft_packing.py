"""SFT packing: trained-token fraction and train-step time per real token, padded vs packed (CPU fp32).

Fill: over the whole SFT dataset, what share of the row slots hold example tokens (`real`: a slot whose
label is the example's next token) and carry loss (`loss`), one padded example per row vs packed rows
(`densa.data.packing`). Time: forward + backward of the same `--examples` examples as padded rows and
as packed rows (block-diagonal causal mask via SDPA), steps timed interleaved; both sides process the
same real tokens, so the ratio of medians is the ratio per real token (> 1: packing is faster). The
summed losses of both sides are recorded too (they must agree).

    python benchmarks/sft_packing.py --data SFT_DATA --tokenizer TOK [--seq-len 160] [--examples 64]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import machine_info, median, time_interleaved, write_results
from densa.data.packing import PackedSFTDataset, padded_stats
from densa.data.sampler import collate
from densa.data.sft import SFTDataset
from densa.models import ModelConfig, Transformer
from densa.train.eval import packed_inputs

MODEL = dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, ffn_dim=704)


class Head:
    """The first `n` examples of an SFTDataset, cut as the padded path cuts them, for rows of `seq_len`
    (the interface PackedSFTDataset reads)."""

    def __init__(self, sft: SFTDataset, n: int, seq_len: int) -> None:
        self.sft, self.n, self.seq_len, self.pad_id, self.path = sft, n, seq_len, sft.pad_id, sft.path

    def __len__(self) -> int:
        return self.n

    def ids_and_mask(self, i: int) -> tuple[list[int], list[int]]:
        ids, mask = self.sft.ids_and_mask(i)
        return ids[: self.sft.seq_len + 1], mask[: self.sft.seq_len + 1]


def _fold(batch: dict, vocab: int) -> dict:
    """Token ids modulo the benchmark model's vocabulary (timing does not depend on the values)."""
    return {k: v % vocab if k in ("input_ids", "labels") else v for k, v in batch.items()}


def _batches(rows: list[dict], micro: int, vocab: int) -> list[dict]:
    return [_fold(collate(rows[i : i + micro]), vocab) for i in range(0, len(rows), micro)]


def _summed_loss(model: Transformer, batches: list[dict]) -> float:
    total = 0.0
    with torch.no_grad():
        for b in batches:
            logits = model(b["input_ids"], **packed_inputs(b))
            ce = F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), reduction="none")
            total += float((ce * b["loss_mask"].flatten()).sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", required=True, help="SFT data (JSONL, parquet, datasets or hub cache folder)"
    )
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--seq-len", type=int, default=160, help="padded rows (and packed rows by default)")
    parser.add_argument("--pack-seq-len", type=int, default=None, help="packed rows (default: --seq-len)")
    parser.add_argument("--examples", type=int, default=64, help="examples in the timed set")
    parser.add_argument("--micro-batch", type=int, default=8, help="padded rows per forward")
    parser.add_argument(
        "--pack-micro-batch",
        type=int,
        default=None,
        help="packed rows per forward (default: the same tokens)",
    )
    parser.add_argument("--vocab", type=int, default=8192, help="benchmark model vocabulary")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--name", default="sft_packing", help="results file name")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pack_len = args.pack_seq_len or args.seq_len
    sft = SFTDataset(args.data, args.tokenizer, args.seq_len)
    padded = padded_stats(sft)
    packed = PackedSFTDataset(Head(sft, len(sft), pack_len), args.seed).stats()
    fill = {
        name: {
            "examples": s.examples,
            "rows": s.rows,
            "real_tokens_per_row": s.real_tokens / s.rows,
            "loss_tokens_per_row": s.loss_tokens / s.rows,
            "real_fraction": s.fill,
            "loss_fraction": s.loss_tokens / (s.rows * s.seq_len),
        }
        for name, s in ((f"padded {args.seq_len}", padded), (f"packed {pack_len}", packed))
    }
    print(f"fill: padded {padded.fill:.3f}, packed {packed.fill:.3f}", flush=True)

    head = Head(sft, min(args.examples, len(sft)), pack_len)
    pad_rows = [sft[i] for i in range(len(head))]
    pack_ds = PackedSFTDataset(head, args.seed)
    pack_rows = [pack_ds[i] for i in range(len(pack_ds))]
    pad_b = _batches(pad_rows, args.micro_batch, args.vocab)
    pack_micro = args.pack_micro_batch or max(1, args.micro_batch * args.seq_len // pack_len)
    pack_b = _batches(pack_rows, pack_micro, args.vocab)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=args.vocab, max_seq_len=pack_len, **MODEL)).train()

    def step(batches: list[dict]) -> None:
        for b in batches:
            logits = model(b["input_ids"], **packed_inputs(b))
            ce = F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), reduction="none")
            (ce * b["loss_mask"].flatten()).sum().backward()
        model.zero_grad(set_to_none=True)

    times = time_interleaved({"padded": lambda: step(pad_b), "packed": lambda: step(pack_b)}, args.repeats)
    model.eval()
    loss_pad, loss_pack = _summed_loss(model, pad_b), _summed_loss(model, pack_b)
    real = pack_ds.stats().real_tokens
    pad_s, pack_s = median(times["padded"]), median(times["packed"])
    timing = {
        "examples": len(head),
        "real_tokens": real,
        "pack_micro_batch": pack_micro,
        "padded_rows": len(pad_rows),
        "packed_rows": len(pack_rows),
        "padded_s": pad_s,
        "packed_s": pack_s,
        "padded_ms_per_1k_real_tokens": 1000 * pad_s / real * 1000,
        "packed_ms_per_1k_real_tokens": 1000 * pack_s / real * 1000,
        "speedup": pad_s / pack_s,
        "padded_times_s": times["padded"],
        "packed_times_s": times["packed"],
        "summed_loss_padded": loss_pad,
        "summed_loss_packed": loss_pack,
    }
    print(f"time per real token: packed is {timing['speedup']:.2f}x the padded speed", flush=True)
    payload = {
        "config": {**vars(args), "model": MODEL},
        "machine": machine_info(),
        "fill": fill,
        "timing": timing,
    }
    f, t = fill, timing
    lines = [
        f"# SFT packing: padded rows of {args.seq_len} vs packed rows of {pack_len} (`{args.data}`)",
        "",
        "Fill over the whole dataset: `real` = slots whose label is the example's next token, `loss` = "
        "slots with loss_mask 1 (both per row of seq_len slots).",
        "",
        "| layout | examples | rows | real tokens / row | loss tokens / row | real share | loss share |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in f.items():
        lines.append(
            f"| {name} | {r['examples']} | {r['rows']} | {r['real_tokens_per_row']:.1f} "
            f"| {r['loss_tokens_per_row']:.1f} | {r['real_fraction']:.3f} | {r['loss_fraction']:.3f} |"
        )
    lines += [
        "",
        f"Train step (forward + backward, CPU fp32, {torch.get_num_threads()} torch thread(s)) over the "
        f"first {t['examples']} examples ({t['real_tokens']} real tokens), model {MODEL}, "
        f"vocab {args.vocab}, micro-batch {args.micro_batch} padded / {pack_micro} packed rows, "
        f"median of {args.repeats} interleaved repeats:",
        "",
        "| layout | rows | time (s) | ms per 1k real tokens | summed loss |",
        "| --- | --- | --- | --- | --- |",
        f"| padded {args.seq_len} | {t['padded_rows']} | {t['padded_s']:.3f} "
        f"| {t['padded_ms_per_1k_real_tokens']:.1f} | {t['summed_loss_padded']:.3f} |",
        f"| packed {pack_len} | {t['packed_rows']} | {t['packed_s']:.3f} "
        f"| {t['packed_ms_per_1k_real_tokens']:.1f} | {t['summed_loss_packed']:.3f} |",
        "",
        f"Packed / padded speed per real token: **{t['speedup']:.2f}×**.",
        "",
    ]
    write_results(args.name, payload, "\n".join(lines))


if __name__ == "__main__":
    main()
