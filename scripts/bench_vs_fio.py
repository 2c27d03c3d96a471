#!/usr/bin/env python3
"""Statistics helper for scripts/bench-vs-fio.sh (python3 stdlib only).

Subcommands:
  size SIZE                 print SIZE (fio syntax: 4k, 256M, 1G, 1GiB, 512) in bytes
  brief WORKLOAD LABEL=FILE.json...
                            print one progress line summarising those runs
  summarize --results DIR --rounds N [--no-ours] [--header TEXT] WORKLOAD...
                            read DIR/<workload>/r<round>-<variant>.json and print
                            the plain table, the markdown table and, as the very
                            last line, "min ratio <x>"

Every run's figures are derived from fio-style JSON (fio's own, or
kiseki-bench's, which mirrors it) in exactly the same way for both tools:

  throughput  4k workloads: IOPS = read.iops + write.iops
              1M workloads: MiB/s = (read.bw_bytes + write.bw_bytes) / 2^20
  p99 clat    clat_ns.percentile["99.000000"] of the direction that did the I/O
              (for mixed runs: the I/O-count-weighted mean of both), in us
  CPU/IO      (usr_cpu + sys_cpu) / 100 * job_runtime_ms * 1000 / total_ios, in us
              (job_runtime falls back to max(read.runtime, write.runtime) if absent)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

VARIANTS_FIO = ("fio-fixed", "fio-plain")
VARIANT_OURS = "ours"

FIO_LABEL = {
    "fio-fixed": "fixedbufs",
    "fio-plain": "plain",
}


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------
# sizes


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """fio's default (kb_base=1024): 1k = 1024, 1M = 2^20, 1G = 2^30 ..."""
    m = _SIZE_RE.match(text)
    if not m:
        raise BenchError(f"cannot parse size {text!r} (expected e.g. 256M, 1G, 4096)")
    num, unit = float(m.group(1)), m.group(2).lower()
    mult = 1024 ** " kmgtp".index(unit) if unit else 1
    return int(num * mult)


# --------------------------------------------------------------------------
# JSON parsing


