"""Section ``host``: the tagger's own work outside the model, against the tokenizer's.

A GPU that tags a million sub-tokens a second must be handed ~50,000 CoNLL sentences a second,
tokenised, windowed, batched and padded, and must have its results turned back into entity
objects as fast. This section measures that host work alone: ``Tagger.tag`` on the first 1,500
CoNLL-2003 test sentences (eng.testb, words joined by spaces), four times over as one stream of
6,000 texts (so that the pipeline runs filled, as on a big file), with the model's part (BERT, the
head, Viterbi, the entity boundaries and CRF span scores: ``Tagger._launch``) replaced by a
replay of its recorded results, so what is timed is exactly what the host must do per text
(tokenise in one ``encode_batch_fast`` call per chunk, split words, window, bucket, pad on flat
arrays, read back the packed results, build the ``Entity`` objects). Beside it, in the same
process and interleaved with it, ``tokenizers``' ``Tokenizer.encode_batch`` alone on the same
texts (the same normaliser, pre-tokeniser and WordPiece vocabulary, offsets on, no padding): the
floor any tagger in Python pays. Each thread count runs in its own process, pinned to that many
CPUs (``os.sched_setaffinity``), with ``RAYON_NUM_THREADS`` (the tokenizer's pool) and torch's
threads set to it, and the tagger's default host threads for that many CPUs (from two CPUs up
one worker thread runs the ``tokenizers`` call ahead, the rest runs in the calling thread).

Also measured, with the real model, on the same texts: the share of the wall time that the
model's part takes (on a GPU: the fraction of time the GPU is busy; device-only time = every
batch prepared and on the device beforehand, launched back to back, one synchronisation),
the end-to-end tokens/s, and the cost of writing each result as a JSON line / CoNLL block
(``format_record``) next to the pipeline's host time.

Rows: ``host`` / threads=N; ``x`` is encode_batch's time / the tagger's host time (the
target is at least 1/1.5 = 0.67: host work at most 1.5x the tokenizer's).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from .harness import Bench, error_text, make_row, status_row

TITLE = "Tagger host pipeline (model replayed) vs tokenizers.encode_batch"
OP = "Tagger.tag host work, 1,500 CoNLL sentences x 4"
BASELINE = "tokenizers encode_batch"
COUNT = 1500
PASSES = 4  # the texts this many times over, as one stream: the pipeline runs filled, as on a big file
REPEATS = 7


def texts(count: int = COUNT) -> tuple[list[str], str]:
    """The first ``count`` CoNLL-2003 test sentences as texts (words joined by spaces), or
    synthetic sentences of real CoNLL lengths when the data is missing."""
    from .e2e import conll_sentences, synthetic_sentences

    sentences, source = conll_sentences()
    if sentences is None:
        from nertron import Tagger

        sentences, source = synthetic_sentences(Tagger.load(device="cpu").tokenizer, count), "synthetic"
    return [" ".join(s.words) for s in sentences[:count]], source


def record(tagger, items: list[str]) -> list:
    """Run ``items`` through the real tagger and keep what each ``_launch`` returned, in order."""
    recorded = []
    launch = tagger._launch

    def keep(chunk, b, word_probs):
        pending = launch(chunk, b, word_probs)
        if pending.event is not None:
            pending.event.synchronize()
            pending.event = None
        recorded.append(pending)
        return pending

    tagger._launch = keep
    try:
        tagger.tag(items)
    finally:
        del tagger._launch
    return recorded


def replay(tagger, recorded: list) -> None:
    """Make ``tagger._launch`` hand back ``recorded`` in order (the host-bound tagger)."""
    state = {"next": 0}

    def launch(chunk, b, word_probs):
        pending = recorded[state["next"] % len(recorded)]
        state["next"] += 1
        return pending

    tagger._launch = launch


def _child() -> None:
    """``python -m nertron.bench.host --child N DIR REPEATS``: the host-bound tagger and
    encode_batch with N threads, pinned to N CPUs; prints one JSON line."""
    threads, folder, repeats = int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(threads)
    from nertron import Tagger

    items = json.loads((folder / "texts.json").read_text())
    recorded = torch.load(folder / "recorded.pt", weights_only=False)
    # the default host threads for the CPUs allowed: none on one CPU, else one tokenizer thread
    tagger = Tagger.load(device="cpu")
    replay(tagger, recorded)
    backend = tagger.tokenizer._backend
    tagger.tag(items)  # warm: the character tables, the allocator
    host, encode = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        tagger.tag(items)
        host.append(time.perf_counter() - start)
        start = time.perf_counter()
        backend.encode_batch(items, add_special_tokens=False)
        encode.append(time.perf_counter() - start)
    print(json.dumps({"threads": threads, "cpus": cpus, "host_s": host, "encode_s": encode}))


def _run_child(threads: int, folder: Path, repeats: int) -> dict[str, Any]:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="true")
    done = subprocess.run([sys.executable, "-m", "nertron.bench.host", "--child", str(threads), str(folder), str(repeats)],
                          env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"host worker ({threads} threads) failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def device_share(tagger, items: list[str], repeats: int) -> tuple[dict[str, float], list]:
    """End-to-end seconds, device-only seconds (every batch prepared and on the device first,
    launched back to back, one synchronisation) and their ratio: the fraction of the wall
    time the device is busy (the model's share, on a CPU); and the recorded results of the
    last end-to-end run (``record``)."""
    sync = torch.cuda.synchronize if tagger.device.type == "cuda" else (lambda: None)
    if tagger.device.type == "cuda":
        tagger.tag(items[:256])  # compile and autotune the kernels outside the timing
    full = []
    for _ in range(repeats):
        start = time.perf_counter()
        recorded = record(tagger, items)
        sync()
        full.append(time.perf_counter() - start)
    from nertron.engine.tagger import DEFAULT_CHUNK_SIZE

    chunks = [tagger._prepare(items[i:i + DEFAULT_CHUNK_SIZE], False, tagger.batch_tokens)
              for i in range(0, len(items), DEFAULT_CHUNK_SIZE)]
    for chunk in chunks:
        chunk.batches = [{k: v.to(tagger.device) for k, v in batch.items()} for batch in chunk.batches]
    device = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for chunk in chunks:
            for b in range(len(chunk.batches)):
                tagger._launch(chunk, b, False)
        sync()
        device.append(time.perf_counter() - start)
    tokens = sum(int(chunk.encoded.lengths.sum()) for chunk in chunks)
    rows = sum(len(group) for chunk in chunks for group in chunk.groups)
    batches = sum(len(chunk.groups) for chunk in chunks)
    share = {"full_s": min(full), "device_s": min(device), "busy": min(device) / min(full), "tokens": tokens,
             "tokens_per_s": tokens / min(full), "batches": batches, "rows_per_batch": rows / batches}
    return share, recorded


def output_cost(tagger, items: list[str], recorded: list) -> dict[str, float]:
    """Seconds per text to format every result as a JSON line and as a CoNLL block."""
    from nertron.engine.tagger import format_record

    replay(tagger, recorded)
    try:
        results = list(tagger.tag_lines(items))
    finally:
        del tagger._launch
    cost = {}
    for fmt in ("jsonl", "conll"):
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for text, result in results:
                format_record(text, result, fmt)
            best = min(best, time.perf_counter() - start)
        cost[fmt] = best / len(items)
    return cost


def measure_host(bench: Bench | None = None, thread_counts: list[int] | None = None, count: int = COUNT,
                 repeats: int = REPEATS, passes: int = PASSES) -> dict[str, Any]:
    """Everything this section reports, as one dict: ``count`` texts ``passes`` times over as one
    stream, ``repeats`` timings per thread count (1, 2 and all the CPUs by default)."""
    from nertron import Tagger

    items, source = texts(count)
    items = items * passes
    device = bench.device if bench is not None else "cpu"
    if device == "cuda":  # batches of 128 sentences, as the GPU target is stated
        tagger = Tagger.load(device="cuda", batch_tokens=128 * 512, max_batch_size=128)
        share, _ = device_share(tagger, items, repeats=3)
        cpu_tagger = Tagger.load(device="cpu")
        recorded = record(cpu_tagger, items)
    else:  # one pass each: a CPU pass of the model takes seconds
        cpu_tagger = tagger = Tagger.load(device="cpu")
        share, recorded = device_share(tagger, items, repeats=1)
    fmt = output_cost(cpu_tagger, items, recorded)
    available = len(os.sched_getaffinity(0))
    counts = sorted({1, 2, available} if thread_counts is None else set(thread_counts))
    counts = [n for n in counts if n <= available]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "texts.json").write_text(json.dumps(items))
        torch.save(recorded, Path(folder) / "recorded.pt")
        runs = [_run_child(n, Path(folder), repeats) for n in counts]
    tokens = share["tokens"]
    out = {"source": source, "texts": len(items), "passes": passes, "tokens": tokens, "device": str(tagger.device),
           "device_share": share, "format_s_per_text": fmt, "threads": []}
    for run in runs:
        host, encode = min(run["host_s"]), min(run["encode_s"])
        out["threads"].append({
            "threads": run["threads"], "host_us_per_text": host / len(items) * 1e6,
            "encode_us_per_text": encode / len(items) * 1e6, "host_over_encode": host / encode,
            "host_tokens_per_s": tokens / host, "host_s": run["host_s"], "encode_s": run["encode_s"]})
    one = next((t for t in out["threads"] if t["threads"] == 1), None)
    for t in out["threads"]:
        t["speedup_vs_1"] = one["host_us_per_text"] / t["host_us_per_text"] if one else None
    return out


def section(bench: Bench) -> list[dict]:
    try:  # --quick: a smoke test of the code path
        result = measure_host(bench, [1], 64, 2, 1) if bench.quick else measure_host(bench)
    except Exception as err:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        return [status_row("host", OP, "error", error_text(err), baseline=BASELINE)]
    rows = []
    share = result["device_share"]
    for t in result["threads"]:
        n = t["threads"]
        impls = {
            "nertron": {"ms": t["host_us_per_text"] * result["texts"] * 1e-3,
                        "tokens_per_s": t["host_tokens_per_s"], "us_per_text": t["host_us_per_text"],
                        "speedup_vs_1_thread": t["speedup_vs_1"]},
            BASELINE: {"ms": t["encode_us_per_text"] * result["texts"] * 1e-3,
                       "tokens_per_s": result["tokens"] / (t["encode_us_per_text"] * result["texts"] * 1e-6),
                       "us_per_text": t["encode_us_per_text"]},
        }
        config = dict(threads=n, texts=result["texts"], passes=result["passes"], tokens=result["tokens"],
                      data=result["source"])
        print(f"  host threads={n}: {t['host_us_per_text']:.1f} us/text ({t['host_tokens_per_s']:.4g} tok/s), "
              f"encode_batch {t['encode_us_per_text']:.1f} us/text, host/encode {t['host_over_encode']:.2f}, "
              f"x{t['speedup_vs_1']:.2f} vs 1 thread", flush=True)
        rows.append(make_row("host", OP, "threads", config, impls, BASELINE, tokens=result["tokens"],
                             sentences=result["texts"], device_share=share,
                             format_us_per_text={k: v * 1e6 for k, v in result["format_s_per_text"].items()}))
    print(f"  model share of wall ({result['device']}): {share['busy']:.3f}; end to end "
          f"{share['tokens_per_s']:.4g} tok/s; format jsonl {result['format_s_per_text']['jsonl'] * 1e6:.1f} "
          f"us/text, conll {result['format_s_per_text']['conll'] * 1e6:.1f} us/text", flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child()
        return
    result = measure_host()
    print(json.dumps({k: v for k, v in result.items()}, indent=1, default=str))


if __name__ == "__main__":
    main()
