"""``python bench/crf_gpu.py [--out DIR] [--quick] [--smoke]`` = ``python bench/bench_crf.py gpu ...``:
the CRF's do_bench targets and kernel bandwidth on a GPU (kept for bench/gpu_check.sh)."""
import sys

from bench_crf import gpu_main

if __name__ == "__main__":
    sys.exit(gpu_main())
