"""CLI conventions: `densa --version`, `python -m densa`, defaults in every `--help`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from densa import __version__
from densa.launch.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"densa {__version__}\n"


def test_python_dash_m_densa() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "densa", "--version"], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout == f"densa {__version__}\n"


def _help(*path: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([*path, "--help"])
    return " ".join(capsys.readouterr().out.split())  # unwrap argparse's line breaks


def test_help_shows_defaults_once(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("sparsity", "measure", capsys=capsys)
    assert "tokens scored (and calibrated on) (default: 16384)" in text
    assert "--seq-len SEQ_LEN default: 256" in text  # an option without help text still shows it
    assert "allowed perplexity increase in percent (default 1)" in text  # already named: not repeated
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 8)" in _help("sparsity", "predictors", capsys=capsys)
