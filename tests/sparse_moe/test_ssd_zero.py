"""SSD under DeepSpeed ZeRO-1/2 and bf16 on 2 gloo processes (the ranks run ssd_ranks.py).

The switch permutes each FFN weight with its fp32 master copy and Adam moments, which ZeRO-1/2 keep in flat
per-rank partitions (densa.train.engine.Engine.permute_param_). Checked: the permutation lands on all of them
on every rank, dense -> sparse -> dense is bit-identical, a run resumed in sparse mode reproduces the
uninterrupted one bit for bit, ZeRO-2 on 2 ranks follows ZeRO-0 on one process, and bf16 trains.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "train"))  # trainer_helpers, as the rank scripts import it
from trainer_helpers import launch  # noqa: E402

from .ssd_ranks import config  # noqa: E402

SCRIPT = Path(__file__).with_name("ssd_ranks.py")
pytestmark = pytest.mark.distributed
WEIGHTS = ("gate_up_proj.weight", "down_proj.weight")
FIELDS = ("param", "master", "exp_avg", "exp_avg_sq")


def _run(tmp_path: Path, scenario: str, settings: list[str]) -> None:
    results = launch(SCRIPT, 2, [scenario, str(tmp_path), ",".join(settings)], timeout=600)
    for r in results:
        assert r.returncode == 0, r.stderr[-4000:]


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_round_trip_moves_weights_masters_and_moments_together_on_every_rank(tmp_path):
    zero = "DeepSpeedZeroOptimizer"
    settings = {  # ZeRO stage:precision -> (model dtype, DeepSpeed's optimizer wrapper)
        "1:fp32": ("float32", zero),
        "2:fp32": ("float32", zero),
        "2:bf16": ("bfloat16", zero),
        "1:bf16acc32": ("bfloat16", "BF16_Optimizer"),  # bf16 with fp32 gradient accumulation
    }
    _run(tmp_path, "roundtrip", list(settings))
    expected = {f"{layer}.{w}/{f}" for layer in range(3) for w in WEIGHTS for f in FIELDS}
    for setting, (dtype, wrapper) in settings.items():
        ranks = [_read(tmp_path / setting.replace(":", "_") / f"result_{r}.json") for r in (0, 1)]
        for res in ranks:
            assert (res["param_dtype"], res["optimizer"]) == (f"torch.{dtype}", wrapper)
            assert res["identity_perm"] == [False, False, False]  # real permutations
            assert res["moments_nonzero"]  # after 3 Adam steps: the moments carry information
            assert res["master_is_param"]  # the model weights are the masters (rounded to bf16)
            # sparse: every weight, fp32 master and Adam moment equals the original indexed by the permutation
            assert res["permuted"].keys() == expected and all(res["permuted"].values()), res["permuted"]
            # dense again with the layouts restored: all of it bit-identical to before the switch
            assert all(res["roundtrip"].values()), res["roundtrip"]
        # ZeRO partitioned the masters: layer 1's gate_up straddles the two ranks' partitions
        frags = [res["fragments"]["1.gate_up_proj.weight"] for res in ranks]
        assert 0 < frags[0] < 4096 and sum(frags) == 4096, frags


def test_resume_across_a_switch_is_bit_identical_under_zero2_and_bf16_trains(tmp_path, ds_world):
    from densa.train.run import build_trainer
    from densa.train.synthetic import SyntheticDataset

    _run(tmp_path, "resume", ["2:fp32", "2:bf16"])
    fp32, bf16 = _read(tmp_path / "2_fp32" / "result.json"), _read(tmp_path / "2_bf16" / "result.json")
    for res in (fp32, bf16):
        assert res["modes"] == [0, 1, 1, 1, 0, 0, 0, 0]  # sparse after done=2 through done=5
        assert res["interrupted"]  # the split run stopped at done=4, in sparse mode
        assert res["split"] == res["full"]  # bit-identical losses ...
        assert res["weights_equal"] and res["state_equal"]  # ... weights, fp32 masters and Adam moments
        assert any(
            f.endswith("zero_pp_rank_1_mp_rank_00_optim_states.pt") for f in res["files"]
        )  # partitioned
    # ZeRO-2 on 2 ranks follows ZeRO-0 on one process (same global batch, rank 0's clustering): a master or
    # moment left unpermuted would send the trajectory elsewhere after the first switch
    one = build_trainer(config(tmp_path / "one", "0", "fp32"), train_data=SyntheticDataset(64, 16)).fit()
    assert fp32["full"] == pytest.approx([h["loss"] for h in one.history], rel=1e-5)
    # bf16: finite, learning, and within bf16 rounding of fp32 through both switches
    assert all(math.isfinite(x) for x in bf16["full"]) and bf16["full"][-1] < bf16["full"][0] - 0.3
    assert bf16["full"] != fp32["full"]
    assert bf16["full"] == pytest.approx(fp32["full"], rel=0.02)
