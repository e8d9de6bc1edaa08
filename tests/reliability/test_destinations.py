"""No command destroys what it reads or a folder it did not write (issue 17, item 2).

Through the real CLI (`densa.launch.cli.main`, and a subprocess where the trainer runs): export, convert,
moefy, sparsity predictors and `export.hf_dir` refuse a destination that is, contains or lies inside
what they read (run dir, checkpoints, source folder), exit 1 with one line, and leave every byte as it
was; `--overwrite` replaces only a folder densa wrote (it carries the `.densa-output` marker).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densa.launch.cli import main
from densa.models.checkpoint_io import atomic_dir, save_model
from densa.models.config import ModelConfig
from densa.models.transformer import Transformer
from densa.outputs import MARKER

REFUSE = "which this command reads; refusing to write there. Choose another"
NOT_OURS = (
    "exists and was not written by densa (no .densa-output marker; folders from densa 0.1.0 and earlier"
    " have none); refusing to replace it. Choose another {name} or remove it yourself"
)


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` with a hash of its bytes (or its link target / 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def refused(root: Path, capsys, argv: list[str]) -> str:
    """Run `densa ARGV`; assert exit 1 and nothing under `root` changed; return stderr."""
    before = tree(root)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert tree(root) == before
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dest")


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, gated=True, max_seq_len=64
    )
    return Transformer(config).eval()


@pytest.fixture(scope="module")
def run(root, model) -> Path:
    """A run dir in densa.train.checkpoint's layout (one complete step_2), without running DeepSpeed."""
    run = root / "run"
    c = model.config
    recipe = (
        f"run: {{name: tiny, out_dir: {run}}}\n"
        f"model: {{vocab_size: {c.vocab_size}, dim: {c.dim}, n_layers: {c.n_layers}, n_heads: {c.n_heads},"
        f" n_kv_heads: {c.n_kv_heads}, ffn_dim: {c.ffn_dim}, gated: true, max_seq_len: {c.max_seq_len}}}\n"
    )
    ckpt = run / "checkpoints" / "step_2"
    (ckpt / "deepspeed").mkdir(parents=True)
    torch.save({"module": model.state_dict()}, ckpt / "deepspeed" / "mp_rank_00_model_states.pt")
    for folder in (run, ckpt):
        (folder / "recipe.yaml").write_text(recipe, encoding="utf-8")
    (ckpt / "train_state.json").write_text(json.dumps({"step": 2}), encoding="utf-8")
    (ckpt / "COMPLETE").write_text("", encoding="utf-8")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "train/loss": 4.0}) + "\n", encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def src(root, model) -> Path:
    """A densa model folder (what `densa convert` / `moefy` read)."""
    return save_model(root / "src", model.config, model.state_dict())


@pytest.fixture(scope="module")
def foreign(root) -> Path:
    """A non-empty folder densa did not write."""
    folder = root / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious\n", encoding="utf-8")
    return folder


# --- densa export ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "out, said",
    [
        ("{run}", "--out {run} is the run directory {run}"),
        ("{root}", "--out {root} contains the run directory {run}"),
        ("{run}/checkpoints", "--out {run}/checkpoints is the checkpoints folder {run}/checkpoints"),
        (
            "{run}/checkpoints/step_2/hf",
            "--out {run}/checkpoints/step_2/hf lies inside the checkpoints folder {run}/checkpoints",
        ),
        ("{run}/metrics.jsonl", "--out {run}/metrics.jsonl is the metrics file {run}/metrics.jsonl"),
        ("{root}/run-link", "--out {root}/run-link is the run directory {run}"),  # symlinks resolved
    ],
)
def test_export_refuses_what_it_reads(root, run, capsys, out, said):
    if not (root / "run-link").exists():
        (root / "run-link").symlink_to(run, target_is_directory=True)
    out, said = out.format(run=run, root=root), said.format(run=run, root=root)
    err = refused(root, capsys, ["export", str(run), "--out", out, "--overwrite"])
    assert err == f"densa export: error: {said}, {REFUSE} --out\n"


