#!/usr/bin/env bash
# Every GPU check of densa in one script, under 8 minutes on one H200 (issue 19, item 6).
#
#   bash benchmarks/gpu/run_all.sh [--out DIR] [--only STEP,...]      # on a GPU machine
#   bash benchmarks/gpu/run_all.sh --dry-run [--only STEP,...]        # anywhere: each step's CPU check form
#
# Steps, in order, each with its own time limit (all of them together stay under TOTAL_S = 470 s; a step
# gets at most what is left), a failing or timed-out step is recorded and the next one runs:
#   gpu_tests    pytest -m gpu tests/          Triton sparse-FFN and expert kernels vs the fp64 reference,
#                                              bf16 training on CUDA (tests/train/test_bf16_gpu.py)
#   train_mfu    benchmarks/gpu/train_mfu.py   ~1B-parameter densa decoder, bf16 steps: tokens/s and MFU
#   moe_decode   benchmarks/moe_decode/gpu.py  dense vs reference MoE vs Triton expert path, batch 1 and 16
#   sparse_ffn   benchmarks/gpu/sparse_ffn_triton.py --quick   Triton sparse FFN vs cuBLAS dense, batch 1
#   infllm       benchmarks/gpu/infllm.py      the two-stage Triton kernel (+ passkey with INFLLM_MODEL and
#                                              INFLLM_TEXT set: an HF SmolLM2 folder and a long text file)
#   apb          benchmarks/gpu/apb.py         APB / Ring / Star prefill on every visible GPU
#
# Results: each benchmark writes benchmarks/results/NAME_gpu.{json,md} (or moe_decode_gpu, train_mfu_gpu)
# with the device named; this script writes benchmarks/results/gpu_run_all.{json,md} (device, per step:
# status, exit code, seconds, results files) and keeps each step's output in runs/gpu_run_all/NAME.log.
# --out DIR also copies the summary, the logs and the results files this run wrote into DIR.
# --dry-run runs every step's CPU form (pytest --collect-only; the scripts' --dry-run / --smoke under
# TRITON_INTERPRET=1), prints the command the GPU run would use, and writes nothing unless --out is given.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
TOTAL_S=470
DRY=0
OUT=""
ONLY=""
STEPS=(gpu_tests train_mfu moe_decode sparse_ffn infllm apb)

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT="${2:?--out needs a folder}"; shift ;;
        --only) ONLY="${2:?--only needs step names}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run_all.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$ONLY" ]; then
    for s in ${ONLY//,/ }; do
        case " ${STEPS[*]} " in
            *" $s "*) ;;
            *) echo "run_all.sh: --only: unknown step $s (steps: ${STEPS[*]})" >&2; exit 2 ;;
        esac
    done
fi

# name|limit s|GPU command|dry-run command|results files (stems under benchmarks/results)
step_spec() {
    case "$1" in
        gpu_tests) echo "150|$PY -m pytest -q -m gpu tests/|$PY -m pytest -q -m gpu --collect-only tests/|" ;;
        train_mfu) echo "90|$PY benchmarks/gpu/train_mfu.py|$PY benchmarks/gpu/train_mfu.py --dry-run|train_mfu_gpu" ;;
        moe_decode) echo "45|$PY benchmarks/moe_decode/gpu.py|$PY benchmarks/moe_decode/gpu.py --dry-run|moe_decode_gpu" ;;
        sparse_ffn) echo "90|$PY benchmarks/gpu/sparse_ffn_triton.py --quick|TRITON_INTERPRET=1 $PY benchmarks/gpu/sparse_ffn_triton.py --smoke|sparse_ffn_triton_gpu" ;;
        infllm)
            local passkey=""
            if [ -n "${INFLLM_MODEL:-}" ] && [ -n "${INFLLM_TEXT:-}" ]; then
                passkey=" --model $INFLLM_MODEL --text $INFLLM_TEXT --rows 3 --repeats 5"
            fi
            echo "45|$PY benchmarks/gpu/infllm.py$passkey|TRITON_INTERPRET=1 $PY benchmarks/gpu/infllm.py --smoke|infllm_gpu" ;;
        apb) echo "60|$PY benchmarks/gpu/apb.py --lengths 16384 32768 --repeats 2|$PY benchmarks/gpu/apb.py --dry-run|apb_gpu" ;;
    esac
}

# Dry run: the GPU form's script exists and declares every --flag it is given (from its --help), or, for
# pytest, the `gpu` marker is registered. Prints the problem and fails otherwise.
check_gpu_command() {
    local cmd="$1" script flag help
    if [[ "$cmd" == *"-m pytest"* ]]; then
        help="$("$PY" -m pytest --markers tests/ 2>&1)"
        grep -q "@pytest.mark.gpu:" <<< "$help" || { echo "pytest knows no gpu marker"; return 1; }
        return 0
    fi
    script="$(grep -o '[^ ]*\.py' <<< "$cmd" | head -n 1)"
    [ -f "$script" ] || { echo "$script not found"; return 1; }
    help="$("$PY" "$script" --help 2>&1)" || { echo "$script --help failed: $help"; return 1; }
    for flag in $(grep -o -- ' --[a-z][a-z-]*' <<< "$cmd"); do
        grep -q -- "$flag" <<< "$help" || { echo "$script does not accept $flag"; return 1; }
    done
}

