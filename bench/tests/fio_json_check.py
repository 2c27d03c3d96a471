#!/usr/bin/env python3
"""Reads a kiseki-bench JSON report the way fio's JSON consumers do, and fails loudly on any
field they would miss.

The lookups are those of common fio parsers (fio-plot, fio's own fio2gnuplot/
fiologparser-style scripts, CI dashboards): top-level "fio version" and "jobs"; per job
"jobname", "error", "job options" (rw, bs, iodepth, numjobs), "read"/"write" with "iops",
"bw" (KiB/s), "bw_bytes", "io_bytes", "runtime", "total_ios", "lat_ns"/"clat_ns" (min, max,
mean, stddev, N) and "clat_ns"."percentile" keyed "%f" (e.g. "99.000000"); "usr_cpu",
"sys_cpu", "ctx", "job_runtime".

Usage: fio_json_check.py REPORT.json EXPECTED_RW
"""
import json
import sys


def fail(message):
    print(f"fio_json_check: {message}", file=sys.stderr)
    sys.exit(1)


def number(container, key, where):
    if key not in container:
        fail(f"{where}: missing {key!r}")
    value = container[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"{where}.{key}: not a number: {value!r}")
    return value


def check_direction(job, name, runtime_ms):
    where = f"jobs[].{name}"
    direction = job.get(name)
    if not isinstance(direction, dict):
        fail(f"{where}: missing")
    ios = number(direction, "total_ios", where)
    io_bytes = number(direction, "io_bytes", where)
    iops = number(direction, "iops", where)
    bw_bytes = number(direction, "bw_bytes", where)
    bw_kib = number(direction, "bw", where)
    number(direction, "runtime", where)
    for section in ("lat_ns", "clat_ns"):
        stats = direction.get(section)
        if not isinstance(stats, dict):
            fail(f"{where}.{section}: missing")
        for key in ("min", "max", "mean", "stddev", "N"):
            number(stats, key, f"{where}.{section}")
    if ios == 0:
        return 0
    seconds = runtime_ms / 1000.0
    if abs(iops - ios / seconds) > 0.02 * iops + 1:
        fail(f"{where}: iops {iops} disagrees with total_ios/runtime {ios / seconds}")
    if abs(bw_bytes - io_bytes / seconds) > 0.02 * bw_bytes + 1024:
        fail(f"{where}: bw_bytes {bw_bytes} disagrees with io_bytes/runtime")
    if abs(bw_kib - bw_bytes / 1024) > 1:
        fail(f"{where}: bw {bw_kib} KiB/s is not bw_bytes/1024")
    clat = direction["clat_ns"]
    if clat["N"] != ios:
        fail(f"{where}.clat_ns.N {clat['N']} != total_ios {ios}")
    if not clat["min"] <= clat["mean"] <= clat["max"]:
        fail(f"{where}.clat_ns: mean outside min..max")
    percentiles = clat.get("percentile")
    if not isinstance(percentiles, dict):
        fail(f"{where}.clat_ns.percentile: missing")
    for key in ("50.000000", "90.000000", "99.000000", "99.900000", "99.990000"):
        number(percentiles, key, f"{where}.clat_ns.percentile")
    values = [percentiles[k] for k in sorted(percentiles, key=float)]
    if values != sorted(values):
        fail(f"{where}.clat_ns.percentile: not monotonic: {values}")
    if not (clat["min"] <= values[0] and values[-1] <= clat["max"] * 1.001):
        fail(f"{where}.clat_ns.percentile: outside min..max")
    return ios


def main():
    if len(sys.argv) != 3:
        fail("usage: fio_json_check.py REPORT.json EXPECTED_RW")
    path, expected_rw = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as handle:
        report = json.load(handle)
    if not isinstance(report.get("fio version"), str):
        fail("missing 'fio version'")
    number(report, "timestamp", "report")
    jobs = report.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        fail("'jobs' missing or empty")
    for job in jobs:
        if not isinstance(job.get("jobname"), str):
            fail("jobs[].jobname missing")
        if number(job, "error", "jobs[]") != 0:
            fail(f"job {job['jobname']} reports error {job['error']}")
        options = job.get("job options")
        if not isinstance(options, dict):
            fail("jobs[].'job options' missing")
        if options.get("rw") != expected_rw:
            fail(f"job options rw {options.get('rw')!r} != {expected_rw!r}")
        for key in ("bs", "iodepth", "numjobs"):
            if key not in options:
                fail(f"job options: missing {key!r}")
        runtime_ms = number(job, "job_runtime", "jobs[]")
        for key in ("usr_cpu", "sys_cpu", "ctx", "majf", "minf"):
            number(job, key, "jobs[]")
        ios = check_direction(job, "read", runtime_ms) + check_direction(job, "write", runtime_ms)
        if ios == 0:
            fail(f"job {job['jobname']} did no I/O")
    print(f"fio_json_check: {len(jobs)} job(s) read as fio JSON")


if __name__ == "__main__":
    main()
