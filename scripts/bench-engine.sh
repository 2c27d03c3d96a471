#!/usr/bin/env bash
# The engine against its ceilings, in one run on this machine:
#   (a) the device: `kiseki-bench device` 1M write qd16 and 4k randread qd64;
#   (b) the crypto: SHA-256 + HKDF + AES-256-GCM seal of 1 MiB chunks, one job per core;
#   (c) the engine: `kiseki-bench engine` 1 MiB chunk writes (seal before put) and 4 KiB
#       chunk random reads (open after get), one job per core. Writes run at iodepth 16
#       per job, the device run's depth: a put is held until its journal group is flushed,
#       and every flush waits for the other job's data writes too, which the device run
#       never does; at 8 per job both cores sat ~9% idle waiting for flushes (2026-11-22).
#   (d) the scaling of the engine's whole write path on the memory backend (1 job vs one
#       per core), in every round too: single runs of it swung from 1.72 to 1.92.
# Prints a table, and last `ratio <x>`: the lower of
# engine write / min(device write, crypto) and engine randread / device randread.
#
# Usage: scripts/bench-engine.sh [--quick] [--rounds N] [DIR] [SIZE]
#   DIR    where the two files go (default .): kiseki-bench.dat (device), kiseki-engine.dat
#   SIZE   size of each file (default 1G)
#   --quick     1 s runs instead of 4 s
#   --rounds N  paired rounds (default 3): each round runs the device, the crypto and the
#               engine back to back, so each ratio compares runs seconds apart; the
#               reported ratio is the median over rounds (this virtual disk swings +-30%
#               from one minute to the next, for fio as much as for us).
set -euo pipefail

RUNTIME=4
ROUNDS=3
while [[ ${1:-} == --* ]]; do
  case $1 in
    --quick) RUNTIME=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    *) echo "bench-engine: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
DIR=${1:-.}
SIZE=${2:-1G}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CORES=$(nproc)
RESULTS=$(mktemp -d -t kiseki-bench-engine.XXXXXX)
echo "bench-engine: raw JSON in $RESULTS" >&2

(cd "$ROOT" && cargo build --release -q -p kiseki-bench) >&2
BENCH=$ROOT/target/release/kiseki-bench
DEV=$DIR/kiseki-bench.dat
ENG=$DIR/kiseki-engine.dat
TIMED=(--runtime="$RUNTIME" --time_based --output-format=json)

