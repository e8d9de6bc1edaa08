"""No code runs from a file densa reads (issue 17): a checkpoint whose pickle would run a command is refused.

One tiny ZeRO-1 run (real tokenized data, in this process) is trained once per module; each test copies
it and plants a payload, an object whose `__reduce__` calls `os.system("touch SENTINEL")`, in one of the
files densa reads: DeepSpeed's model states and optimizer partition, `rng_rank0.pt`, `callbacks.pt`.
Every entry point (`densa eval`, `generate`, `export`, `init.from_path`, resume) must leave SENTINEL
absent, fail, and say which file was refused and why. Each payload is first shown to be live: unpickling
it the unsafe way does create SENTINEL.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from densa.errors import CheckpointError
from densa.train import safe_load
from densa.train.checkpoint import CALLBACKS_FILE, complete_checkpoints

MODEL_STATES = "deepspeed/mp_rank_00_model_states.pt"
OPTIM_STATES = "deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt"
RNG = "rng_rank0.pt"
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "cat", "sleeps", "on", "mat"]


def refused(name: str) -> re.Pattern:
    """The one-line error for a refused file `name` (os.system pickles as posix.system)."""
    return re.compile(
        rf"{re.escape(name)}: contains pickled objects that densa refuses to execute \(posix\.system\)"
    )


class Payload:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.sentinel))}",)


def plant(path: Path, sentinel: Path) -> None:
    """Add a payload to the torch file at `path` (a dict), keeping the rest of its content."""
    from densa.train.engine import deepspeed_safe_globals

    state = safe_load.load(path, allow=deepspeed_safe_globals())
    state["payload"] = Payload(sentinel)
    torch.save(state, path)
    torch.load(path, weights_only=False)  # the unsafe way: the payload runs
    assert sentinel.is_file(), "the planted payload did not run when unpickled unsafely"
    sentinel.unlink()


def poisoned_run(clean: Path, tmp_path: Path, file: str) -> tuple[Path, Path, Path]:
    """(run dir copy, its checkpoint folder, sentinel) with a payload in checkpoint file `file`."""
    run = tmp_path / "run"
    shutil.copytree(clean, run)
    ckpt = complete_checkpoints(run)[-1][1]
    sentinel = tmp_path / "SENTINEL"
    plant(ckpt / file, sentinel)
    return run, ckpt, sentinel


def densa(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "densa.launch.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """A recipe over tiny tokenized data: ZeRO-1 (so there is an optimizer partition), 2 steps."""
    from densa.data.preprocess import preprocess
    from densa.data.sp_train import train_sentencepiece

    root = tmp_path_factory.mktemp("untrusted")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) for _ in range(300)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    tok = train_sentencepiece([root / "corpus.txt"], root / "tok", vocab_size=320, num_threads=1)
    for split, part in (("train", lines[:250]), ("valid", lines[250:])):
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
        preprocess([root / f"{split}.jsonl"], tok, root / split)
    path = root / "recipe.yaml"
    path.write_text(
        f"""
run: {{name: untrusted, out_dir: {root / "clean"}, seed: 1}}
model: {{vocab_size: 384, dim: 16, n_layers: 1, n_heads: 2, ffn_dim: 32, max_seq_len: 16}}
data:
  train: [{{path: {root / "train"}}}]
  seq_len: 16
  tokenizer: {tok}
batch: {{global_tokens: 32, micro_batch: 2}}
train: {{steps: 2}}
parallel: {{zero_stage: 1}}
checkpoint: {{interval: 1000}}
logging: {{tensorboard: false, progress: false}}
"""
    )
    return path


def config(recipe: Path, *overrides: str):
    from densa.config.load import load_recipe

    return load_recipe(recipe, list(overrides))


@pytest.fixture(scope="module")
def clean_run(recipe, ds_world) -> Path:
    from densa.train.run import train

    cfg = config(recipe)
    assert train(cfg).state.step == 2
    return Path(cfg.run.out_dir)


# ------------------------------------------------------------------------------ the files themselves


def test_clean_checkpoint_files_need_no_pickle(clean_run):
    """What densa writes itself loads with weights_only and no allowlist; DeepSpeed's partition needs only
    DeepSpeed's own classes."""
    from densa.train.engine import deepspeed_safe_globals

    ckpt = complete_checkpoints(clean_run)[-1][1]
    for name in (MODEL_STATES, RNG, CALLBACKS_FILE):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt / name)) == [], name
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt / OPTIM_STATES)))
    assert unsafe and unsafe <= set(safe_load.DEEPSPEED_GLOBALS)
    assert [f"{cls.__module__}.{cls.__qualname__}" for cls, _ in deepspeed_safe_globals()] == list(
        safe_load.DEEPSPEED_GLOBALS
    )


