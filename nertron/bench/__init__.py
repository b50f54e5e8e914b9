"""nertron's benchmark suite, the code behind ``nertron bench``.

- ``nertron.bench.harness``: timing on CPU and GPU, peak memory, ``torch.compile``d baselines,
  result rows, the CoNLL-2003 length-mix sweeps;
- one module per op, each a report section ``section(bench) -> list[dict]`` with its
  workload and baselines: ``crf``, ``pooling``, ``attention``, ``matmul`` (section ``gemm``),
  ``layernorm``, ``encoder``, ``e2e``;
- ``nertron.bench.report``: collects the sections, renders Markdown / JSON / PNG;
  ``main(argv)`` is the command line.

The pytest-benchmark suites ``bench/bench_<op>.py`` of a source checkout reuse each op's
workload and baselines from here.
"""