def load_json(path: Path) -> dict:
    """Load a fio-style JSON document.

    fio can print warnings ("fio: ...") before the JSON even with --output;
    be lenient and start at the first line that opens an object.
    """
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise BenchError(f"{path}: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    dec = json.JSONDecoder()
    for m in re.finditer(r"^\{", text, re.MULTILINE):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "jobs" in obj:
            return obj
    raise BenchError(f"{path}: no fio-style JSON document (with a 'jobs' list) found")


def _percentile(clat: dict, pct: float) -> float | None:
    table = clat.get("percentile") or {}
    for key, val in table.items():
        try:
            if abs(float(key) - pct) < 1e-9:
                return float(val)
        except ValueError:
            continue
    return None


def _num(obj: dict, key: str, default: float = 0.0) -> float:
    v = obj.get(key, default)
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def run_figures(path: Path) -> dict:
    """Figures of one run (a single job; with several, they are aggregated)."""
    doc = load_json(path)
    jobs = doc.get("jobs") or []
    if not jobs:
        raise BenchError(f"{path}: empty 'jobs' list")

    total_ios = 0.0
    iops = 0.0
    bw_bytes = 0.0
    cpu_us = 0.0
    runtime_ms = 0.0
    p99_weighted = 0.0
    p99_weight = 0.0
    used_fallback = False
    for job in jobs:
        if _num(job, "error") != 0:
            raise BenchError(f"{path}: job {job.get('jobname')!r} reported error {job.get('error')}")
        dirs = [job.get(d) or {} for d in ("read", "write")]
        ios = sum(_num(d, "total_ios") for d in dirs)
        total_ios += ios
        for d in dirs:
            if "iops" in d:
                iops += _num(d, "iops")
            elif _num(d, "runtime") > 0:
                iops += _num(d, "total_ios") / (_num(d, "runtime") / 1000.0)
        bw_bytes += sum(_num(d, "bw_bytes") for d in dirs)
        if "job_runtime" in job and _num(job, "job_runtime") > 0:
            jr = _num(job, "job_runtime")
        else:
            jr = max(_num(d, "runtime") for d in dirs)
            used_fallback = True
        runtime_ms = max(runtime_ms, max(_num(d, "runtime") for d in dirs))
        cpu_us += (_num(job, "usr_cpu") + _num(job, "sys_cpu")) / 100.0 * jr * 1000.0
        for d in dirs:
            n = _num(d, "total_ios")
            if n <= 0:
                continue
            p = _percentile(d.get("clat_ns") or {}, 99.0)
            if p is not None:
                p99_weighted += p * n
                p99_weight += n

    if total_ios <= 0 or runtime_ms <= 0:
        raise BenchError(f"{path}: run did no I/O (total_ios={total_ios:g}, runtime={runtime_ms:g} ms)")
    return {
        "iops": iops,
        "mibs": bw_bytes / 2**20,
        "p99_us": (p99_weighted / p99_weight / 1000.0) if p99_weight else None,
        "cpu_us_per_io": cpu_us / total_ios,
        "total_ios": total_ios,
        "job_runtime_fallback": used_fallback,
    }


def is_bandwidth_workload(workload: str) -> bool:
    """4k workloads are compared in IOPS, large-block ones in MiB/s."""
    bs = workload.split("-", 1)[0].lower()
    try:
        return parse_size(bs) >= 64 * 1024
    except BenchError:
        return False


def metric(fig: dict, workload: str) -> float:
    return fig["mibs"] if is_bandwidth_workload(workload) else fig["iops"]


def unit(workload: str) -> str:
    return "MiB/s" if is_bandwidth_workload(workload) else "IOPS"


def fmt_metric(v: float | None, workload: str) -> str:
    if v is None:
        return "-"
    if is_bandwidth_workload(workload):
        return f"{v:,.1f}"
    return f"{v:,.0f}"


def fmt_us(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def median(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# --------------------------------------------------------------------------
# subcommands


def cmd_size(args) -> int:
    print(parse_size(args.size))
    return 0


def cmd_brief(args) -> int:
    """One progress line: LABEL=FILE.json pairs, each summarised."""
    wl = args.workload
    parts = []
    for item in args.runs:
        label, _, path = item.partition("=")
        fig = run_figures(Path(path))
        p99 = fmt_us(fig["p99_us"], 0)
        parts.append(
            f"{label} {fmt_metric(metric(fig, wl), wl)} {unit(wl)} p99 {p99}us cpu {fig['cpu_us_per_io']:.2f}us/io"
        )
    print(" | ".join(parts))
    return 0


def render_plain(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    out = []
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    out.append(line)
    out.append("  ".join("-" * w for w in widths))
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def render_markdown(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |"]
    out.append("|" + "|".join(":---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    for r in rows:
        out.append("| " + " | ".join(r) + " |")
    return "\n".join(out)


def cmd_summarize(args) -> int:
    results = Path(args.results)
    rounds = args.rounds
    with_ours = not args.no_ours
    variants = list(VARIANTS_FIO) + ([VARIANT_OURS] if with_ours else [])

    rows = []
    detail = []
    fallback_files = []
    ratios_by_wl = {}
    for wl in args.workloads:
        figs: dict[str, list[dict | None]] = {}
        for v in variants:
            per_round = []
            for r in range(1, rounds + 1):
                path = results / wl / f"r{r}-{v}.json"
                if not path.exists():
                    per_round.append(None)
                    continue
                fig = run_figures(path)
                if fig["job_runtime_fallback"]:
                    fallback_files.append(str(path))
                per_round.append(fig)
            figs[v] = per_round

        def med(v: str, key: str):
            return median([(metric(f, wl) if key == "metric" else f[key]) for f in figs[v] if f is not None])

        fio_meds = {v: med(v, "metric") for v in VARIANTS_FIO}
        avail = [v for v in VARIANTS_FIO if fio_meds[v] is not None]
        if not avail:
            raise BenchError(f"{wl}: no fio results in {results / wl}")
        # "compare against the faster": the fio variant with the higher median
        # (ties go to the first listed, fixedbufs).
        best = max(avail, key=lambda v: fio_meds[v])

        ratios = []
        if with_ours:
            for fb, fo in zip(figs[best], figs[VARIANT_OURS]):
                if fb is not None and fo is not None and metric(fb, wl) > 0:
                    ratios.append(metric(fo, wl) / metric(fb, wl))
        ratio_med = median(ratios)
        ratios_by_wl[wl] = ratio_med

        ours = VARIANT_OURS if with_ours else None
        rows.append([
            wl,
            unit(wl),
            f"{FIO_LABEL[best]}",
            fmt_metric(fio_meds[best], wl),
            fmt_metric(med(ours, "metric") if ours else None, wl),
            fmt_ratio(ratio_med),
            (f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"),
            fmt_us(med(best, "p99_us"), 0),
            fmt_us(med(ours, "p99_us") if ours else None, 0),
            fmt_us(med(best, "cpu_us_per_io"), 2),
            fmt_us(med(ours, "cpu_us_per_io") if ours else None, 2),
        ])
        other = [v for v in avail if v != best]
        detail.append(
            f"  {wl}: fio fixedbufs {fmt_metric(fio_meds['fio-fixed'], wl)} / plain "
            f"{fmt_metric(fio_meds['fio-plain'], wl)} {unit(wl)} (median of "
            f"{sum(f is not None for f in figs['fio-fixed'])}/{sum(f is not None for f in figs['fio-plain'])} runs)"
            + (f"; per-round ours/{FIO_LABEL[best]}: " + " ".join(f"{x:.2f}" for x in ratios) if ratios else "")
            + (f"; slower variant {FIO_LABEL[other[0]]}" if other else "")
        )

    headers = [
        "workload", "unit", "fio variant", "fio", "ours", "ours/fio", "ratio range",
        "p99 fio us", "p99 ours us", "cpu/io fio us", "cpu/io ours us",
    ]
    print(render_plain(headers, rows))
    print()
    print("fio medians per variant and paired ratios:")
    print("\n".join(detail))
    print(
        f"(medians over {rounds} rounds; ours/fio = median of per-round ratios against the faster fio "
        "variant; p99 = completion latency; cpu/io = (usr+sys)% x job_runtime / total_ios)"
    )
    if fallback_files:
        print(f"note: job_runtime missing in {len(fallback_files)} file(s); used max(read.runtime, write.runtime)")
    print()
    if args.header:
        print(args.header)
        print()
    print(render_markdown(headers, rows))
    print()

    vals = [v for v in ratios_by_wl.values() if v is not None]
    if with_ours and len(vals) == len(ratios_by_wl):
        print(f"min ratio {min(vals):.2f}")
    else:
        # fio-only / incomplete runs: keep the contract that the last line
        # starts with "min ratio", but make it obviously not a number.
        print("min ratio n/a")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("size")
    s.add_argument("size")
    s.set_defaults(func=cmd_size)

    b = sub.add_parser("brief")
    b.add_argument("workload")
    b.add_argument("runs", nargs="+", metavar="LABEL=FILE.json")
    b.set_defaults(func=cmd_brief)

    m = sub.add_parser("summarize")
    m.add_argument("--results", required=True)
    m.add_argument("--rounds", type=int, required=True)
    m.add_argument("--no-ours", action="store_true")
    m.add_argument("--header", default="")
    m.add_argument("workloads", nargs="+")
    m.set_defaults(func=cmd_summarize)

    args = p.parse_args(argv)
    try:
        return args.func(args)
    except BenchError as e:
        print(f"bench_vs_fio.py: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