LOGS=runs/gpu_run_all
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log "$LOGS/steps.tsv"  # this script's own outputs of an earlier run
START=$(date +%s)
MARK="$LOGS/.started"
touch "$MARK"
if [ "$DRY" = 1 ]; then
    DEVICE="dry run on $(uname -n) (no GPU used)"
else
    DEVICE="$($PY -c 'import torch; from densa.kernels.timing import device_name; print(device_name(torch.device("cuda")) if torch.cuda.is_available() else "")' 2>/dev/null)"
    if [ -z "$DEVICE" ]; then
        echo "run_all.sh: no CUDA device visible to $PY (use --dry-run to check the script without one)" >&2
        exit 2
    fi
fi
echo "run_all.sh: device: $DEVICE"
ROWS="$LOGS/steps.tsv"
: > "$ROWS"
FAILED=0

for name in "${STEPS[@]}"; do
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then continue; fi
    IFS='|' read -r limit gpu_cmd dry_cmd stems <<< "$(step_spec "$name")"
    left=$((TOTAL_S - ($(date +%s) - START)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 5 ]; then
        echo "run_all.sh: $name: skipped, the ${TOTAL_S} s budget is spent"
        printf '%s\tskipped\t-\t0\t%s\t%s\n' "$name" "$stems" "$gpu_cmd" >> "$ROWS"
        FAILED=1
        continue
    fi
    cmd="$gpu_cmd"
    if [ "$DRY" = 1 ]; then
        cmd="$dry_cmd"
        if ! problem="$(check_gpu_command "$gpu_cmd")"; then
            echo "run_all.sh: $name: the GPU command would fail: $problem"
            printf '%s\tfailed\t2\t0\t%s\t%s\n' "$name" "$stems" "$gpu_cmd" >> "$ROWS"
            FAILED=1
            continue
        fi
    fi
    echo "run_all.sh: $name (limit ${limit} s): $cmd"
    [ "$DRY" = 1 ] && echo "run_all.sh: $name on a GPU: $gpu_cmd"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" bash -c "$cmd" > "$LOGS/$name.log" 2>&1
    rc=$?
    secs=$(($(date +%s) - t0))
    case "$rc" in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    [ "$status" = ok ] || FAILED=1
    echo "run_all.sh: $name: $status (exit $rc, ${secs} s); log $LOGS/$name.log"
    [ "$status" = ok ] || tail -n 15 "$LOGS/$name.log" | sed "s/^/    $name| /"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" "$stems" "$cmd" >> "$ROWS"
done

# Summary: JSON + markdown (results files listed when this run wrote them).
"$PY" - "$ROWS" "$DEVICE" "$DRY" "$MARK" "$((($(date +%s) - START)))" "$OUT" <<'PYEOF'
import json, os, shutil, sys
from pathlib import Path

rows_path, device, dry, mark, total, out = sys.argv[1:7]
since = Path(mark).stat().st_mtime
results = Path("benchmarks/results")
steps = []
for line in Path(rows_path).read_text().splitlines():
    name, status, rc, secs, stems, cmd = line.split("\t")
    files = [str(results / f"{stems}.{ext}") for ext in ("json", "md")
             if stems and (results / f"{stems}.{ext}").exists()
             and (results / f"{stems}.{ext}").stat().st_mtime >= since]
    steps.append({"step": name, "status": status, "exit_code": None if rc == "-" else int(rc),
                  "seconds": int(secs), "command": cmd, "results": files})
summary = {"benchmark": "gpu_run_all", "device": device, "dry_run": dry == "1",
           "total_seconds": int(total), "steps": steps}
md = [f"# GPU run_all on {device}", "", f"Total {total} s (budget 470 s).", "",
      "| step | status | exit | seconds | results |", "| --- | --- | --- | --- | --- |"]
md += [f"| {s['step']} | {s['status']} | {s['exit_code']} | {s['seconds']} | {', '.join(s['results'])} |"
       for s in steps]
text = "\n".join(md) + "\n"
print(text)
targets = [] if dry == "1" else [results]
if out:
    targets.append(Path(out))
for folder in targets:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu_run_all.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "gpu_run_all.md").write_text(text)
if out:
    for s in steps:
        for f in s["results"]:
            shutil.copy2(f, out)
    shutil.copytree(os.path.dirname(rows_path), Path(out) / "logs", dirs_exist_ok=True)
PYEOF
rm -f "$MARK"
exit "$FAILED"
