"""No silent wrong result, no traceback for a user's mistake (issue 17): each bad input below fails through
the real CLI (`densa train / eval / generate / convert`) with exit status 1, one `densa CMD: error: ...`
line naming the file and what is wrong, no traceback, and nothing left behind (no empty run dir, no
temp file). Where densa can go on safely it does, and says so on stderr: a data folder it cannot write
its index cache to, a damaged newest checkpoint on auto-resume, generation past max_seq_len.

One tiny tokenized dataset, one tiny model folder and one short run (checkpoints at steps 2 and 4) are
made once per module; each test copies what it damages. Training runs in this process (`main([...])`,
which is what the `densa` console script calls), one case also as a subprocess.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from densa.launch.cli import main
from densa.models.checkpoint_io import save_model
from densa.models.config import ModelConfig
from densa.train.checkpoint import checkpoint_weights, complete_checkpoints

DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "cat", "sleeps", "on", "mat"]
MODEL = dict(vocab_size=384, dim=16, n_layers=1, n_heads=2, ffn_dim=32, max_seq_len=16)
MODELS_STATES = "deepspeed/mp_rank_00_model_states.pt"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """data/{train,valid}.{bin,idx,json} and data/tok/tokenizer.model (320 ids) in a module folder."""
    from densa.data.preprocess import preprocess
    from densa.data.sp_train import train_sentencepiece

    root = tmp_path_factory.mktemp("bad_input") / "data"
    root.mkdir()
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) for _ in range(300)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    train_sentencepiece([root / "corpus.txt"], root / "tok", vocab_size=320, num_threads=1)
    for split, part in (("train", lines[:250]), ("valid", lines[250:])):
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
        preprocess([root / f"{split}.jsonl"], root / "tok" / "tokenizer.model", root / split, progress=False)
    shutil.rmtree(root / "train_index_cache", ignore_errors=True)
    return root


def copy_data(data: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset files (without index caches) to damage."""
    out = tmp_path / "data"
    shutil.copytree(data, out, ignore=shutil.ignore_patterns("*_index_cache"))
    return out


def recipe(tmp_path: Path, data: Path, run: Path, extra: str = "") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"""
run: {{name: bad, out_dir: {run}, seed: 1}}
model: {json.dumps(MODEL)}
data:
  train: [{{path: {data / "train"}}}]
  seq_len: 16
  tokenizer: {data / "tok" / "tokenizer.model"}
batch: {{global_tokens: 32, micro_batch: 2}}
train: {{steps: 4}}
checkpoint: {{interval: 2, keep_last: 3}}
logging: {{tensorboard: false, progress: false}}
{extra}"""
    )
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, err: str, command: str, phrase: str) -> None:
    assert code == 1, err[-3000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"densa {command}: error: ")]
    assert len(lines) == 1, err[-3000:]
    assert phrase in lines[0], lines[0]


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data) -> Path:
    """A densa model folder with the recipe's architecture and the data's tokenizer."""
    from densa.models.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(**MODEL))
    folder = tmp_path_factory.mktemp("model") / "tiny"
    save_model(folder, model.config, model.state_dict(), extra_files=[data / "tok" / "tokenizer.model"])
    return folder


