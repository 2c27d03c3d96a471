#!/usr/bin/env bash
# The fabric against its ceilings, in one run on this machine, all on loopback (127.0.0.1):
#   (a) raw TCP: iperf3, one stream and -P <the connections ours uses>;
#   (b) crypto: `openssl speed -evp aes-256-gcm -bytes 16384`, one core (TLS encrypts every
#       byte again on this path: the client seals each record, the listener opens it);
#   (c) ours: `kiseki-bench fabric` 4 MiB chunk puts and gets over TCP and TLS 1.3 with
#       mutual authentication, to a `--listen --memory` process this script starts (with a
#       throwaway CA in the results directory) and stops.
# The ceiling is min(iperf3 -P, AES-GCM). Prints a table of medians and ranges, and last
# `ratio <x>`: the lower of the put and get medians of ours / ceiling, each ratio paired
# within its round.
#
# Usage: scripts/bench-fabric.sh [--quick] [--rounds N]
#   --quick     1 s runs instead of 4 s
#   --rounds N  paired rounds (default 3): each round runs iperf3, openssl and ours back to
#               back, in an order that rotates from round to round, so each ratio compares
#               runs seconds apart; the reported ratios are medians over rounds.
#
# Environment:
#   KISEKI_BENCH=/path/to/kiseki-bench  use this binary instead of building it
#   FABRIC_JOBS, FABRIC_IODEPTH, FABRIC_CONNECTIONS  the client's shape (default 1, 8, 2:
#               one job thread, 8 chunks in flight over 2 TLS connections)
#   MIMALLOC_PURGE_DELAY  default -1 here: freed payload pages stay with the process
# Raw JSON and text of every run stay in the directory the script prints.
set -euo pipefail

RUNTIME=4
ROUNDS=3
while (($#)); do
  case $1 in
    --quick) RUNTIME=1 ;;
    --rounds)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "bench-fabric: --rounds needs a count" >&2; exit 2; }
      ROUNDS=$2
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
      exit 0
      ;;
    *) echo "bench-fabric: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
JOBS=${FABRIC_JOBS:-1}
IODEPTH=${FABRIC_IODEPTH:-8}
CONNECTIONS=${FABRIC_CONNECTIONS:-2}
# Every connection of every job carries requests once iodepth >= connections.
STREAMS=$((JOBS * (IODEPTH < CONNECTIONS ? IODEPTH : CONNECTIONS)))
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# kiseki-bench allocates with mimalloc. Every 4 MiB payload is a fresh allocation; by default
# mimalloc hands freed pages back to the kernel and the next payload faults them in again
# (measured: ~250 us of listener CPU per 4 MiB put). A long-running node keeps them, as this
# setting tells mimalloc to; the figures are taken with it.
export MIMALLOC_PURGE_DELAY=${MIMALLOC_PURGE_DELAY:--1}

die() {
  echo "bench-fabric: error: $*" >&2
  exit 1
}
log() { echo "bench-fabric: $*" >&2; }

apt_install() {
  [[ $(id -u) == 0 ]] || die "missing $*; install it (as root: apt-get install $*)"
  log "installing $* with apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@"; } >&2 || die "could not install $*"
}
command -v iperf3 >/dev/null || apt_install iperf3
command -v openssl >/dev/null || apt_install openssl
command -v python3 >/dev/null || apt_install python3

if [[ -n ${KISEKI_BENCH:-} ]]; then
  BENCH=$KISEKI_BENCH
  [[ -x $BENCH ]] || die "KISEKI_BENCH=$BENCH is not an executable file"
else
  log "building kiseki-bench (release)"
  (cd "$ROOT" && cargo build --release -q -p kiseki-bench) >&2 || die "cargo build failed"
  BENCH=$ROOT/target/release/kiseki-bench
fi