def test_export_from_a_checkpoint_refuses_its_run_and_itself(root, run, capsys):
    step = run / "checkpoints" / "step_2"
    err = refused(root, capsys, ["export", str(step), "--out", str(run), "--overwrite"])
    assert err == f"densa export: error: --out {run} is the run directory {run}, {REFUSE} --out\n"
    err = refused(root, capsys, ["export", str(step), "--out", str(step), "--overwrite"])
    assert f"--out {step} lies inside the checkpoints folder {run}/checkpoints" in err


def test_export_overwrite_refuses_a_folder_densa_did_not_write(root, run, foreign, capsys):
    err = refused(root, capsys, ["export", str(run), "--out", str(foreign), "--overwrite"])
    assert err == f"densa export: error: {foreign} {NOT_OURS.format(name='--out')}\n"
    err = refused(root, capsys, ["export", str(run), "--out", str(foreign)])  # same without --overwrite
    assert err == f"densa export: error: {foreign} {NOT_OURS.format(name='--out')}\n"


def test_export_fresh_then_overwrite_own_folder(root, run, capsys):
    from transformers import AutoModelForCausalLM

    out = run / "hf"  # beside the run's files: the usual place, allowed
    assert main(["export", str(run), "--out", str(out)]) == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["written_by"] == "densa" and marker["kind"]
    hf = AutoModelForCausalLM.from_pretrained(out)  # the dotfile does not bother transformers
    assert hf.config.num_hidden_layers == 2
    capsys.readouterr()

    err = refused(root, capsys, ["export", str(run), "--out", str(out)])
    assert (
        err
        == f"densa export: error: {out} already exists and is not empty (pass --overwrite to replace it)\n"
    )

    (out / "stale.txt").write_text("from the first export")
    assert main(["export", str(run), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / MARKER).is_file()  # replaced, not merged
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "hf", "metrics.jsonl", "recipe.yaml"]


# --- densa convert / moefy / sparsity predictors ----------------------------------------------------


@pytest.mark.parametrize(
    "dst, said",
    [
        ("{src}", "DST {src} is the source folder {src}"),
        ("{root}", "DST {root} contains the source folder {src}"),
        ("{src}/hf", "DST {src}/hf lies inside the source folder {src}"),
    ],
)
def test_convert_refuses_its_source(root, src, capsys, dst, said):
    dst, said = dst.format(src=src, root=root), said.format(src=src, root=root)
    err = refused(root, capsys, ["convert", str(src), dst, "--overwrite"])
    assert err == f"densa convert: error: {said}, {REFUSE} DST\n"


def test_convert_overwrite_only_replaces_densa_output(root, src, foreign, capsys):
    err = refused(root, capsys, ["convert", str(src), str(foreign), "--overwrite"])
    assert err == f"densa convert: error: {foreign} {NOT_OURS.format(name='DST')}\n"
    dst = root / "converted"
    assert main(["convert", str(src), str(dst)]) == 0
    assert (dst / MARKER).is_file() and (dst / "config.json").is_file()
    assert main(["convert", str(src), str(dst), "--to", "densa", "--overwrite"]) == 0
    assert json.loads((dst / "config.json").read_text())["format"] == "densa-model"


def test_moefy_refuses_its_source_and_foreign_folders(root, src, foreign, capsys):
    args = ["moefy", str(src), "--experts", "2", "--method", "contiguous", "--overwrite", "--out"]
    err = refused(root, capsys, [*args, str(src)])
    assert err == f"densa moefy: error: --out {src} is the source folder {src}, {REFUSE} --out\n"
    err = refused(root, capsys, [*args, str(foreign)])
    assert err == f"densa moefy: error: {foreign} {NOT_OURS.format(name='--out')}\n"
    out = root / "moe"
    assert main([*args, str(out)]) == 0 and main([*args, str(out)]) == 0  # own folder: replaced
    assert {p.name for p in out.iterdir()} >= {MARKER, "moe.json", "moe_router.safetensors", "config.json"}


