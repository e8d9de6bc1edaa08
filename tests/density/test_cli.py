"""`densa density eval` and `densa density law` in-process; the series file and its recipes."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from densa.config.checks import validate
from densa.config.load import load_recipe
from densa.data.sp_train import train_sentencepiece
from densa.data.tokenizer import load_tokenizer
from densa.density import Reference, estimate_density, fit_reference, load_suite, score_suite
from densa.launch.cli import main
from densa.launch.density_series import Budget, load_series, non_embedding, run_config
from densa.models import ModelConfig, Transformer
from densa.models.checkpoint_io import save_transformer
from densa.train.finetune import load_model
from tests.density.test_scoring import write_suite

ROOT = Path(__file__).resolve().parents[2]
SERIES = ROOT / "recipes" / "density" / "series.yaml"


def test_law_command_reports_the_doubling_time(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = tmp_path / "models.csv"
    rows = [
        ("a", "2023-02-24", 0),
        ("b", "2023-06-04", 100),
        ("c", "2024-03-20", 390),
        ("d", "2024-07-03", 495),
    ]
    days = {"a": 0, "b": 100, "c": 390, "d": 495}
    table.write_text(
        "name,date,density\n" + "".join(f"{n},{d},{math.exp(0.007 * days[n] - 2)}\n" for n, d, _ in rows)
    )
    assert main(["density", "law", "--table", str(table), "--plot", str(tmp_path / "law.png")]) == 0
    out = capsys.readouterr().out
    assert "ln ρ_max = 0.00700·t + -2.0000" in out and "R² = 1.000" in out
    assert "doubling time ln2/A = 99.0 days (3.25 months)" in out
    assert (tmp_path / "law.png").stat().st_size > 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("density_eval")
    (root / "corpus.txt").write_text("q: what is two? answer: the answer is 2. sum 1 and 3 is 4.\n" * 200)
    tok = train_sentencepiece([root / "corpus.txt"], root / "tok", vocab_size=320, num_threads=1)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=320, dim=32, n_layers=2, n_heads=2, ffn_dim=64, max_seq_len=128)
    )
    folder = save_transformer(root / "model", model, extra_files=[tok])
    (root / "tasks").mkdir()
    tasks = write_suite(root / "tasks")
    rows = []
    for i, (n, k) in enumerate([(n, k) for n in (2e3, 8e3, 3e4) for k in (5, 10, 20)]):
        loss = 40 * n**-0.3 + 300 * (k * n) ** -0.35
        rows.append({"name": f"r{i}", "N": n, "D": k * n, "loss": loss})
    mid = sorted(r["loss"] for r in rows)[len(rows) // 2]
    for r in rows:  # a sigmoid whose range (-0.1, 1.1) holds every score
        r["score"] = 1.2 / (1 + math.exp(r["loss"] - mid)) - 0.1
    data = fit_reference(rows, d0=1e6, holdout=2)
    data["tokenizer_fingerprint"] = load_tokenizer(tok).fingerprint
    data["tasks_dir"] = str(tasks)
    (root / "reference.json").write_text(json.dumps(data))
    return folder, root / "reference.json"


def test_eval_gives_a_density_with_an_interval(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    folder, reference = setup
    assert main(["density", "eval", str(folder), "--reference", str(reference), "--n-boot", "20"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    data = json.loads(reference.read_text())
    model = load_model(folder)  # recomputed here, outside the command
    s = score_suite(model, load_tokenizer(folder / "tokenizer.model").encode, load_suite(data["tasks_dir"]))
    n = model.config.num_params(include_embeddings=False)
    want = estimate_density(Reference.from_dict(data), n, s.loss, s.score, n_boot=20)
    assert out["n_params"] == n and out["loss"] == pytest.approx(s.loss, rel=1e-9)
    assert out["rho"] == pytest.approx(want.rho, rel=1e-9)
    lo, hi = out["rho_interval"]
    assert lo <= hi and math.isfinite(lo) and math.isfinite(hi)


def test_eval_refuses_a_different_tokenizer(setup: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    folder, reference = setup
    data = json.loads(reference.read_text())
    data["tokenizer_fingerprint"] = "0" * 64
    other = tmp_path / "reference.json"
    other.write_text(json.dumps(data))
    assert main(["density", "eval", str(folder), "--reference", str(other)]) == 1
    err = capsys.readouterr().err
    assert "differs from the one the reference series and its tasks were scored with (000000000000)" in err
    assert "per-token conditional losses are not comparable" in err


def test_series_file_and_recipes(tmp_path: Path) -> None:
    series = load_series(SERIES)
    grid = (409600, 819200, 1638400, 3276800)
    assert series.runs[4:8] == tuple(("ref_s1.yaml", Budget(tokens=t)) for t in grid)
    cfg = run_config(series, "ref_s1.yaml", Budget(tokens=409600))
    assert non_embedding(cfg) == 21664 and cfg.train.steps == 409600 // 4096 == 100
    assert (cfg.schedule.kind, cfg.checkpoint.resume, cfg.run.name) == ("wsd", "auto", "ref_s1_D410k")
    assert cfg.run.out_dir == "runs/density/reference/ref_s1_D410k" and cfg.checkpoint.interval == 25
    sizes = [non_embedding(run_config(series, r, Budget(1.0))) for r in series.recipes]
    assert sizes == sorted(sizes) == [10848, 21664, 70608, 164416, 317680]
    assert series.d0 == 1638400 and min(grid) < series.d0 < max(grid)  # D0 inside the grid
    assert dataclasses.replace(series, d0_tokens=None).d0 == series.d0_multiple * sizes[-1]
    for path in sorted(SERIES.parent.glob("ref_*.yaml")) + [SERIES.parent / "base.yaml"]:
        validate(load_recipe(path), 1, source=path.name)
    shutil.copy(SERIES, tmp_path / "series.yaml")
    (tmp_path / "bad.yaml").write_text("recipes: [a.yaml]\n")
    with pytest.raises(Exception, match=r"bad.yaml: not a density series file \(KeyError: 'multiples'\)"):
        load_series(tmp_path / "bad.yaml")


def test_series_multiples_and_per_size_budgets(tmp_path: Path) -> None:
    """The paper's D = k·N budgets, a size's own budgets, and a file that gives both kinds."""
    for name in ("ref_s0.yaml", "ref_s1.yaml", "base.yaml"):
        shutil.copy(SERIES.parent / name, tmp_path / name)
    (tmp_path / "k.yaml").write_text(
        "recipes: [ref_s0.yaml, {recipe: ref_s1.yaml, tokens: [8192]}]\nmultiples: [5, 10]\n"
        "out_dir: runs/k\nd0_multiple: 2\n"
    )
    series = load_series(tmp_path / "k.yaml")
    assert series.runs == (
        ("ref_s0.yaml", Budget(multiple=5.0)),
        ("ref_s0.yaml", Budget(multiple=10.0)),
        ("ref_s1.yaml", Budget(tokens=8192)),
    )
    cfg = run_config(series, "ref_s0.yaml", Budget(multiple=5.0))
    assert cfg.train.steps == math.ceil(5 * 10848 / 4096) == 14 and cfg.run.name == "ref_s0_x5"
    assert run_config(series, "ref_s1.yaml", Budget(tokens=8192)).train.steps == 2
    assert series.d0 == 2 * 21664  # d0_multiple × the largest size
    both = "recipes: [ref_s0.yaml]\nmultiples: [5]\ntokens: [8192]\nout_dir: x\n"
    (tmp_path / "both.yaml").write_text(both)
    with pytest.raises(Exception, match=r"both.yaml: not a density series file \(ValueError: series: give"):
        load_series(tmp_path / "both.yaml")


def test_eval_runs_an_moe_folder_at_its_top_k(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An MoE folder is scored with its routing, and N counts the parameters a token activates."""
    from densa.sparse_moe.inference import load_moe, moefy, save_moe

    folder, reference = setup
    model = load_model(folder)
    layouts = moefy(model, num_experts=4, top_k=1)
    moe = save_moe(
        tmp_path / "moe", model, layouts, add_files=lambda d: shutil.copy(folder / "tokenizer.model", d)
    )
    assert (
        main(["density", "eval", str(moe), "--reference", str(reference), "--n-boot", "20", "--via", "loss"])
        == 0
    )
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    cfg = model.config  # dim 32, 2 layers, SwiGLU d_ffn 64: 3·32·64 expert weights per layer, 1 of 4 active
    routers = sum(p.numel() for n, p in model.named_parameters() if "router" in n)
    assert out["n_params"] == cfg.num_params(include_embeddings=False) + routers - 2 * 3 * 32 * 64 * 3 // 4
    data = json.loads(reference.read_text())
    tasks, encode = load_suite(data["tasks_dir"]), load_tokenizer(folder / "tokenizer.model").encode
    routed, dense = score_suite(load_moe(moe), encode, tasks), score_suite(load_model(folder), encode, tasks)
    assert (
        out["loss"] == pytest.approx(routed.loss, rel=1e-9) and abs(routed.loss - dense.loss) > 1e-5
    )  # top-1 of 4 changes it
