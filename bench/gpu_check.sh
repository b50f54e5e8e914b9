#!/usr/bin/env bash
# GPU checks in one call of the device tool; results under $OUT.
#
#     bash bench/gpu_check.sh quick              # THE first call: the headline table (<= 8 min)
#     bash bench/gpu_check.sh quick --dry-run    # the same code path on CPU (~1 min): run it first
#     bash bench/gpu_check.sh                    # the long sections (each needs its own call)
#
# Before a GPU session, run `bash bench/gpu_prepare.sh` here and carry [".whl", ".data", ".ckpt"]:
# the wheels the GPU machine lacks (pytorch-crf, seqeval), the data and an fp16 copy of the
# MiniLM checkpoint. Then, with the device tool:
#     run(command="bash bench/gpu_check.sh quick", carry=[".whl", ".data", ".ckpt"], timeout_s=540)
#
# quick: at most 8 minutes wall on a fresh H100/H200 machine, Triton compilation included:
#   1. device name, torch / CUDA / triton / transformers versions (device.txt);
#   2. every CUDA-marked test, `pytest -m gpu`, capped at TESTS_TIMEOUT s (default 150; at the
#      cap pytest is interrupted and reports what ran; a failing test is reported, the script
#      goes on) -> tests.log, tests.xml;
#   3. bench/gpu_quick.py: ONE table with every headline figure, each beside its baseline in the
#      same run (end-to-end tagger tokens/s and x vs transformers + pytorch-crf eager / compiled;
#      the tagger's host pipeline: GPU-busy fraction, end-to-end tokens/s, host us/text vs
#      tokenizers.encode_batch for 1, 2 and all threads; nertron.pipeline vs transformers.pipeline;
#      bert-base encoder fraction of dense bf16 peak; CRF decode / forward us and x vs
#      pytorch-crf; pooling fraction of HBM bandwidth; the measured ceilings) -> quick.log,
#      quick.md, quick.json. Its soft budget is what the tests left of QUICK_TOTAL s (default
#      460; 120..400 s; QUICK_BUDGET=N fixes it), its hard cap 30 s more; QUICK_ARGS adds
#      options (e.g. --no-compile).
#   Files under $OUT: exactly QUICK_FILES below (6; the device tool returns at most 8).
# quick --dry-run: CPU, tiny shapes, kernels in Triton's interpreter (TRITON_INTERPRET=1),
#   wall-clock timing, `pytest --collect-only -m gpu` instead of the GPU tests; the same files,
#   under $OUT or a new temporary folder. Its figures are not measurements.
#
# Without `quick`: the long sections, one per component (SECTIONS, default all; each takes
# minutes, so split them over 10-minute device calls, e.g. SECTIONS=tests, then
# SECTIONS="crf encoder", then SECTIONS=report); results under ${OUT:-bench/results}:
#     CRF_QUICK=1 bash bench/gpu_check.sh                  # CRF: targets + bandwidth only, no grid
#     REPORT_ARGS=--no-compile bash bench/gpu_check.sh     # options for bench/report.py
#     SECTIONS="tests encoder" bash bench/gpu_check.sh     # a subset of: tests crf encoder report
#
# A failing section is reported and the script goes on; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=sections
DRY=0
for arg in "$@"; do
    case "$arg" in
        quick) MODE=quick ;;
        --dry-run) DRY=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "bench/gpu_check.sh: unknown argument '$arg' (quick, --dry-run)" >&2; exit 2 ;;
    esac
done
if [ "$DRY" = 1 ] && [ "$MODE" != quick ]; then
    echo "bench/gpu_check.sh: --dry-run goes with quick: bash bench/gpu_check.sh quick --dry-run" >&2
    exit 2
fi
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH=.
export PYTHONUNBUFFERED=1
if [ "$MODE" = quick ]; then
    if [ -n "${OUT:-}" ]; then RESULTS="$OUT"
    elif [ "$DRY" = 1 ]; then RESULTS="$(mktemp -d "${TMPDIR:-/tmp}/nertron-quick.XXXXXX")"
    else RESULTS=bench/results/quick
    fi
    # Everything quick writes under $RESULTS (the device tool returns at most 8 files).
    QUICK_FILES=(device.txt tests.log tests.xml quick.log quick.md quick.json)
    if [ "$DRY" = 1 ]; then
        export TRITON_INTERPRET=1  # before any nertron kernel is imported (read at decoration)
    fi
