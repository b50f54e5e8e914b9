"""The benchmark suite: every nertron component against the baseline a user would otherwise
use, measured in the same run on whatever device is there, written as a Markdown report, a
JSON file and PNG plots. This module collects the sections (``nertron.bench.<op>.section``)
and renders them; the timing lives in ``nertron.bench.harness``.

    nertron bench                                # the device there is (cuda if present, else cpu)
    nertron bench --quick --out /tmp/r           # tiny grid: CPU/CI smoke test
    nertron bench --sections crf,e2e             # some sections only
    python bench/report.py ...                   # the same, from a source checkout

Sections (rows: nertron, its baseline, the baseline under ``torch.compile``): ``crf``,
``pooling``, ``attention``, ``gemm`` (module ``nertron.bench.matmul``), ``layernorm``,
``encoder``, ``e2e``, ``pipeline``, ``host``; each module's docstring says what it compares.

Ratio (``x``) = baseline median time / nertron median time: above 1, nertron is faster.
Tokens/s count real (non-padding) positions: sub-tokens for the encoder, attention, GEMM,
LayerNorm, pooling and the tagger, words (tagged positions) for the CRF.

Outputs under ``--out`` (default ``bench/results``): ``report_<device>.md``,
``report_<device>.json`` (device, versions, date, every row with its config and the raw
quantiles) and ``report_<device>_<section>.png``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from nertron.engine.files import open_atomic

from . import attention, crf, e2e, encoder, host, layernorm, matmul, pipeline, pooling
from .harness import Bench, dtype_name, error_text, status_row

# section name (the --sections value and the rows' "section") -> its module
SECTIONS = {"crf": crf, "pooling": pooling, "attention": attention, "gemm": matmul, "layernorm": layernorm,
            "encoder": encoder, "e2e": e2e, "pipeline": pipeline, "host": host}
SECTION_TITLES = {name: module.TITLE for name, module in SECTIONS.items()}


def environment(bench: Bench) -> dict[str, Any]:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    if bench.cuda:
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return {
        "device": bench.device,
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": version("triton"),
        "transformers": version("transformers"),
        "pytorch-crf": version("pytorch-crf"),
        "nertron": version("nertron"),
        "dtype": dtype_name(bench.dtype),
        "nertron_path": "Triton kernels (backend='auto')" if bench.cuda else "PyTorch reference path",
        "timing": bench.timing_method,
        "memory": bench.memory_method,
        "quick": bench.quick,
        "grid": {k: (sorted(v) if isinstance(v, set) else v) for k, v in bench.grid.items()},
    }


def _fmt(value: float | None, spec: str = "{:.3g}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return spec.format(value)


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _impl_cell(result: dict | None) -> str:
    if not result:
        return "-"
    if "error" in result:
        text = result["error"]
        return "error: " + (text[:70] + "..." if len(text) > 70 else text).replace("|", "/").replace("\n", " ")
    return f"{result['ms']:.3g} [{result['p20_ms']:.3g}, {result['p80_ms']:.3g}]"


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return statistics.geometric_mean(values) if values else None


def headline(rows: list[dict]) -> list[dict]:
    """Per (section, op): geometric mean ratio vs each baseline over the rows that have it."""
    groups: dict[tuple, dict] = {}
    for row in rows:
        if not row.get("ratios"):
            continue
        group = groups.setdefault((row["section"], row["op"]), {})
        for impl, ratio in row["ratios"].items():
            group.setdefault(impl, []).append(ratio)
    return [dict(section=s, op=o, ratios={impl: dict(geomean=geomean(v), min=min(v), max=max(v), rows=len(v))
                                          for impl, v in g.items()})
            for (s, o), g in groups.items()]


def markdown(env: dict, rows: list[dict], sections: list[str], plots: dict[str, str]) -> str:
    lines = [
        f"# nertron benchmark report: {env['device']} ({env['device_name']})",
        "",
        f"Run {env['date']}; python {env['python']}, torch {env['torch']}, triton {env['triton']}, "
        f"transformers {env['transformers']}, pytorch-crf {env['pytorch-crf']}; "
        f"{env['cpu_count']} CPU cores, torch threads {env['torch_threads']}.",
        "",
        f"- nertron: {env['nertron_path']}, {env['dtype']}; baselines in the same dtype, same inputs, same run.",
        f"- Timing: {env['timing']}. Cells give the median ms [p20, p80].",
        f"- Peak memory: {env['memory']}.",
        "- `x` = baseline median time / nertron median time (above 1: nertron is faster); for nertron's "
        "other entry points (`nertron Tagger.tag_words`): the main baseline's time / theirs.",
        "- Tokens/s count real (non-padding) positions: sub-tokens, words for the CRF. `conll`: the "
        "batch's lengths are drawn from the CoNLL-2003 train sub-token length distribution; a number: "
        "every sequence has that length.",
        "- `+compile`: the baseline under `torch.compile(dynamic=False)`, measured at one point per sweep "
        "(compile time, the first call, in the JSON as `compile_s`); `nertron compiled`: nertron under "
        "`torch.compile(dynamic=True)` at the same points (compile times listed at the end).",
    ]
    if env["device"] == "cpu":
        lines.append("- CPU timings come from a shared machine; expect noise of tens of percent on single rows.")
    if env["quick"]:
        lines.append("- **--quick**: a tiny smoke-test grid; these numbers say nothing about speed.")
    lines += ["", "## Summary (geometric mean of `x` over each op's rows)", "",
              "| section | op | comparison | x (geomean) | min..max | rows |", "|---|---|---|---:|---:|---:|"]
    baselines = {(r["section"], r["op"]): r["baseline"] for r in rows}
    for item in headline(rows):
        for impl, stats in item["ratios"].items():
            what = (f"{impl} vs {baselines[(item['section'], item['op'])]}" if impl.startswith("nertron ")
                    else f"nertron vs {impl}")
            lines.append(f"| {item['section']} | {item['op']} | {what} | {_fmt(stats['geomean'], '{:.3g}')} | "
                         f"{stats['min']:.3g}..{stats['max']:.3g} | {stats['rows']} |")
    for section in sections:
        srows = [r for r in rows if r["section"] == section]
        lines += ["", f"## {SECTION_TITLES[section]}", ""]
        if section in plots:
            lines += [f"![{section}]({plots[section]})", ""]
        for row in [r for r in srows if r.get("status")]:
            lines.append(f"- **{row['op']}: {row['status']}** — {row.get('note', '')}")
        srows = [r for r in srows if not r.get("status")]
        if not srows:
            continue
        if section == "host":
            lines += host_table(srows)
            continue
        order = list(dict.fromkeys(r["op"] for r in srows))
        srows.sort(key=lambda r: order.index(r["op"]))  # stable: each op's batch sweep, then its length sweep
        impls = []
        for row in srows:
            for name in row["impls"]:
                if name not in impls:
                    impls.append(name)
        baseline = srows[0]["baseline"]
        others = [i for i in impls if i != "nertron"]
        first = srows[0]["config"]
        path = first.get("path", "")
        extra = {"crf": f"K={first.get('K')}", "pooling": f"{first.get('layers')} layers x hidden {first.get('hidden')}",
                 "attention": f"{first.get('heads')} heads x {first.get('head_dim')}",
                 "layernorm": f"hidden {first.get('hidden')}"}.get(section, "")
        lines.append(f"nertron path: {path}; dtype {first.get('dtype')}{'; ' + extra if extra else ''}. "
                     f"Baseline for `x`: {baseline}.")
        if section == "e2e":
            lines.append(f"Data: {first.get('data')}; word batches collated with `NerData.collate` (tokenization "
                         "outside the timing except in the Tagger row); `tags agree` = fraction of words where "
                         "nertron and the baseline decode the same tag (same weights).")
        if section == "pipeline":
            lines.append(f"Data: {first.get('data')}; {first.get('texts')} texts in, entity dicts out "
                         f"(aggregation_strategy={first.get('strategy')!r}, batch_size B); `same output` = both "
                         "returned the same entities (scores within 1e-4).")
        lines.append("")
        header = ["op", "B", "lengths", "T", "tokens", "nertron ms", "nertron tok/s"]
        if section in ("encoder", "e2e", "pipeline"):
            header.append("nertron sent/s")
        for name in others:
            header += [f"{name} ms", f"x ({baseline} / {name})" if name.startswith("nertron ") else f"x {name}"]
        header.append(f"peak MB nertron / {baseline}")
        if section == "e2e":
            header.append("tags agree")
        if section == "pipeline":
            header.append("same output")
        if section in ("attention", "gemm", "layernorm"):
            header.append("max abs diff")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|")
        for row in srows:
            c, ours = row["config"], row["impls"].get("nertron", {})
            cells = [row["op"], str(c.get("B", "")), str(c.get("lengths", "")), str(c.get("T", "")),
                     str(row["tokens"]), _impl_cell(ours), _rate(ours.get("tokens_per_s"))]
            if section in ("encoder", "e2e", "pipeline"):
                cells.append(_rate(ours.get("sentences_per_s")))
            for name in others:
                cells += [_impl_cell(row["impls"].get(name)), _fmt(row["ratios"].get(name), "{:.3g}")]
            base = row["impls"].get(baseline, {})
            cells.append(f"{_fmt(ours.get('peak_mem_mb'), '{:.1f}')} / {_fmt(base.get('peak_mem_mb'), '{:.1f}')}")
            if section == "e2e":
                cells.append(_fmt(row.get("tags_agree"), "{:.3f}"))
            if section == "pipeline":
                cells.append(str(row.get("same_output", "-")))
            if section in ("attention", "gemm", "layernorm"):
                cells.append(_fmt(row.get("max_abs_diff"), "{:.2g}"))
            lines.append("| " + " | ".join(cells) + " |")
    compiles = [(r, n, i["compile_s"]) for r in rows for n, i in r["impls"].items() if i.get("compile_s") is not None]
    if compiles:
        lines += ["", "## torch.compile times (the first call: tracing, compiling, running once)", ""]
        for row, name, seconds in compiles:
            c = row["config"]
            lines.append(f"- {row['section']} / {row['op']} B={c.get('B')} T={c.get('T')} {name}: {seconds:.1f} s")
    errors = [(r, n, i["error"]) for r in rows for n, i in r["impls"].items() if "error" in i]
    if errors:
        lines += ["", "## Errors and skipped measurements", ""]
        for row, name, text in errors:
            c = row["config"]
            lines.append(f"- {row['section']} / {row['op']} B={c.get('B')} T={c.get('T')} {name}: "
                         f"`{text.splitlines()[0][:300] if text else ''}`")
    return "\n".join(lines) + "\n"


def host_table(srows: list[dict]) -> list[str]:
    """The ``host`` section: one line per thread count, then the model's share and output costs."""
    first = srows[0]
    lines = [f"Data: {first['config'].get('data')}; {first['config'].get('texts')} texts, {first['tokens']} sub-tokens. "
             "Host work = `Tagger.tag` with the model's part replayed (see `nertron.bench.host`); best of the "
             "interleaved repeats; each thread count in its own process pinned to that many CPUs.", "",
             "| threads | host us/text | host tok/s | encode_batch us/text | host / encode_batch | "
             "host speed-up vs 1 thread |", "|---:|---:|---:|---:|---:|---:|"]
    for row in srows:
        ours, base = row["impls"]["nertron"], row["impls"][first["baseline"]]
        lines.append(f"| {row['config']['threads']} | {ours['us_per_text']:.1f} | {_rate(ours['tokens_per_s'])} | "
                     f"{base['us_per_text']:.1f} | {ours['us_per_text'] / base['us_per_text']:.2f} | "
                     f"{_fmt(ours.get('speedup_vs_1_thread'), '{:.2f}')} |")
    share, fmt = first.get("device_share", {}), first.get("format_us_per_text", {})
    lines += ["", f"End to end with the model ({share.get('batches')} batches, {_fmt(share.get('rows_per_batch'), '{:.1f}')} "
              f"rows each): {_rate(share.get('tokens_per_s'))} tok/s; the model's part (device-only, inputs "
              f"prepared beforehand) is {_fmt(share.get('busy'), '{:.3f}')} of the wall time (on a GPU: the fraction "
              f"of time the GPU is busy). Writing each result: JSON line {_fmt(fmt.get('jsonl'), '{:.1f}')} us/text, "
              f"CoNLL block {_fmt(fmt.get('conll'), '{:.1f}')} us/text (`format_record`)."]
    return lines