def truncated_model(model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "truncated"
    shutil.copytree(model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


# ------------------------------------------------------------------------------ training data


def test_train_on_truncated_bin_fails_in_a_subprocess(data, tmp_path):
    """The headline case through the installed entry point: exit 1, one line, no run dir, no temp files."""
    bad = copy_data(data, tmp_path)
    bin_path = bad / "train.bin"
    size = bin_path.stat().st_size
    with open(bin_path, "r+b") as f:
        f.truncate(size - 200)
    run = tmp_path / "runs" / "x"
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "densa.launch.cli", "train", str(recipe(tmp_path, bad, run))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    tokens = size // 2
    assert_one_line_error(
        done.returncode,
        done.stderr,
        "train",
        f"{bin_path} holds {tokens - 100} tokens but train.idx describes {tokens} in",
    )
    assert "the .bin is truncated, or the .idx belongs to another dataset" in done.stderr
    assert not (tmp_path / "runs").exists() and not leftovers(tmp_path)


def damage_odd_size(d: Path) -> str:
    with open(d / "train.bin", "ab") as f:
        f.write(b"\0")
    return (
        f"{d / 'train.bin'}: {(d / 'train.bin').stat().st_size} bytes is not a multiple of the token size 2"
    )


def damage_idx_from_other_dataset(d: Path) -> str:
    shutil.copy(d / "valid.idx", d / "train.idx")
    return "the .bin is longer than its index, or the .idx belongs to another dataset"


def damage_manifest_from_other_dataset(d: Path) -> str:
    shutil.copy(d / "valid.json", d / "train.json")
    return f"{d / 'train.json'} records documents = 50 but {d / 'train.idx'} has 250"


def damage_truncated_idx(d: Path) -> str:
    idx = d / "train.idx"
    idx.write_bytes(idx.read_bytes()[:-8])
    return f"{idx}: {idx.stat().st_size} bytes, but its header (250 sequences, 251 document indices) needs"


def damage_bin_is_a_folder(d: Path) -> str:
    (d / "train.bin").unlink()
    (d / "train.bin").mkdir()
    return f"dataset file {d / 'train.bin'} is a folder, not a file"


def damage_id_beyond_vocab(d: Path) -> str:
    tokens = np.fromfile(d / "train.bin", dtype=np.uint16)
    tokens[100] = 1000  # the manifest still says vocab 320 <= 384: only a scan finds it
    tokens.tofile(d / "train.bin")
    return f"{d / 'train.bin'}: token id 1000 is >= the model's vocab_size 384"


@pytest.mark.parametrize(
    "damage",
    [
        damage_odd_size,
        damage_idx_from_other_dataset,
        damage_manifest_from_other_dataset,
        damage_truncated_idx,
        damage_bin_is_a_folder,
        damage_id_beyond_vocab,
    ],
    ids=lambda f: f.__name__.removeprefix("damage_"),
)
def test_train_refuses_damaged_data(data, tmp_path, capsys, ds_world, damage):
    bad = copy_data(data, tmp_path)
    phrase = damage(bad)
    run = tmp_path / "runs" / "x"
    code, _, err = run_cli(capsys, "train", str(recipe(tmp_path, bad, run)))
    assert_one_line_error(code, err, "train", phrase)
    assert not (tmp_path / "runs").exists() and not leftovers(tmp_path)


def test_failed_validation_leaves_no_run_dir(data, tmp_path, capsys, ds_world):
    """Checks that need the world (here: tp 2 on one process) run after the run dir is probed."""
    run = tmp_path / "runs" / "x"
    code, _, err = run_cli(capsys, "train", str(recipe(tmp_path, data, run)), "--set", "parallel.tp=2")
    assert code == 1 and "densa train: error: " in err and "Traceback" not in err, err[-3000:]
    assert "parallel.tp" in err
    assert not (tmp_path / "runs").exists()


def test_data_vocab_larger_than_model(data, tmp_path, capsys, ds_world):
    """The manifest check that existed before: data tokenized for a bigger vocabulary."""
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", str(recipe(tmp_path, data, run)), "--set", "model.vocab_size=256")
    assert_one_line_error(code, err, "train", "data vocab_size 320 (manifest) > model vocab_size 256")
    assert not run.exists()


def test_eval_refuses_truncated_bin(data, model_dir, tmp_path, capsys):
    bad = copy_data(data, tmp_path)
    with open(bad / "valid.bin", "r+b") as f:
        f.truncate(f.seek(0, 2) - 2)
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(model_dir), "--data", str(bad / "valid"))
    assert_one_line_error(code, err, "eval", f"{bad / 'valid.bin'} holds")
    assert not leftovers(tmp_path)


def test_read_only_data_folder_falls_back_to_the_cache_dir(data, tmp_path, capsys, ds_world, monkeypatch):
    """A data folder densa cannot write its index cache into: the cache goes to $DENSA_CACHE/index_cache."""
    shared = copy_data(data, tmp_path)
    # chmod is not enough as root; a file where the cache folder would go makes mkdir fail for everyone.
    (shared / "train_index_cache").write_text("not a folder")
    shared.chmod(0o555)
    monkeypatch.setenv("DENSA_CACHE", str(tmp_path / "cache"))
    try:
        code, _, err = run_cli(capsys, "train", str(recipe(tmp_path, shared, tmp_path / "run")))
    finally:
        shared.chmod(0o755)
    assert code == 0, err[-3000:]
    assert f"densa: warning: cannot write the index cache to {shared / 'train_index_cache'} (" in err
    assert f"; using {tmp_path / 'cache' / 'index_cache'}" in err
    assert len(list((tmp_path / "cache" / "index_cache").glob("*.npy"))) == 3
    assert [s for s, _ in complete_checkpoints(tmp_path / "run")] == [2, 4]
    assert not leftovers(tmp_path)


def test_index_cache_kept_in_memory_when_no_cache_dir_is_writable(data, tmp_path, capsys, monkeypatch):
    from densa.data.gpt_dataset import GPTDataset

    shared = copy_data(data, tmp_path)
    (shared / "train_index_cache").write_text("not a folder")
    (tmp_path / "cache").write_text("not a folder either")
    monkeypatch.setenv("DENSA_CACHE", str(tmp_path / "cache"))
    ds = GPTDataset(shared / "train", 16, 8, vocab_size=384)
    assert ds[7]["input_ids"].shape == (16,)
    err = capsys.readouterr().err
    assert f"densa: warning: cannot write the index cache to {shared / 'train_index_cache'} (" in err
    assert f" or {tmp_path / 'cache' / 'index_cache'} (" in err and err.endswith("; keeping it in memory\n")
    assert not leftovers(tmp_path)


# ------------------------------------------------------------------------------ model folders


@pytest.mark.parametrize("command", ["eval", "generate", "convert"])
def test_truncated_safetensors(data, model_dir, tmp_path, capsys, command):
    folder = truncated_model(model_dir, tmp_path)
    argv = {
        "eval": ["eval", "--checkpoint", str(folder), "--data", str(data / "valid")],
        "generate": ["generate", "--model", str(folder), "--prompt", "the quick"],
        "convert": ["convert", str(folder), str(tmp_path / "out")],
    }[command]
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(
        code,
        err,
        command,
        f"{folder / 'model.safetensors'}: not a readable safetensors file, truncated or damaged",
    )
    assert not out and not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_init_from_truncated_safetensors(data, model_dir, tmp_path, capsys, ds_world):
    folder = truncated_model(model_dir, tmp_path)
    run = tmp_path / "runs" / "x"
    code, _, err = run_cli(
        capsys, "train", str(recipe(tmp_path, data, run, f"init: {{from_path: {folder}}}"))
    )
    assert_one_line_error(code, err, "train", f"{folder / 'model.safetensors'}: not a readable safetensors")
    assert not (tmp_path / "runs").exists()


def test_convert_refuses_config_that_disagrees_with_weights(model_dir, tmp_path, capsys):
    folder = tmp_path / "edited"
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / "config.json").read_text())
    meta["model_config"]["ffn_dim"] = 48
    (folder / "config.json").write_text(json.dumps(meta))
    for target in ("hf", "densa"):
        code, _, err = run_cli(capsys, "convert", str(folder), str(tmp_path / "out"), "--to", target)
        assert_one_line_error(
            code,
            err,
            "convert",
            f"{folder}: tensor layers.0.ffn.down_proj.weight has shape [16, 32], the model config expects "
            "[16, 48]",
        )
        assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_convert_refuses_hf_config_that_disagrees_with_weights(tmp_path, capsys):
    from densa.models.hf.parity import tiny_hf_model

    tiny_hf_model("llama").save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["intermediate_size"] += 8
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "convert", str(tmp_path / "hf"), str(tmp_path / "out"))
    assert_one_line_error(code, err, "convert", f"{tmp_path / 'hf'}: tensor layers.0.ffn.")
    assert "the model config expects" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ generate


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "0,-0.5"])
def test_generate_sparsity_out_of_range(model_dir, capsys, value):
    code, out, err = run_cli(
        capsys, "generate", "--model", str(model_dir), "--prompt", "the", "--sparsity", value
    )
    assert_one_line_error(
        code, err, "generate", f"--sparsity {value}: layer thresholds must be finite and >= 0"
    )
    assert not out