RESULTS=$(mktemp -d -t kiseki-bench-fabric.XXXXXX)
log "raw results in $RESULTS"
RUN_TIMEOUT=$((RUNTIME + 60))
LISTENER_PID=""
IPERF_PID=""
cleanup() {
  local rc=$?
  [[ -z $IPERF_PID ]] || kill "$IPERF_PID" 2>/dev/null || true
  if [[ -n $LISTENER_PID ]]; then
    kill -TERM "$LISTENER_PID" 2>/dev/null || true
    wait "$LISTENER_PID" 2>/dev/null || true
  fi
  ((rc == 0)) || log "aborted (exit $rc); results so far in $RESULTS"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- servers
# The listener serves every round (chunks repeat across rounds: the store holds one working
# set); it stops itself after its --runtime and a margin if this script dies.
"$BENCH" fabric --listen 127.0.0.1:0 --memory --tls-dir "$RESULTS/tls" \
  --runtime $((ROUNDS * (6 * RUNTIME + 30))) >"$RESULTS/listener.out" 2>"$RESULTS/listener.err" &
LISTENER_PID=$!
for _ in $(seq 300); do
  grep -q '^listening on ' "$RESULTS/listener.out" 2>/dev/null && break
  kill -0 "$LISTENER_PID" 2>/dev/null || die "the listener exited: $(cat "$RESULTS/listener.err")"
  sleep 0.1
done
ADDR=$(sed -n 's/^listening on //p' "$RESULTS/listener.out")
[[ -n $ADDR ]] || die "the listener never said where it listens: $(cat "$RESULTS/listener.err")"
log "listener on $ADDR (pid $LISTENER_PID)"

IPERF_PORT=$(free_port)
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >"$RESULTS/iperf3-server.log" 2>&1 &
IPERF_PID=$!

# ---------------------------------------------------------------- measurements
# Each writes $RESULTS/<name>-<round>.<ext>.
iperf() { # streams, output file
  for attempt in 1 2 3; do
    if timeout --kill-after=10 "$RUN_TIMEOUT" iperf3 -c 127.0.0.1 -p "$IPERF_PORT" \
      -t "$RUNTIME" -P "$1" -J >"$2" 2>&1; then
      return 0
    fi
    ((attempt < 3)) || die "iperf3 -P $1 failed: $(tail -c 300 "$2")"
    sleep 0.5 # the server may not be listening yet
  done
}

listener_ticks() { awk '{ print $14 + $15 }' "/proc/$LISTENER_PID/stat"; }

ours() { # rw, output file
  local before after
  before=$(listener_ticks)
  timeout --kill-after=10 "$RUN_TIMEOUT" "$BENCH" fabric --connect "$ADDR" \
    --tls-dir "$RESULTS/tls" --name="fabric-$1" --rw="$1" --bs=4M --size=64M \
    --iodepth="$IODEPTH" --numjobs="$JOBS" --connections="$CONNECTIONS" --group_reporting \
    --runtime="$RUNTIME" --time_based --output-format=json >"$2" 2>"$2.err" ||
    die "kiseki-bench fabric --rw=$1 failed: $(tail -c 500 "$2.err")"
  after=$(listener_ticks)
  echo $((after - before)) >"$2.listener-ticks"
}

measure() { # what, round
  local r=$2
  case $1 in
    iperf-1) log "round $r: iperf3, 1 stream" && iperf 1 "$RESULTS/iperf-1-$r.json" ;;
    iperf-p)
      log "round $r: iperf3, $STREAMS streams" && iperf "$STREAMS" "$RESULTS/iperf-p-$r.json"
      ;;
    aes)
      log "round $r: openssl speed aes-256-gcm"
      timeout --kill-after=10 "$RUN_TIMEOUT" openssl speed -evp aes-256-gcm -bytes 16384 \
        -seconds "$RUNTIME" >"$RESULTS/aes-$r.txt" 2>&1 || die "openssl speed failed"
      ;;
    put | get) log "round $r: kiseki-bench fabric --rw=$1" && ours "$1" "$RESULTS/$1-$r.json" ;;
  esac
}

STEPS=(iperf-1 iperf-p aes put get)
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!STEPS[@]}"; do
    measure "${STEPS[$(((i + round - 1) % ${#STEPS[@]}))]}" "$round"
  done
done

kill -TERM "$LISTENER_PID"
wait "$LISTENER_PID" || die "the listener failed: $(cat "$RESULTS/listener.err")"
LISTENER_PID=""

# ---------------------------------------------------------------- summary
python3 - "$RESULTS" "$ROUNDS" "$RUNTIME" "$JOBS" "$IODEPTH" "$CONNECTIONS" "$STREAMS" \
  "$(nproc)" "$(uname -r)" "$(date -u +%F)" "$(git -C "$ROOT" rev-parse --short HEAD)" \
  "$(openssl version | cut -d' ' -f1-2)" "$(iperf3 --version | head -1 | cut -d' ' -f1-2)" \
  "$(getconf CLK_TCK)" <<'PY'
import json, os, re, statistics, sys
(results, rounds, runtime, jobs, iodepth, connections, streams, cores, kernel, day, commit,
 openssl, iperf_version, clk_tck) = sys.argv[1:15]
rounds, jobs, streams, clk_tck = int(rounds), int(jobs), int(streams), int(clk_tck)