def plot(rows: list[dict], section: str, path: Path, title: str) -> bool:
    """Tokens/s vs batch size and vs sequence length (log scales), one line per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    srows = [r for r in rows if r["section"] == section and not r.get("status") and r["sweep"] in ("batch", "length")]
    ops = list(dict.fromkeys(r["op"] for r in srows))
    if not ops:  # nothing swept over batch size or length (the host section: threads)
        return False
    fig, axes = plt.subplots(len(ops), 2, figsize=(10, 3.0 * len(ops)), squeeze=False)
    for i, op in enumerate(ops):
        for j, (sweep, xlabel) in enumerate((("batch", "batch size (CoNLL-2003 length mix)"),
                                             ("length", "sequence length (fixed batch)"))):
            ax = axes[i][j]
            points = [r for r in srows if r["op"] == op and r["sweep"] == sweep]
            impls = list(dict.fromkeys(n for r in points for n in r["impls"]))
            for name in impls:
                xs, ys = [], []
                for r in points:
                    result = r["impls"].get(name, {})
                    if result.get("tokens_per_s"):
                        xs.append(r["config"]["B"] if sweep == "batch" else r["config"]["lengths"])
                        ys.append(result["tokens_per_s"])
                if xs:
                    style = "o-" if len(xs) > 1 else "s"
                    ax.plot(xs, ys, style, label=name, linewidth=2 if name == "nertron" else 1, markersize=4)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel("tokens/s", fontsize=8)
            ax.set_title(op if len(op) < 60 else op[:57] + "...", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return True


def default_out() -> Path:
    """bench/results of the source checkout nertron runs from, else ./bench/results."""
    checkout = Path(__file__).resolve().parents[2] / "bench"
    return checkout / "results" if checkout.is_dir() else Path("bench") / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nertron bench", description="nertron's benchmark suite: every "
                                     "component vs its baseline, as Markdown, JSON and PNG plots.")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--out", default=str(default_out()),
                        help="output directory (default: bench/results of the source checkout, else of the working directory)")
    parser.add_argument("--quick", action="store_true", help="tiny grid: a smoke test (CPU / CI), not a measurement")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--interpret-kernels", action="store_true",
                        help="CPU only: also run the GPU-only rows' Triton kernels in the interpreter "
                        "(a dry run of the GPU code paths; meaningless timings)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {','.join(SECTIONS)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("nertron bench: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.interpret_kernels:
        if device != "cpu":
            parser.error("--interpret-kernels is for CPU runs")
        if "nertron.kernels" not in sys.modules:
            os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated (first import)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(device, args.quick, not args.no_compile, args.interpret_kernels)
    env = environment(bench)
    stem = f"report_{device.split(':')[0]}"
    print(f"nertron bench: {device} ({env['device_name']}), sections {','.join(sections)} -> {out}/{stem}.*",
          flush=True)
    rows: list[dict] = []
    timings = {}
    for section in sections:
        print(f"== {section}", flush=True)
        t0 = time.perf_counter()
        try:
            rows += SECTIONS[section].section(bench)
        except Exception as err:  # noqa: BLE001 - one broken section must not lose the others
            traceback.print_exc(file=sys.stderr)
            rows.append(status_row(section, section, "error", error_text(err)))
        timings[section] = round(time.perf_counter() - t0, 1)
    env["section_seconds"] = timings
    plots = {}
    for section in sections:
        name = f"{stem}_{section}.png"
        try:
            if plot(rows, section, out / name, f"{SECTION_TITLES[section]} - {env['device_name']}, {env['dtype']}"):
                plots[section] = name
        except Exception as err:  # noqa: BLE001
            print(f"plot {section} failed: {error_text(err)}", file=sys.stderr)
    report = {"environment": env, "sections": sections, "summary": headline(rows), "rows": rows, "plots": plots}
    data = json.dumps(report, indent=1, default=str) + "\n"
    with open_atomic(out / f"{stem}.json") as f:  # a failed run keeps the old report
        f.write(data)
    text = markdown(env, rows, sections, plots)
    with open_atomic(out / f"{stem}.md") as f:
        f.write(text)
    print(text)
    print(f"wrote {out / (stem + '.md')}, {out / (stem + '.json')} and {len(plots)} plots", flush=True)
    return 0



if __name__ == "__main__":
    sys.exit(main())