def test_generate_sparsity_report_out_of_range(model_dir, tmp_path, capsys):
    from densa.sparsity.report import LayerSparsity, SparsityReport

    path = tmp_path / "sparsity.json"
    SparsityReport(1.0, 0.1, 5.0, 5.0, True, 64, [LayerSparsity(0, -0.5, 0.1, 0.5)]).save(path)
    code, _, err = run_cli(
        capsys, "generate", "--model", str(model_dir), "--prompt", "the", "--sparsity", str(path)
    )
    assert_one_line_error(
        code, err, "generate", f"--sparsity {path}: layer thresholds must be finite and >= 0"
    )


def test_generate_past_max_seq_len_warns(model_dir, capsys):
    code, out, err = run_cli(
        capsys,
        "generate",
        "--model",
        str(model_dir),
        "--prompt",
        "the quick brown fox",
        "--max-new-tokens",
        "20",
    )
    assert code == 0, err[-3000:]
    assert out.startswith("the quick brown fox")
    assert "densa generate: warning: prompt (" in err
    assert "--max-new-tokens 20 = " in err and "exceeds the model's max_seq_len 16" in err
    code, _, err = run_cli(
        capsys, "generate", "--model", str(model_dir), "--prompt", "the", "--max-new-tokens", "4"
    )
    assert code == 0 and "warning" not in err


