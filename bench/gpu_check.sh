#!/usr/bin/env bash
# One call on a GPU machine: the GPU tests and GPU benchmarks, results under ${OUT:-bench/results}.
#
#     bash bench/gpu_check.sh            # everything
#     CRF_QUICK=1 bash bench/gpu_check.sh   # CRF: targets + bandwidth only, no grid
#     REPORT_ARGS=--no-compile bash bench/gpu_check.sh   # options for bench/report.py
#     SECTIONS="tests encoder" bash bench/gpu_check.sh    # a subset: tests crf encoder report
#
# The device tool limits a call to 10 minutes: split the sections over calls when they do not
# fit (e.g. SECTIONS=tests, then SECTIONS="crf encoder", then SECTIONS=report).
# Before the session, run bench/gpu_prepare.sh here and carry [".whl", ".data", ".ckpt"]:
# the wheels the GPU machine lacks, the data and an fp16 copy of the MiniLM checkpoint.
#
# One section per component. A failing section is reported and the script goes on; the exit
# status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
export PYTHONUNBUFFERED=1
RESULTS="${OUT:-bench/results}"
mkdir -p "$RESULTS"
FAILED=()
SECTIONS="${SECTIONS:-tests crf encoder report}"
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
[ -d .data ] && export NERTRON_DATA="$PWD/.data"
[ -d .ckpt ] && export NERTRON_CHECKPOINT="$PWD/.ckpt"

section() { echo; echo "=================== $* ==================="; }
run() {  # run NAME CMD...: log to $RESULTS/NAME.log, remember failures
    local name=$1; shift
    echo "+ $*"
    "$@" 2>&1 | tee "$RESULTS/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || FAILED+=("$name (rc=$rc)")
}

python - <<'PY' | tee "$RESULTS/device.txt"
import datetime, torch, triton
print("date", datetime.datetime.now(datetime.timezone.utc).isoformat())
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)
PY

# ------------------------------------------------------------------ the whole test suite on CUDA
if want tests; then
section "tests: every test, kernels compiled for the GPU (gpu-marked ones included)"
run all_tests python -m pytest -q -rs -x --durations=20 -p no:cacheprovider --junitxml "$RESULTS/tests.xml"
fi

# ------------------------------------------------------------------ CRF (issue 3)
if want crf; then
section "CRF: GPU-marked tests"
run crf_gpu_tests python -m pytest -m gpu tests/test_crf.py tests/test_crf_kernels.py -q -rs
section "CRF: all CRF tests, kernels compiled for the GPU"
run crf_all_tests python -m pytest tests/test_crf.py tests/test_crf_kernels.py -q
section "CRF: do_bench (targets, bandwidth, grid)"
if [ "${CRF_QUICK:-0}" = "1" ]; then
    run crf_do_bench python bench/crf_gpu.py --out "$RESULTS" --quick
else
    run crf_do_bench python bench/crf_gpu.py --out "$RESULTS"
fi
section "CRF: pytest-benchmark, nertron vs pytorch-crf"
if [ "${CRF_QUICK:-0}" != "1" ]; then
    run crf_pytest_bench python -m pytest bench/bench_crf.py -q -p no:cacheprovider \
        --benchmark-json "$RESULTS/crf_gpu_pytest.json"
    run crf_pytest_table python bench/bench_crf.py table "$RESULTS/crf_gpu_pytest.json" "$RESULTS/crf_gpu_pytest.md"
fi
fi

# ------------------------------------------------------------------ encoder and pooling (issue 4)
if want encoder; then
section "encoder: do_bench grid, nertron fused vs transformers (SDPA) eager / torch.compile"
run encoder_do_bench python bench/encoder_gpu.py --out "$RESULTS"
section "encoder + pooling: pytest-benchmark"
run encoder_pytest_bench python -m pytest bench/bench_encoder.py bench/bench_pooling.py -q -p no:cacheprovider \
    --benchmark-json "$RESULTS/encoder_pooling_gpu_pytest.json"
fi

# ------------------------------------------------------------------ benchmark suite (issue 6)
# Every component vs transformers / pytorch-crf (eager and torch.compile), bf16 Triton path,
# do_bench: report_cuda.md / .json / *.png under $RESULTS/report. REPORT_ARGS adds options,
# e.g. REPORT_ARGS="--sections encoder,e2e" or "--no-compile".
if want report; then
section "benchmark suite: python bench/report.py --device cuda"
# shellcheck disable=SC2086
run bench_report python bench/report.py --device cuda --out "$RESULTS/report" ${REPORT_ARGS:-}
fi

section "summary"
if [ ${#FAILED[@]} -eq 0 ]; then
    echo "all sections passed; results in $RESULTS"
else
    printf 'FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