def test_save_refuses_state_that_would_need_pickle(tmp_path):
    with pytest.raises(TypeError, match=r"state holds numpy\.\S+, which weights-only loading refuses"):
        safe_load.save({"ssd": {"inertia": np.float64(1.5)}}, tmp_path / "callbacks.pt")
    assert not (tmp_path / "callbacks.pt").exists()


def test_rng_state_round_trip_and_legacy_format(tmp_path):
    """RNG files hold tensors and numbers now; the numpy-array tuples older densa wrote still restore."""
    from densa.train.engine import rng_state, set_rng_state

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), np.random.randn(), float(torch.rand(()))

    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    np.random.randn()  # leave a cached gaussian in numpy's state
    safe_load.save(rng_state(), tmp_path / "new.pt")
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(legacy, tmp_path / "legacy.pt")
    expected = draws()
    for name in ("new.pt", "legacy.pt"):
        set_rng_state(safe_load.load(tmp_path / name, allow=safe_load.legacy_rng_globals()))
        assert draws() == expected, name
    # numpy arrays only where the RNG file is read. Importing transformers' Trainer (other tests do)
    # registers numpy's classes process-wide, so this check runs with the global allowlist emptied.
    registered = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        with pytest.raises(CheckpointError, match="refuses to execute"):
            safe_load.load(tmp_path / "legacy.pt")
    finally:
        torch.serialization.add_safe_globals(registered)


# ------------------------------------------------------------------------------ entry points


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "--checkpoint", "{run}", "--data", "{data}", "--seq-len", "16", "--max-batches", "1"],
        ["generate", "--model", "{run}", "--prompt", "the quick", "--max-new-tokens", "2"],
        ["export", "{run}", "--out", "{out}"],
    ],
    ids=["eval", "generate", "export"],
)
def test_cli_refuses_poisoned_model_states(clean_run, recipe, tmp_path, command):
    run, ckpt, sentinel = poisoned_run(clean_run, tmp_path, MODEL_STATES)
    fill = {"run": str(run), "data": str(recipe.parent / "valid"), "out": str(tmp_path / "hf")}
    done = densa(*(part.format(**fill) for part in command))
    assert not sentinel.exists()
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.startswith(f"densa {command[0]}: error: ") and "Traceback" not in done.stderr
    assert refused(str(ckpt / MODEL_STATES)).search(done.stderr), done.stderr[-3000:]
    assert not (tmp_path / "hf").exists()