else
    RESULTS="${OUT:-bench/results}"
fi
mkdir -p "$RESULTS"
FAILED=()
SECTIONS="${SECTIONS:-tests crf encoder report}"
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
START=$SECONDS
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    SITE="$(mktemp -d "${TMPDIR:-/tmp}/nertron-site.XXXXXX")"
    trap 'rm -rf "$SITE"' EXIT
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:$SITE" || FAILED+=("wheels (.whl): pip install failed")
fi
[ -d .data ] && export NERTRON_DATA="$PWD/.data"
[ -d .ckpt ] && export NERTRON_CHECKPOINT="$PWD/.ckpt"

section() { echo; echo "=================== $* ==================="; }
run() {  # run NAME CMD...: log to $RESULTS/NAME.log, remember failures
    local name=$1; shift
    echo "+ $*"
    "$@" 2>&1 | tee "$RESULTS/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || FAILED+=("$name (rc=$rc$( [ "$rc" -eq 124 ] && echo ': stopped at its time cap'))")
    return 0
}
capped() {  # capped SECONDS CMD...: SIGINT at the cap (pytest / gpu_quick.py report what ran), KILL 20 s later
    local limit=$1; shift
    if command -v timeout >/dev/null; then timeout -s INT -k 20 "$limit" "$@"; else "$@"; fi
}

"$PY" - <<'PY' | tee "$RESULTS/device.txt"
import datetime, importlib.metadata as md, os, shutil, subprocess, torch, triton
def v(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "missing"
print("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", torch.cuda.get_device_name(), f"(sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB)")
else:
    print("device NO CUDA DEVICE")
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__,
      "transformers", v("transformers"), "pytorch-crf", v("pytorch-crf"), "seqeval", v("seqeval"))
print("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "unset"), "NERTRON_DATA",
      os.environ.get("NERTRON_DATA", "unset"), "NERTRON_CHECKPOINT", os.environ.get("NERTRON_CHECKPOINT", "unset"))
if shutil.which("nvidia-smi"):
    q = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit"
    r = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True)
    print("nvidia-smi", r.stdout.strip() or r.stderr.strip())
PY

