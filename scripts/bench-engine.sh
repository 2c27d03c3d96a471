#!/usr/bin/env bash
# The engine against its ceilings, in one run on this machine:
#   (a) the device: `kiseki-bench device` 1M write qd16 and 4k randread qd64;
#   (b) the crypto: SHA-256 + HKDF + AES-256-GCM seal of 1 MiB chunks, one job per core;
#   (c) the engine: `kiseki-bench engine` 1 MiB chunk writes (seal before put) and 4 KiB
#       chunk random reads (open after get), one job per core;
# then the scaling of the engine's whole write path on the memory backend (1 job vs one
# per core). Prints a table, and last `ratio <x>`: the lower of
# engine write / min(device write, crypto) and engine randread / device randread.
#
# Usage: scripts/bench-engine.sh [--quick] [DIR] [SIZE]
#   DIR    where the two files go (default .): kiseki-bench.dat (device), kiseki-engine.dat
#   SIZE   size of each file (default 1G)
#   --quick  1 s runs instead of 4 s
set -euo pipefail

RUNTIME=4
if [[ ${1:-} == --quick ]]; then
  RUNTIME=1
  shift
fi
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

run device-write "$BENCH" device --name=device-write --filename="$DEV" --size="$SIZE" \
  --rw=write --bs=1M --iodepth=16 "${TIMED[@]}"
run device-randread "$BENCH" device --name=device-randread --filename="$DEV" --size="$SIZE" \
  --rw=randread --bs=4k --iodepth=64 "${TIMED[@]}"
run crypto "$BENCH" crypto --bs=1M --numjobs="$CORES" --runtime="$RUNTIME" --output-format=json
run engine-write "$BENCH" engine --name=engine-write --filename="$ENG" --size="$SIZE" \
  --rw=write --bs=1M --iodepth=8 --numjobs="$CORES" --group_reporting "${TIMED[@]}"
run engine-randread "$BENCH" engine --name=engine-randread --filename="$ENG" --size="$SIZE" \
  --rw=randread --bs=4k --iodepth=$((64 / CORES)) --numjobs="$CORES" --group_reporting \
  "${TIMED[@]}"
run scaling-1 "$BENCH" engine --name=scaling-1 --ioengine=memory --size=512M --rw=write \
  --bs=1M --iodepth=8 --numjobs=1 "${TIMED[@]}"
run scaling-n "$BENCH" engine --name=scaling-n --ioengine=memory --size=1G --rw=write \
  --bs=1M --iodepth=8 --numjobs="$CORES" --group_reporting "${TIMED[@]}"

python3 - "$RESULTS" "$CORES" "$(uname -r)" "$(date -u +%F)" <<'PY'
import json, sys, os
results, cores, kernel, day = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def load(name):
    with open(os.path.join(results, name + ".json")) as f:
        return json.load(f)
def job(name):
    return load(name)["jobs"][0]
def mib(b):
    return b / 2**20
def cpu_per_io(j, direction):
    # usr/sys are percent of one job's time (fio's convention); a group has numjobs jobs.
    ios = j[direction]["total_ios"]
    jobs = int(j["job options"]["numjobs"])
    return (j["usr_cpu"] + j["sys_cpu"]) / 100 * j["job_runtime"] * 1000 * jobs / ios if ios else 0
dw, dr = job("device-write"), job("device-randread")
ew, er = job("engine-write"), job("engine-randread")
s1, sn = job("scaling-1"), job("scaling-n")
crypto = load("crypto")["bw_bytes"]
dev_w, eng_w = dw["write"]["bw_bytes"], ew["write"]["bw_bytes"]
dev_r, eng_r = dr["read"]["iops"], er["read"]["iops"]
ceiling_w = min(dev_w, crypto)
write_ratio = eng_w / ceiling_w
read_ratio = eng_r / dev_r
scaling = sn["write"]["bw_bytes"] / s1["write"]["bw_bytes"]
rows = [
    ("device 1M write qd16", f"{mib(dev_w):,.0f} MiB/s", f"p99 {dw['write']['clat_ns']['percentile']['99.000000']/1000:,.0f} us"),
    ("device 4k randread qd64", f"{dev_r:,.0f} IOPS", f"p99 {dr['read']['clat_ns']['percentile']['99.000000']/1000:,.0f} us"),
    (f"crypto 1M seal x {cores} cores", f"{mib(crypto):,.0f} MiB/s", ""),
    (f"engine 1M chunk write x {cores} jobs", f"{mib(eng_w):,.0f} MiB/s",
     f"p99 {ew['write']['clat_ns']['percentile']['99.000000']/1000:,.0f} us, cpu {cpu_per_io(ew, 'write'):,.0f} us/chunk"),
    (f"engine 4k chunk randread x {cores} jobs", f"{eng_r:,.0f} IOPS",
     f"p99 {er['read']['clat_ns']['percentile']['99.000000']/1000:,.0f} us, cpu {cpu_per_io(er, 'read'):,.1f} us/chunk"),
    ("engine write, memory, 1 job", f"{mib(s1['write']['bw_bytes']):,.0f} MiB/s", ""),
    (f"engine write, memory, {cores} jobs", f"{mib(sn['write']['bw_bytes']):,.0f} MiB/s", ""),
]
print(f"### Engine vs its ceilings, {day}\n")
print(f"{cores} cores, Linux {kernel}; io_uring on files on this machine's disk; memory backend for scaling.\n")
print("| measure | result | detail |\n|:---|---:|:---|")
for name, value, detail in rows:
    print(f"| {name} | {value} | {detail} |")
print()
print(f"engine write / min(device write, crypto) = {mib(eng_w):,.0f} / {mib(ceiling_w):,.0f} = {write_ratio:.2f}")
print(f"engine 4k randread / device 4k randread = {eng_r:,.0f} / {dev_r:,.0f} = {read_ratio:.2f}")
print(f"scaling, memory write path: {cores} jobs / 1 job = {scaling:.2f}")
print(f"ratio {min(write_ratio, read_ratio):.2f}")
PY