def test_clean_run_loads_in_every_entry_point(clean_run, recipe, tmp_path, capsys):
    """The positive control for the refusals: the untouched run evaluates, generates, exports, seeds a run."""
    from densa.launch.cli import main
    from densa.train.run import build_trainer

    valid = str(recipe.parent / "valid")
    assert main(["eval", "--checkpoint", str(clean_run), "--data", valid, "--seq-len", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] > 0
    assert main(["generate", "--model", str(clean_run), "--prompt", "the", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.startswith("the")
    assert main(["export", str(clean_run), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()
    cfg = config(recipe, f"run.out_dir={tmp_path / 'seeded'}", f"init.from_path={clean_run}")
    assert build_trainer(cfg).maybe_resume() is None  # built from the checkpoint's weights


def test_init_from_path_refuses_poisoned_model_states(clean_run, recipe, tmp_path):
    from densa.train.run import train

    run, ckpt, sentinel = poisoned_run(clean_run, tmp_path, MODEL_STATES)
    cfg = config(recipe, f"run.out_dir={tmp_path / 'new'}", f"init.from_path={run}")
    with pytest.raises(CheckpointError, match=refused(str(ckpt / MODEL_STATES))):
        train(cfg)
    assert not sentinel.exists()


@pytest.mark.parametrize("file", [MODEL_STATES, OPTIM_STATES, RNG, CALLBACKS_FILE])
def test_resume_refuses_poisoned_file(clean_run, recipe, tmp_path, file):
    from densa.train.run import train

    run, ckpt, sentinel = poisoned_run(clean_run, tmp_path, file)
    with pytest.raises(CheckpointError, match=refused(str(ckpt / file))):
        train(config(recipe, f"run.out_dir={run}", "train.steps=3"))
    assert not sentinel.exists()
    assert [s for s, _ in complete_checkpoints(run)] == [2]  # nothing trained on, nothing saved


def test_clean_run_resumes(clean_run, recipe, tmp_path):
    from densa.train.run import train

    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    result = train(config(recipe, f"run.out_dir={run}", "train.steps=3"))
    assert [h["step"] for h in result.history] == [2]  # resumed at step 2, trained step 3 only
    assert [s for s, _ in complete_checkpoints(run)] == [2, 3]


@pytest.mark.parametrize("init", [False, True], ids=["resume", "init_from_path"])
def test_densa_train_exits_nonzero(clean_run, recipe, tmp_path, init):
    """`densa train` itself: auto-resume of a run whose DeepSpeed optimizer partition is poisoned, and a
    new run seeded (init.from_path) from one whose model states are."""
    run, ckpt, sentinel = poisoned_run(clean_run, tmp_path, MODEL_STATES if init else OPTIM_STATES)
    if init:
        overrides = [f"run.out_dir={tmp_path / 'new'}", f"init.from_path={ckpt}"]
    else:
        overrides = [f"run.out_dir={run}", "train.steps=3"]
    done = densa("train", str(recipe), *(a for o in overrides for a in ("--set", o)))
    assert not sentinel.exists()
    assert done.returncode == 1, done.stderr[-3000:]
    assert "densa train: error: " in done.stderr and "Traceback" not in done.stderr
    name = MODEL_STATES if init else OPTIM_STATES
    assert refused(str(ckpt / name)).search(done.stderr), done.stderr[-3000:]


def test_zero3_weights_refuse_poisoned_partitions(recipe, tmp_path, ds_world):
    """ZeRO-3 checkpoints are read by DeepSpeed's zero_to_fp32 (eval/export/init) and its engine
    (resume): a payload in the partitioned model or optimizer states is refused on both paths."""
    from densa.train.finetune import load_weights
    from densa.train.run import train

    cfg = config(recipe, f"run.out_dir={tmp_path / 'z3'}", "parallel.zero_stage=3")
    train(cfg)
    clean = Path(cfg.run.out_dir)
    assert len(load_weights(clean)[1]) > 0
    for i, file in enumerate(
        [
            "deepspeed/zero_pp_rank_0_mp_rank_00_model_states.pt",
            "deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        ]
    ):
        run, ckpt, sentinel = poisoned_run(clean, tmp_path / str(i), file)
        with pytest.raises(CheckpointError, match=refused(str(ckpt / file))):
            load_weights(run)
        with pytest.raises(CheckpointError, match=refused(str(ckpt / file))):
            train(config(recipe, f"run.out_dir={run}", "parallel.zero_stage=3", "train.steps=3"))
        assert not sentinel.exists()


class _Payload:
    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_hf_pytorch_model_bin_with_pickled_code_is_refused(tmp_path, capsys):
    """An HF folder whose pytorch_model.bin carries code: `densa convert` refuses it in one line."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from densa.launch.cli import main

    src, sentinel = tmp_path / "hf", tmp_path / "SENTINEL"
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(src)
    state = LlamaForCausalLM(config).state_dict()
    (src / "model.safetensors").unlink()
    torch.save({**state, "payload": _Payload(sentinel)}, src / "pytorch_model.bin")
    assert main(["convert", str(src), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "pytorch_model.bin: contains pickled objects that densa refuses to execute (posix.system)" in err
    assert not sentinel.exists() and not (tmp_path / "out").exists()
