"""`densa generate --kv-policy infllm` and the inference engine's batched path under InfLLM (tiny model)."""

from __future__ import annotations

import random
import re
import shutil

import pytest

from densa.inference import GenerationConfig, InferenceEngine
from densa.launch.cli import main
from densa.models.checkpoint_io import save_transformer
from tests.inference.conftest import WORDS, tiny_model

PROMPT = " ".join(WORDS * 3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from densa.data.sp_train import train_sentencepiece
    from densa.data.tokenizer import load_tokenizer

    rng = random.Random(0)
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(400))
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sp = train_sentencepiece([corpus], tmp_path_factory.mktemp("sp"), vocab_size=320, num_threads=1)
    folder = save_transformer(
        tmp_path_factory.mktemp("model") / "tiny", tiny_model(load_tokenizer(sp).vocab_size)
    )
    shutil.copy(sp, folder / "tokenizer.model")
    return folder


def generate(capsys, model_dir, *extra: str) -> tuple[int, str, str]:
    argv = ["generate", "--model", str(model_dir), "--prompt", PROMPT, "--max-new-tokens", "8"]
    code = main([*argv, "--temperature", "0", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_infllm_with_a_wide_window_gives_the_greedy_text(model_dir, capsys):
    code, dense, _ = generate(capsys, model_dir)
    assert code == 0 and dense.strip()
    wide = ["--kv-policy", "infllm", "--chunk", "8", "--kv-option", "n_local=128", "--kv-option", "n_init=4"]
    code, out, err = generate(capsys, model_dir, *wide)
    assert code == 0 and out == dense
    assert "0 memory units" in err


def test_infllm_with_a_small_window_reports_its_memory(model_dir, capsys):
    opts = ["n_local=8", "n_init=2", "block_size=4", "topk=2", "repr_topk=2", "exc_block_size=4"]
    extra = ["--kv-policy", "infllm", "--chunk", "8"] + [a for o in opts for a in ("--kv-option", o)]
    code, out, err = generate(capsys, model_dir, *extra)
    assert code == 0 and out.strip()
    found = re.search(r"(\d+) memory units, (\d+) unit loads, (\d+) cache hits, ([0-9.]+) attended", err)
    assert found, err
    units, loads, hits, attended = int(found[1]), int(found[2]), int(found[3]), float(found[4])
    assert units > 0 and loads > 0 and loads + hits > 0 and attended <= 2 + 8 + 2 * 4 + 4 + 4


def test_bad_infllm_option_is_one_line(model_dir, capsys):
    code, _, err = generate(capsys, model_dir, "--kv-policy", "infllm", "--kv-option", "block_size=0")
    assert code == 1 and "block_size must be an integer ≥ 1" in err and "Traceback" not in err


def test_engine_batches_under_infllm():
    engine = InferenceEngine(tiny_model(64))
    prompts = [list(range(1, 40)), list(range(5, 44)), list(range(2, 12))]
    greedy = GenerationConfig(max_new_tokens=5, temperature=0.0, add_bos=False)
    opts = dict(n_init=2, n_local=8, block_size=4, topk=2, repr_topk=2, exc_block_size=4)
    both = engine.generate(prompts, greedy, kv_policy="infllm", kv_chunk=8, kv_options=opts)
    alone = [engine.generate([p], greedy, kv_policy="infllm", kv_chunk=8, kv_options=opts) for p in prompts]
    assert [g.token_ids for g in both.generations] == [a.generations[0].token_ids for a in alone]
    assert len(both.stats.kv) == 2 and both.stats.kv[0].memory["units"] > 0


def test_infllm_ordered_memory_positions_from_the_cli(model_dir, capsys):
    opts = ["n_local=8", "n_init=2", "block_size=4", "topk=2", "repr_topk=2", "exc_block_size=4"]
    extra = ["--kv-policy", "infllm", "--chunk", "8"] + [a for o in opts for a in ("--kv-option", o)]
    code, out, err = generate(capsys, model_dir, *extra, "--kv-option", "memory_positions=ordered")
    assert code == 0 and out.strip() and re.search(r"[1-9]\d* memory units", err), err
    code, _, err = generate(
        capsys, model_dir, "--kv-policy", "infllm", "--kv-option", "memory_positions=sorted"
    )
    assert code == 1 and "memory_positions must be one of ('constant', 'ordered', 'original')" in err