def test_predictors_never_replace_model_weights(root, src, capsys):
    weights = src / "model.safetensors"
    argv = ["sparsity", "predictors", "--model", str(src), "--data", str(src / "config.json")]
    err = refused(root, capsys, [*argv, "--rank", "2", "--out", str(weights)])
    assert err == (
        f"densa sparsity: error: --out {weights} exists and is not a predictors file densa wrote;"
        " refusing to replace it. Choose another --out or remove it yourself\n"
    )


def test_atomic_dir_failure_leaves_the_old_folder(root, src):
    before = tree(root)
    with pytest.raises(RuntimeError), atomic_dir(src, overwrite=True) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash while writing")
    assert tree(root) == before  # nothing replaced, no temporary sibling left


# --- export.hf_dir (densa train) --------------------------------------------------------------------

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog",
         "while", "the", "cat", "sleeps", "on", "the", "warm", "mat")  # fmt: skip


def _densa(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "densa.launch.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """A 2-step training recipe on real tokenized data, exporting to RUN/hf."""
    from densa.data.preprocess import preprocess
    from densa.data.sp_train import train_sentencepiece

    base = tmp_path_factory.mktemp("train")
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) for _ in range(300))
    (base / "corpus.txt").write_text(text + "\n")
    tok = train_sentencepiece([base / "corpus.txt"], base / "tok", vocab_size=320, num_threads=1)
    (base / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in text.splitlines()))
    preprocess([base / "train.jsonl"], tok, base / "train")
    run = base / "run"
    path = base / "recipe.yaml"
    path.write_text(
        f"run: {{name: dest, out_dir: {run}, seed: 1}}\n"
        "model: {vocab_size: 384, dim: 32, n_layers: 2, n_heads: 4, ffn_dim: 64, max_seq_len: 32}\n"
        f"data: {{train: [{{path: {base / 'train'}}}], seq_len: 32, tokenizer: {tok}}}\n"
        "batch: {global_tokens: 128, micro_batch: 4}\n"
        "train: {steps: 2}\n"
        "checkpoint: {interval: 2, keep_last: 1}\n"
        f"export: {{hf_dir: {run / 'hf'}}}\n"
    )
    return path


@pytest.mark.parametrize(
    "hf_dir, said",
    [
        ("{run}", "{run} is the run directory {run}"),
        ("{base}", "{base} contains the run directory {run}"),
        ("{run}/checkpoints/hf", "{run}/checkpoints/hf lies inside the checkpoints folder {run}/checkpoints"),
        ("{base}/tok", "{base}/tok contains the data.tokenizer {base}/tok/tokenizer.model"),
    ],
)
def test_train_refuses_hf_dir_over_what_it_uses(recipe, capsys, hf_dir, said):
    base = recipe.parent
    run = base / "run"
    hf_dir, said = hf_dir.format(run=run, base=base), said.format(run=run, base=base)
    err = refused(base, capsys, ["train", str(recipe), "--set", f"export.hf_dir={hf_dir}"])
    assert err == (
        f"densa train: error: --set: export.hf_dir: {said}; the export at the end of training would"
        f" replace it. Choose another export.hf_dir, such as {run}/hf\n"
    )


def test_train_reexports_own_hf_dir_and_refuses_a_foreign_one(recipe):
    base = recipe.parent
    run = base / "run"
    first = _densa("train", str(recipe))
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run / "hf" / MARKER).is_file() and (run / "hf" / "tokenizer.json").is_file()
    (run / "hf" / "stale.txt").write_text("x")
    again = _densa("train", str(recipe))  # auto-resume of a finished run: re-exports over its own export
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (run / "hf" / "stale.txt").exists() and (run / "hf" / "config.json").is_file()

    foreign = base / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious\n")
    before = tree(base)
    done = _densa("train", str(recipe), "--set", f"export.hf_dir={foreign}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"densa train: error: recipe: export.hf_dir: {foreign} {NOT_OURS.format(name='export.hf_dir')}"
    )
    assert tree(base) == before