def path(name):
    return os.path.join(results, name)

def iperf(name):
    with open(path(name)) as f:
        return json.load(f)["end"]["sum_received"]["bits_per_second"] / 8

def aes(name):
    with open(path(name)) as f:
        text = f.read()
    found = re.findall(r"^aes-256-gcm\s+([0-9.]+)k\s*$", text, re.IGNORECASE | re.MULTILINE)
    if not found:
        sys.exit(f"bench-fabric: no AES-256-GCM rate in {name}:\n{text[-500:]}")
    return float(found[-1]) * 1000  # openssl prints 1000s of bytes per second

def ours(rw, r):
    name = f"{rw}-{r}.json"
    with open(path(name)) as f:
        job = json.load(f)["jobs"][0]
    d = job["write" if rw == "put" else "read"]
    ios = d["total_ios"]
    client_us = (job["usr_cpu"] + job["sys_cpu"]) / 100 * job["job_runtime"] * 1000 * jobs
    with open(path(name + ".listener-ticks")) as f:
        listener_us = int(f.read()) / clk_tck * 1e6
    per_chunk = lambda us: us / ios if ios else 0
    return dict(bw=d["bw_bytes"], p99_ms=d["clat_ns"]["percentile"]["99.000000"] / 1e6,
                client_us=per_chunk(client_us), listener_us=per_chunk(listener_us))

per_round = []
for r in range(1, rounds + 1):
    row = dict(iperf_1=iperf(f"iperf-1-{r}.json"), iperf_p=iperf(f"iperf-p-{r}.json"),
               aes=aes(f"aes-{r}.txt"))
    put, get = ours("put", r), ours("get", r)
    row.update({f"put_{k}": v for k, v in put.items()})
    row.update({f"get_{k}": v for k, v in get.items()})
    row["ceiling"] = min(row["iperf_p"], row["aes"])
    row["put_ratio"] = row["put_bw"] / row["ceiling"]
    row["get_ratio"] = row["get_bw"] / row["ceiling"]
    per_round.append(row)

def med(key):
    return statistics.median(x[key] for x in per_round)

def span(key, fmt):
    values = [x[key] for x in per_round]
    return f"{fmt(min(values))}-{fmt(max(values))}"

m = lambda v: f"{v / 2**20:,.0f}"
def detail(rw):
    return (f"p99 {med(rw + '_p99_ms'):,.1f} ms; cpu/chunk client "
            f"{med(rw + '_client_us'):,.0f} us, listener {med(rw + '_listener_us'):,.0f} us")
rows = [
    ("iperf3 TCP, 1 stream", "iperf_1", f"{med('iperf_1') * 8 / 1e9:.1f} Gbit/s"),
    (f"iperf3 TCP, {streams} streams (-P)", "iperf_p", f"{med('iperf_p') * 8 / 1e9:.1f} Gbit/s"),
    ("AES-256-GCM, 16 KiB, 1 core", "aes", "openssl speed -evp"),
    ("ceiling = min(iperf3 -P, AES-GCM)", "ceiling", ""),
    ("fabric 4 MiB put", "put_bw", detail("put")),
    ("fabric 4 MiB get", "get_bw", detail("get")),
]
print(f"### Fabric vs its ceilings, {day}\n")
print(f"{cores} cores, Linux {kernel}; loopback 127.0.0.1; {openssl}, {iperf_version}; "
      f"{rounds} paired rounds of {runtime} s runs; kiseki commit {commit}. Ours: "
      f"`kiseki-bench fabric` against a `--listen --memory` process, TLS 1.3 mTLS, {jobs} job(s) "
      f"x {connections} connections, iodepth {iodepth}, 64 MiB working set per job, "
      f"MIMALLOC_PURGE_DELAY={os.environ.get('MIMALLOC_PURGE_DELAY', 'unset')}. Figures "
      "are medians over rounds; ratios are medians of per-round ratios.\n")
print("| measure | median MiB/s | range MiB/s | detail |\n|:---|---:|---:|:---|")
for name, key, extra in rows:
    print(f"| {name} | {m(med(key))} | {span(key, m)} | {extra} |")
print()
put_ratio, get_ratio = med("put_ratio"), med("get_ratio")
for rw, value in (("put", put_ratio), ("get", get_ratio)):
    each = ", ".join(format(x[f"{rw}_ratio"], ".2f") for x in per_round)
    print(f"{rw} / ceiling: median {value:.2f} (rounds {each})")
print(f"ratio {min(put_ratio, get_ratio):.2f}")
PY