def test_generate_with_a_tokenizer_bigger_than_the_model(data, tmp_path, capsys):
    """Prompt ids the embedding lacks: an error naming the tokenizer, not an IndexError traceback."""
    from densa.models.transformer import Transformer

    model = Transformer(ModelConfig(**{**MODEL, "vocab_size": 8}))
    save_model(tmp_path / "small", model.config, model.state_dict())
    tok = data / "tok" / "tokenizer.model"
    argv = [
        "generate",
        "--model",
        str(tmp_path / "small"),
        "--tokenizer",
        str(tok),
        "--prompt",
        "the quick fox",
    ]
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "generate", f"tokenizer {tok}: the prompt encodes to id ")
    assert "beyond the model's vocab_size 8; the tokenizer does not belong to this model" in err and not out


# ------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, ds_world) -> Path:
    """A finished 4-step run with complete checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("trained")
    run = root / "run"
    assert main(["train", str(recipe(root, data, run))]) == 0
    assert [s for s, _ in complete_checkpoints(run)] == [2, 4]
    return run


def copy_run(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_auto_resume_skips_a_damaged_checkpoint_exactly(trained, data, tmp_path, capsys, ds_world):
    """step_4 is COMPLETE but its model states are cut short: resume says so and continues from step_2,
    exactly as a run that never had step_4."""
    damaged = copy_run(trained, tmp_path / "a")
    truncate(damaged / "checkpoints" / "step_4" / MODELS_STATES)
    code, _, err = run_cli(
        capsys, "train", str(recipe(tmp_path / "a", data, damaged)), "--set", "train.steps=6"
    )
    assert code == 0, err[-3000:]
    bad = damaged / "checkpoints" / "step_4" / MODELS_STATES
    assert (
        f"densa train: warning: skipping checkpoint {damaged / 'checkpoints' / 'step_4'}: {bad}: "
        "not a readable torch file, truncated or damaged" in err
    )
    assert f"densa train: resuming from {damaged / 'checkpoints' / 'step_2'} instead" in err
    assert "Traceback" not in err

    reference = copy_run(trained, tmp_path / "b")
    shutil.rmtree(reference / "checkpoints" / "step_4")
    code, _, err = run_cli(
        capsys, "train", str(recipe(tmp_path / "b", data, reference)), "--set", "train.steps=6"
    )
    assert code == 0 and "warning" not in err, err[-3000:]
    a = checkpoint_weights(damaged / "checkpoints" / "step_6")
    b = checkpoint_weights(reference / "checkpoints" / "step_6")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_auto_resume_with_no_usable_checkpoint(trained, data, tmp_path, capsys, ds_world):
    run = copy_run(trained, tmp_path)
    truncate(run / "checkpoints" / "step_4" / "rng_rank0.pt")
    (run / "checkpoints" / "step_2" / "train_state.json").write_text('{"step": 2, "consu')
    code, _, err = run_cli(capsys, "train", str(recipe(tmp_path, data, run)), "--set", "train.steps=6")
    assert_one_line_error(
        code, err, "train", f"no usable checkpoint in {run / 'checkpoints'}: step_4 ({run / 'checkpoints'}"
    )
    assert f"step_2 ({run / 'checkpoints' / 'step_2' / 'train_state.json'}: not a readable train state" in err
    assert "checkpoint.resume: none to start over" in err
    assert [s for s, _ in complete_checkpoints(run)] == [2, 4]


def test_explicit_resume_of_a_damaged_checkpoint(trained, data, tmp_path, capsys, ds_world):
    run = copy_run(trained, tmp_path)
    step4 = run / "checkpoints" / "step_4"
    (step4 / "callbacks.pt").write_bytes(random.Random(0).randbytes(256))
    code, _, err = run_cli(
        capsys,
        "train",
        str(recipe(tmp_path, data, run)),
        "--set",
        f"checkpoint.resume={step4}",
        "--set",
        "train.steps=6",
    )
    assert_one_line_error(
        code,
        err,
        "train",
        f"checkpoint.resume {step4}: unusable: {step4 / 'callbacks.pt'}: not a readable torch file",
    )
    assert "skipping" not in err


# ------------------------------------------------------------------------------ what already held


def test_bad_recipe_key_still_gets_did_you_mean(data, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", str(recipe(tmp_path, data, run, "optim: {lrr: 0.1}")))
    assert_one_line_error(code, err, "train", "optim.lrr: unknown key (did you mean 'lr'?)")
    assert not run.exists()


def test_bad_preprocess_input_still_names_the_line(data, tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "fine"}\n{"text": broken\n')
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        "data",
        "preprocess",
        str(src),
        "--tokenizer",
        str(data / "tok" / "tokenizer.model"),
        "--out",
        str(out),
    )
    assert_one_line_error(code, err, "data", f"{src}:2: malformed JSON")
    assert not list(tmp_path.glob("out*"))