# ------------------------------------------------------------------ quick: one call, one table
if [ "$MODE" = quick ]; then
    if [ "$DRY" = 1 ]; then
        section "tests (dry run): collect the gpu-marked tests only"
        run tests capped "${TESTS_TIMEOUT:-120}" "$PY" -m pytest --collect-only -q -m gpu -p no:cacheprovider \
            --junitxml "$RESULTS/tests.xml"
        section "headline table (dry run: CPU, Triton interpreter, tiny shapes; not measurements)"
        run quick capped "$(( ${QUICK_BUDGET:-120} + 30 ))" "$PY" bench/gpu_quick.py --dry-run --out "$RESULTS" \
            --budget-s "${QUICK_BUDGET:-120}"
    else
        section "tests: pytest -m gpu (capped at ${TESTS_TIMEOUT:-150} s)"
        PER_TEST=()
        "$PY" -c "import pytest_timeout" 2>/dev/null && PER_TEST=(--timeout "${TEST_TIMEOUT:-90}")
        run tests capped "${TESTS_TIMEOUT:-150}" "$PY" -m pytest -m gpu -q -rfEs --durations=15 -p no:cacheprovider \
            --junitxml "$RESULTS/tests.xml" ${PER_TEST[@]+"${PER_TEST[@]}"}
        # The table gets what the tests left of QUICK_TOTAL (default 460 s), 120..400 s, unless QUICK_BUDGET is set.
        budget=${QUICK_BUDGET:-$(( ${QUICK_TOTAL:-460} - (SECONDS - START) - 40 ))}
        [ "$budget" -lt 120 ] && budget=120
        [ "$budget" -gt 400 ] && budget=400
        section "headline table: bench/gpu_quick.py (soft budget $budget s, hard cap $((budget + 30)) s)"
        # shellcheck disable=SC2086
        run quick capped "$((budget + 30))" "$PY" bench/gpu_quick.py --out "$RESULTS" --budget-s "$budget" ${QUICK_ARGS:-}
    fi
    section "summary ($((SECONDS - START)) s wall)"
    for f in "${QUICK_FILES[@]}"; do
        [ -f "$RESULTS/$f" ] || { echo "missing: $RESULTS/$f"; FAILED+=("missing $f"); }
    done
    count=$(find "$RESULTS" -type f | wc -l)
    echo "$count files under $RESULTS: $(cd "$RESULTS" && find . -type f | sed 's|^\./||' | sort | tr '\n' ' ')"
    if [ "$count" -gt 8 ]; then
        echo "more than 8 files under $RESULTS: the device tool returns at most 8"
        FAILED+=("too many files ($count) under $RESULTS")
    fi
    [ "$DRY" = 1 ] && echo "DRY RUN: the figures in $RESULTS/quick.md are not measurements"
    if [ ${#FAILED[@]} -eq 0 ]; then
        echo "quick: all steps passed; results in $RESULTS"
        exit 0
    fi
    printf 'FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi

# ------------------------------------------------------------------ the whole test suite on CUDA
if want tests; then
section "tests: every test, kernels compiled for the GPU (gpu-marked ones included)"
run all_tests "$PY" -m pytest -q -rs -x --durations=20 -p no:cacheprovider --junitxml "$RESULTS/tests.xml"
fi

# ------------------------------------------------------------------ CRF (issue 3)
if want crf; then
section "CRF: GPU-marked tests"
run crf_gpu_tests "$PY" -m pytest -m gpu tests/test_crf.py tests/test_crf_kernels.py -q -rs
section "CRF: all CRF tests, kernels compiled for the GPU"
run crf_all_tests "$PY" -m pytest tests/test_crf.py tests/test_crf_kernels.py -q
section "CRF: do_bench (targets, bandwidth, grid)"
if [ "${CRF_QUICK:-0}" = "1" ]; then
    run crf_do_bench "$PY" bench/crf_gpu.py --out "$RESULTS" --quick
else
    run crf_do_bench "$PY" bench/crf_gpu.py --out "$RESULTS"
fi
section "CRF: pytest-benchmark, nertron vs pytorch-crf"
if [ "${CRF_QUICK:-0}" != "1" ]; then
    run crf_pytest_bench "$PY" -m pytest bench/bench_crf.py -q -p no:cacheprovider \
        --benchmark-json "$RESULTS/crf_gpu_pytest.json"
    run crf_pytest_table "$PY" bench/bench_crf.py table "$RESULTS/crf_gpu_pytest.json" "$RESULTS/crf_gpu_pytest.md"
fi
fi

# ------------------------------------------------------------------ encoder and pooling (issue 4)
if want encoder; then
section "encoder: do_bench grid, nertron fused vs transformers (SDPA) eager / torch.compile"
run encoder_do_bench "$PY" bench/encoder_gpu.py --out "$RESULTS"
section "encoder + pooling: pytest-benchmark"
run encoder_pytest_bench "$PY" -m pytest bench/bench_encoder.py bench/bench_pooling.py -q -p no:cacheprovider \
    --benchmark-json "$RESULTS/encoder_pooling_gpu_pytest.json"
fi

# ------------------------------------------------------------------ benchmark suite (issue 6)
# Every component vs transformers / pytorch-crf (eager and torch.compile), bf16 Triton path,
# do_bench: report_cuda.md / .json / *.png under $RESULTS/report. REPORT_ARGS adds options,
# e.g. REPORT_ARGS="--sections encoder,e2e" or "--no-compile".
if want report; then
section "benchmark suite: bench/report.py --device cuda"
# shellcheck disable=SC2086
run bench_report "$PY" bench/report.py --device cuda --out "$RESULTS/report" ${REPORT_ARGS:-}
fi

section "summary"
if [ ${#FAILED[@]} -eq 0 ]; then
    echo "all sections passed; results in $RESULTS"
else
    printf 'FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