run() { # name, then the command
  local name=$1
  shift
  echo "bench-engine: $name" >&2
  "$@" >"$RESULTS/$name.json"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "bench-engine: round $round of $ROUNDS" >&2
  run device-write-$round "$BENCH" device --name=device-write --filename="$DEV" --size="$SIZE" \
    --rw=write --bs=1M --iodepth=16 "${TIMED[@]}"
  run crypto-$round "$BENCH" crypto --bs=1M --numjobs="$CORES" --runtime="$RUNTIME" \
    --output-format=json
  run engine-write-$round "$BENCH" engine --name=engine-write --filename="$ENG" --size="$SIZE" \
    --rw=write --bs=1M --iodepth=16 --numjobs="$CORES" --group_reporting "${TIMED[@]}"
  run device-randread-$round "$BENCH" device --name=device-randread --filename="$DEV" \
    --size="$SIZE" --rw=randread --bs=4k --iodepth=64 "${TIMED[@]}"
  run engine-randread-$round "$BENCH" engine --name=engine-randread --filename="$ENG" \
    --size="$SIZE" --rw=randread --bs=4k --iodepth=$((64 / CORES)) --numjobs="$CORES" \
    --group_reporting "${TIMED[@]}"
  run scaling-1-$round "$BENCH" engine --name=scaling-1 --ioengine=memory --size=512M \
    --rw=write --bs=1M --iodepth=8 --numjobs=1 "${TIMED[@]}"
  run scaling-n-$round "$BENCH" engine --name=scaling-n --ioengine=memory --size=1G \
    --rw=write --bs=1M --iodepth=8 --numjobs="$CORES" --group_reporting "${TIMED[@]}"
done

python3 - "$RESULTS" "$CORES" "$ROUNDS" "$(uname -r)" "$(date -u +%F)" \
  "$(git -C "$ROOT" rev-parse --short HEAD)" <<'PY'
import json, os, statistics, sys
results, cores, rounds, kernel, day, commit = sys.argv[1:7]
cores, rounds = int(cores), int(rounds)
def load(name):
    with open(os.path.join(results, name + ".json")) as f:
        return json.load(f)
def job(name):
    return load(name)["jobs"][0]
def mib(b):
    return b / 2**20
def p99_us(j, direction):
    return j[direction]["clat_ns"]["percentile"]["99.000000"] / 1000
def cpu_per_io(j, direction):
    # usr/sys are percent of one job's time (fio's convention); a group has numjobs jobs.
    ios = j[direction]["total_ios"]
    jobs = int(j["job options"]["numjobs"])
    return (j["usr_cpu"] + j["sys_cpu"]) / 100 * j["job_runtime"] * 1000 * jobs / ios if ios else 0
per_round = []
for r in range(1, rounds + 1):
    dw, dr = job(f"device-write-{r}"), job(f"device-randread-{r}")
    ew, er = job(f"engine-write-{r}"), job(f"engine-randread-{r}")
    crypto = load(f"crypto-{r}")["bw_bytes"]
    ceiling = min(dw["write"]["bw_bytes"], crypto)
    per_round.append(dict(
        dev_w=dw["write"]["bw_bytes"], crypto=crypto, eng_w=ew["write"]["bw_bytes"],
        dev_r=dr["read"]["iops"], eng_r=er["read"]["iops"],
        write_ratio=ew["write"]["bw_bytes"] / ceiling, read_ratio=er["read"]["iops"] / dr["read"]["iops"],
        dev_w_p99=p99_us(dw, "write"), dev_r_p99=p99_us(dr, "read"),
        eng_w_p99=p99_us(ew, "write"), eng_r_p99=p99_us(er, "read"),
        eng_w_cpu=cpu_per_io(ew, "write"), eng_r_cpu=cpu_per_io(er, "read"),
        dev_r_cpu=cpu_per_io(dr, "read"),
        mem_1=job(f"scaling-1-{r}")["write"]["bw_bytes"],
        mem_n=job(f"scaling-n-{r}")["write"]["bw_bytes"],
    ))
    per_round[-1]["scaling"] = per_round[-1]["mem_n"] / per_round[-1]["mem_1"]
def med(key):
    return statistics.median(x[key] for x in per_round)
def span(key, fmt):
    values = [x[key] for x in per_round]
    return f"{fmt(min(values))}-{fmt(max(values))}"
m = lambda v: f"{mib(v):,.0f}"
n = lambda v: f"{v:,.0f}"
rows = [
    ("device 1M write qd16", f"{m(med('dev_w'))} MiB/s", span('dev_w', m), f"p99 {med('dev_w_p99'):,.0f} us"),
    ("device 4k randread qd64", f"{n(med('dev_r'))} IOPS", span('dev_r', n),
     f"p99 {med('dev_r_p99'):,.0f} us, cpu {med('dev_r_cpu'):,.1f} us/io"),
    (f"crypto 1M seal x {cores} cores", f"{m(med('crypto'))} MiB/s", span('crypto', m), ""),
    (f"engine 1M chunk write x {cores} jobs", f"{m(med('eng_w'))} MiB/s", span('eng_w', m),
     f"p99 {med('eng_w_p99'):,.0f} us, cpu {med('eng_w_cpu'):,.0f} us/chunk"),
    (f"engine 4k chunk randread x {cores} jobs", f"{n(med('eng_r'))} IOPS", span('eng_r', n),
     f"p99 {med('eng_r_p99'):,.0f} us, cpu {med('eng_r_cpu'):,.1f} us/chunk"),
    ("engine write, memory, 1 job", f"{m(med('mem_1'))} MiB/s", span('mem_1', m), ""),
    (f"engine write, memory, {cores} jobs", f"{m(med('mem_n'))} MiB/s", span('mem_n', m), ""),
]
print(f"### Engine vs its ceilings, {day}\n")
print(f"{cores} cores, Linux {kernel}; io_uring on files on this machine's disk; memory backend "
      f"for scaling; {rounds} paired rounds; kiseki commit {commit}. Figures are medians over "
      "rounds; ratios are medians of per-round ratios.\n")
print("| measure | median | range | detail |\n|:---|---:|---:|:---|")
for name, value, spread, detail in rows:
    print(f"| {name} | {value} | {spread} | {detail} |")
print()
write_ratio, read_ratio = med("write_ratio"), med("read_ratio")
print(f"engine write / min(device write, crypto): median {write_ratio:.2f} "
      f"(rounds {', '.join(format(x['write_ratio'], '.2f') for x in per_round)})")
print(f"engine 4k randread / device 4k randread: median {read_ratio:.2f} "
      f"(rounds {', '.join(format(x['read_ratio'], '.2f') for x in per_round)})")
print(f"scaling, memory write path: {cores} jobs / 1 job: median {med('scaling'):.2f} "
      f"(rounds {', '.join(format(x['scaling'], '.2f') for x in per_round)})")
print(f"ratio {min(write_ratio, read_ratio):.2f}")
PY
