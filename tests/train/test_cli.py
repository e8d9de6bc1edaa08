"""End to end through the CLI on real (tiny) tokenized data: `densa train` writes the run dir and exports,
`densa eval` and `densa generate` read the result back."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest

from densa.train.checkpoint import complete_checkpoints

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "the",
    "cat",
    "sleeps",
    "on",
    "the",
    "warm",
    "mat",
]


def _densa(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "densa.launch.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from densa.data.preprocess import preprocess
    from densa.data.sp_train import train_sentencepiece

    root = tmp_path_factory.mktemp("cli_data")
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) for _ in range(600))
    (root / "corpus.txt").write_text(text + "\n")
    tok = train_sentencepiece([root / "corpus.txt"], root / "tok", vocab_size=320)
    for split, lines in (("train", text.splitlines()[:500]), ("valid", text.splitlines()[500:])):
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
        preprocess([root / f"{split}.jsonl"], tok, root / split)
    return root, tok


def test_train_eval_generate(tmp_path, data):
    root, tok = data
    run = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
run: {{name: cli, out_dir: {run}, seed: 1}}
model: {{vocab_size: 384, dim: 32, n_layers: 2, n_heads: 4, ffn_dim: 64, max_seq_len: 32}}
data:
  train: [{{path: {root / "train"}}}]
  valid: [{{path: {root / "valid"}}}]
  seq_len: 32
  tokenizer: {tok}
batch: {{global_tokens: 256, micro_batch: 4}}
optim: {{lr: 0.01}}
schedule: {{kind: cosine, warmup_steps: 2}}
train: {{steps: 100}}
checkpoint: {{interval: 4, keep_last: 2}}
logging: {{log_interval: 2, progress: true}}
eval: {{interval: 4, max_batches: 2}}
export: {{hf_dir: {tmp_path / "hf"}}}
"""
    )
    done = _densa("train", str(recipe), "--set", "train.steps=8")
    assert done.returncode == 0, done.stderr[-4000:]
    assert [s for s, _ in complete_checkpoints(run)] == [4, 8]
    assert (run / "recipe.yaml").is_file() and list((run / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6, 8]
    assert {"perf/tokens_per_s", "perf/mfu", "mem/rss_gib", "train/grad_norm"} <= records[
        -1
    ].keys() | records[-2].keys()
    val = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in val] == [4, 8] and val[-1]["val/loss"] < val[0]["val/loss"] + 0.5
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "tokenizer.json").is_file()

    # eval of the run dir (newest checkpoint) and of the exported HF folder agree
    args = ["--data", str(root / "valid"), "--seq-len", "32", "--max-batches", "2"]
    from_run = _densa("eval", "--checkpoint", str(run), *args)
    from_hf = _densa("eval", "--checkpoint", str(tmp_path / "hf"), *args)
    assert from_run.returncode == 0 and from_hf.returncode == 0, (
        from_run.stderr[-3000:] + from_hf.stderr[-3000:]
    )
    a, b = json.loads(from_run.stdout), json.loads(from_hf.stdout)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["ppl"] == pytest.approx(math.exp(a["loss"]))
    assert a["tokens"] == 2 * 4 * 32

    out = _densa(
        "generate",
        "--model",
        str(tmp_path / "hf"),
        "--prompt",
        "the quick",
        "--max-new-tokens",
        "6",
        "--temperature",
        "0",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("the quick")

    # KV policies: `full` decodes exactly like plain greedy; an evicting policy stays within budget + chunk.
    prompt = " ".join(WORDS * 2)
    common = ["generate", "--model", str(tmp_path / "hf"), "--prompt", prompt, "--max-new-tokens", "6"]
    greedy = _densa(*common, "--temperature", "0")
    full = _densa(*common, "--kv-policy", "full", "--chunk", "8", "--temperature", "0")
    assert greedy.returncode == 0 and full.returncode == 0, greedy.stderr[-2000:] + full.stderr[-2000:]
    assert full.stdout == greedy.stdout
    window = _densa(*common, "--kv-policy", "streaming_llm", "--budget", "12", "--chunk", "4")
    assert window.returncode == 0, window.stderr[-2000:]
    peak = int(window.stderr.split("peak ")[1].split()[0])
    assert 0 < peak <= 12 + 4 and "greedily" in window.stderr
    no_heads = _densa(*common, "--kv-policy", "locret", "--budget", "12", "--chunk", "4")
    assert no_heads.returncode == 1 and "locret" in no_heads.stderr and "Traceback" not in no_heads.stderr


def test_cli_errors_are_one_line(tmp_path):
    bad = _densa("eval", "--checkpoint", str(tmp_path / "missing"), "--data", str(tmp_path / "x"))
    assert bad.returncode == 1 and "densa eval: error:" in bad.stderr and "Traceback" not in bad.stderr
    missing = _densa("train", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "densa train: error:" in missing.stderr
