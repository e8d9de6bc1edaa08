"""SSD under DeepSpeed ZeRO-1/2 and bf16, one process per rank (started by test_ssd_zero.py).

    python ssd_ranks.py SCENARIO OUT_DIR ZERO:PRECISION[,ZERO:PRECISION...]

Each setting runs in turn in the same processes (DeepSpeed is re-initialised per trainer); results go to
OUT_DIR/ZERO_PRECISION/result_RANK.json (resume: rank 0 only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
from trainer_helpers import SEQ, VOCAB, StopAt, replace, tiny_cfg, weights

from densa.sparse_moe import SSDConfig, cluster_ffn, to_dense, to_sparse
from densa.sparse_moe.switching import ffn_modules
from densa.train.engine import shutdown_distributed
from densa.train.run import build_trainer
from densa.train.synthetic import SyntheticDataset

DATA = SyntheticDataset(VOCAB, SEQ)
STEPS = 8
# sparse after done = 2 through done = 5 (steps 2, 3, 4), dense again from step 5 on
SSD = SSDConfig(
    enabled=True,
    num_experts=8,
    top_k=2,
    interval=0,
    switch_steps=(2, 5),
    sparse_steps=0,
    final_dense_fraction=0.25,
)
KEYS = ("exp_avg", "exp_avg_sq")


def config(out: Path, zero: str, precision: str, ssd: bool = True):
    """precision: fp32, bf16, or bf16acc32 (bf16 with fp32 gradient accumulation: at ZeRO-1 DeepSpeed then
    uses its BF16_Optimizer instead of the ZeRO optimizer)."""
    extra = {"data_types": {"grad_accum_dtype": "fp32"}} if precision == "bf16acc32" else {}
    precision = precision.removesuffix("acc32")
    cfg = replace(tiny_cfg(out, steps=STEPS), "parallel", zero_stage=int(zero), precision=precision)
    cfg = dataclasses.replace(cfg, deepspeed=extra)
    cfg = replace(cfg, "model", n_layers=3)  # the ZeRO partition boundary then falls inside layer 1's gate_up
    return replace(cfg, "ssd", **vars(SSD)) if ssd else cfg


def ffn_state(engine) -> dict[str, torch.Tensor]:
    """Every FFN weight (as the model holds it), its full fp32 master and Adam moments, by name."""
    out = {}
    for i, ffn in enumerate(ffn_modules(engine.module)):
        for name, p in ffn.named_parameters():
            if name.startswith("router."):
                continue
            key = f"{i}.{name}"
            out[f"{key}/param"] = p.detach().clone()
            out[f"{key}/master"] = safe_get_full_fp32_param(p).clone()
            for k in KEYS:
                out[f"{key}/{k}"] = safe_get_full_optimizer_state(p, k).clone()
    return out


def index_of(name: str, perm: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    if "gate_up_proj" in name:
        return torch.cat([perm, perm + n]), 0
    return (perm, 0) if "up_proj" in name else (perm, 1)


def roundtrip_one(out: Path, zero: str, precision: str) -> None:
    """Train 3 steps, dense -> sparse -> dense (layouts restored): the permutation lands on weights, masters
    and both moments alike, every rank, and the round trip is bit-identical."""
    cfg = replace(config(out, zero, precision, ssd=False), "train", steps=3)
    trainer = build_trainer(cfg, train_data=DATA)
    trainer.fit()
    engine = trainer.engine
    before = ffn_state(engine)
    clusterings = [cluster_ffn(ffn, 8, seed=1) for ffn in ffn_modules(engine.module)]
    perms = to_sparse(engine.module, clusterings, 2, optimizer=engine, persist_router=False)
    sparse = ffn_state(engine)
    n = engine.module.config.ffn_dim
    moved = {}
    for key, value in before.items():
        layer, name = key.split("/")[0].split(".", 1)
        index, dim = index_of(name, perms[int(layer)], n)
        moved[key] = torch.equal(sparse[key], value.index_select(dim, index))
    to_dense(engine.module, optimizer=engine, restore=perms)
    after = ffn_state(engine)
    result = {
        "permuted": moved,
        "identity_perm": [bool(torch.equal(p, torch.arange(n))) for p in perms],
        "roundtrip": {k: torch.equal(after[k], before[k]) for k in before},
        "moments_nonzero": all(before[k].abs().sum() > 0 for k in before if k.endswith(KEYS)),
        "param_dtype": str(next(engine.module.parameters()).dtype),
        "fragments": fragments(engine),
        "optimizer": type(engine.ds.optimizer).__name__,
        "master_is_param": all(
            torch.equal(before[k], before[k.replace("/param", "/master")].to(before[k].dtype))
            for k in before
            if k.endswith("/param")
        ),
    }
    (out / f"result_{os.environ['RANK']}.json").write_text(json.dumps(result))


def fragments(engine) -> dict[str, int]:
    """How many elements of each FFN weight this rank's ZeRO partition holds (its fp32 master fragment)."""
    out = {}
    for i, ffn in enumerate(ffn_modules(engine.module)):
        for name, p in ffn.named_parameters():
            mapping = getattr(p, "_hp_mapping", None)
            out[f"{i}.{name}"] = mapping.lp_fragment_address.numel if mapping is not None else 0
    return out


def resume_one(out: Path, zero: str, precision: str) -> None:
    """STEPS steps with SSD vs stop in sparse mode (checkpoint at done = 4) + resume."""
    full_trainer = build_trainer(config(out / "full", zero, precision), train_data=DATA)
    full = full_trainer.fit()
    split_cfg = config(out / "split", zero, precision)
    first = build_trainer(split_cfg, callbacks=[StopAt(3)], train_data=DATA).fit()
    second_trainer = build_trainer(split_cfg, train_data=DATA)
    second = second_trainer.fit()
    a, b = weights(full_trainer), weights(second_trainer)
    sa, sb = ffn_state(full_trainer.engine), ffn_state(second_trainer.engine)
    rows = [json.loads(line) for line in (out / "full" / "metrics.jsonl").read_text().splitlines()]
    if int(os.environ["RANK"]) == 0:
        result = {
            "full": [h["loss"] for h in full.history],
            "split": [h["loss"] for h in first.history + second.history],
            "interrupted": first.interrupted,
            "modes": [r["ssd/sparse"] for r in rows if "ssd/sparse" in r],
            "weights_equal": all(torch.equal(a[k], b[k]) for k in a),
            "state_equal": all(torch.equal(sa[k], sb[k]) for k in sa),
            "files": sorted(
                p.name for p in (out / "split" / "checkpoints" / "step_4" / "deepspeed").iterdir()
            ),
        }
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    torch.set_num_threads(1)
    name, out_dir = sys.argv[1], Path(sys.argv[2])
    for setting in sys.argv[3].split(","):
        zero, precision = setting.split(":")
        globals()[f"{name}_one"](out_dir / f"{zero}_{precision}", zero, precision)
    # Both ranks leave together and tear gloo down first: a rank that exits while its peer's gloo threads
    # still hold the connection can abort the peer at exit ("terminate called without an active exception").
    torch.distributed.barrier()
    shutdown_distributed()
