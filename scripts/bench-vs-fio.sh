#!/usr/bin/env bash
# Compare `kiseki-bench device` against fio (io_uring, O_DIRECT) on the same file.
#
# Usage: scripts/bench-vs-fio.sh [--quick] [--fio-only] [FILE] [SIZE]
#
#   FILE   file to benchmark on (default ./kiseki-bench.dat, relative to cwd);
#          created and filled once (sequential 1M O_DIRECT writes by fio) if it
#          is absent or smaller than SIZE
#   SIZE   fio-style size (default 1G)
#   --quick     3 rounds of 1 s runs without ramp (~1 min of runs, plus the build)
#               instead of 5 rounds of 4 s runs after a 1 s ramp
#   --fio-only  skip building/running kiseki-bench (to check the fio half);
#               the last line is then "min ratio n/a"
#
# Environment:
#   KISEKI_BENCH=/path/to/kiseki-bench  use this binary instead of building it
#   FIO_EXTRA_ARGS="..."                extra flags for every fio run (e.g. --norandommap)
#   RESULTS_DIR=/path                   keep raw JSON here instead of a fresh mktemp dir
#
# Workloads (fio names): 4k randread qd1, 4k randread qd64, 4k randwrite qd64,
# 1M read qd16, 1M write qd16; numjobs=1. Each round runs, per workload, fio
# with registered buffers+files (--fixedbufs --registerfiles), fio without, and
# `kiseki-bench device` back to back (the order rotates every round). Per
# workload, ours is paired round by round with the fio variant whose median is
# higher. stdout: plain table, markdown table, and last, exactly "min ratio <x>"
# (the minimum over workloads of the median per-round ours/fio ratio).
# Progress goes to stderr. Raw JSON of every run stays in the results dir.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

die() {
  echo "bench-vs-fio: error: $*" >&2
  exit 1
}
log() { echo "$*" >&2; }

QUICK=0
FIO_ONLY=0
POSITIONAL=()
while (($#)); do
  case "$1" in
    --quick) QUICK=1 ;;
    --fio-only) FIO_ONLY=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --) shift; POSITIONAL+=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) POSITIONAL+=("$1") ;;
  esac
  shift
done
((${#POSITIONAL[@]} <= 2)) || die "too many arguments (usage: $0 [--quick] [FILE] [SIZE])"
FILE_ARG=${POSITIONAL[0]:-./kiseki-bench.dat}
SIZE=${POSITIONAL[1]:-1G}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
command -v python3 >/dev/null || die "python3 is required"
# Resolve the real interpreter once: version-manager shims (pyenv) cost ~0.2 s a call.
PYTHON=$(python3 -c 'import sys; print(sys.executable)') || die "python3 does not run"
PY=("$PYTHON" -S "$SCRIPT_DIR/bench_vs_fio.py") # -S: stdlib only, skip site-packages .pth imports
SIZE_BYTES=$("${PY[@]}" size "$SIZE") || die "bad SIZE '$SIZE'"

if ((QUICK)); then
  ROUNDS=3 RUNTIME=1 RAMP=0
else
  ROUNDS=5 RUNTIME=4 RAMP=1
fi
# Hard bound per run: fio/ours should finish within runtime + ramp + a few s.
RUN_TIMEOUT=$((RUNTIME + RAMP + 60))

# name rw bs iodepth
WORKLOADS=(
  "4k-randread-qd1 randread 4k 1"
  "4k-randread-qd64 randread 4k 64"
  "4k-randwrite-qd64 randwrite 4k 64"
  "1m-read-qd16 read 1M 16"
  "1m-write-qd16 write 1M 16"
)
read -r -a FIO_EXTRA <<<"${FIO_EXTRA_ARGS:-}"

# ---------------------------------------------------------------- fio
if ! command -v fio >/dev/null 2>&1; then
  log "fio not found; installing it with apt-get"
  { apt-get update -qq && apt-get install -y -qq fio; } >&2 || die "could not install fio"
fi
FIO_VERSION=$(fio --version 2>/dev/null || echo "fio-unknown")

# ---------------------------------------------------------------- our bench
BENCH=""
if ((!FIO_ONLY)); then
  if [[ -n ${KISEKI_BENCH:-} ]]; then
    BENCH=$KISEKI_BENCH
    [[ -x $BENCH ]] || die "KISEKI_BENCH=$BENCH is not an executable file"
  else
    command -v cargo >/dev/null || die "cargo not found; cannot build kiseki-bench (set KISEKI_BENCH=/path/to/kiseki-bench)"
    log "building kiseki-bench (cargo build --release -p kiseki-bench in $REPO_ROOT)"
    (cd "$REPO_ROOT" && cargo build --release -p kiseki-bench) >&2 ||
      die "could not build kiseki-bench: 'cargo build --release -p kiseki-bench' failed in $REPO_ROOT (set KISEKI_BENCH=/path/to/kiseki-bench to use a prebuilt binary, or --fio-only)"
    BENCH=$REPO_ROOT/target/release/kiseki-bench
    [[ -x $BENCH ]] || die "build succeeded but $BENCH does not exist"
  fi
  help_out=$("$BENCH" device --help 2>&1) ||
    die "'$BENCH device --help' failed; this kiseki-bench has no usable 'device' subcommand: ${help_out:0:300}"
  grep -q -- "iodepth" <<<"$help_out" ||
    die "'$BENCH device --help' does not mention --iodepth; this kiseki-bench does not implement the fio-compatible 'device' subcommand yet"
fi

# ---------------------------------------------------------------- results dir
if [[ -n ${RESULTS_DIR:-} ]]; then
  RESULTS=$RESULTS_DIR
  mkdir -p "$RESULTS"
else
  RESULTS=$(mktemp -d -t kiseki-bench-vs-fio.XXXXXX)
fi
log "raw JSON of every run: $RESULTS"
trap 'rc=$?; ((rc == 0)) || log "bench-vs-fio: aborted (exit $rc); raw results so far in $RESULTS"' EXIT

# ---------------------------------------------------------------- test file
FILE_DIR=$(cd "$(dirname "$FILE_ARG")" 2>/dev/null && pwd) || die "directory of $FILE_ARG does not exist"
FILE=$FILE_DIR/$(basename "$FILE_ARG")
if [[ -b $FILE ]]; then
  log "note: $FILE is a block device; it will be written to (randwrite/write workloads)"
else
  cur=0
  [[ -e $FILE ]] && cur=$(stat -c %s "$FILE")
  if ((cur < SIZE_BYTES)); then
    if [[ -e $FILE ]]; then
      log "$FILE is $cur bytes, smaller than $SIZE; filling it up to $SIZE"
    else
      log "creating and filling $FILE ($SIZE) with fio"
    fi
    timeout --kill-after=10 1800 fio --name=prefill --filename="$FILE" --size="$SIZE" \
      --rw=write --bs=1M --iodepth=16 --numjobs=1 --ioengine=io_uring --direct=1 \
      --output-format=json --output="$RESULTS/prefill.json" \
      >"$RESULTS/prefill.stdout" 2>"$RESULTS/prefill.stderr" ||
      die "fio could not create/fill $FILE (see $RESULTS/prefill.stderr): $(tail -n 5 "$RESULTS/prefill.stderr")"
  fi
fi

# ---------------------------------------------------------------- machine description
describe_machine() {
  local src dev pk model type fstype disk
  src=$(df -P "$FILE" 2>/dev/null | awk 'NR==2{print $1}') || true
  fstype=$(df -PT "$FILE" 2>/dev/null | awk 'NR==2{print $2}') || true
  disk="unknown disk"
  if [[ -b $FILE ]]; then src=$FILE; fi
  if [[ $src == /dev/* ]]; then
    dev=$src
    pk=$(lsblk -ndo PKNAME "$src" 2>/dev/null | head -n1 | tr -d '[:space:]') || true
    [[ -n $pk ]] && dev=/dev/$pk
    read -r model type < <(lsblk -ndo MODEL,TYPE "$dev" 2>/dev/null | awk '{t=$NF; $NF=""; sub(/[ \t]+$/, ""); print ($0==""?"-":$0), t}') || true
    if [[ -n ${model:-} && $model != "-" ]]; then
      disk="$model ($(basename "$dev"), ${type:-?})"
    else
      disk="$(basename "$dev") (${type:-?}, no model reported)"
    fi
  fi
  [[ -b $FILE ]] && fstype="raw block device"
  echo "$(nproc) cores, Linux $(uname -r), disk $disk, fs ${fstype:-unknown}"
}
MACHINE=$(describe_machine)
COMMIT=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$REPO_ROOT" diff --quiet HEAD 2>/dev/null; then COMMIT="$COMMIT+dirty"; fi
MODE="$ROUNDS rounds x ${RUNTIME}s runs (ramp ${RAMP}s)"
((QUICK)) && MODE="quick: $MODE"
log "machine: $MACHINE; $FIO_VERSION; file $FILE ($SIZE); $MODE"

# ---------------------------------------------------------------- runs
run_fio() { # variant name rw bs qd out
  local variant=$1 name=$2 rw=$3 bs=$4 qd=$5 out=$6
  local extra=()
  [[ $variant == fio-fixed ]] && extra=(--fixedbufs --registerfiles)
  timeout --kill-after=5 "$RUN_TIMEOUT" fio --name="$name" --filename="$FILE" --size="$SIZE" \
    --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs=1 \
    --ioengine=io_uring --direct=1 "${extra[@]}" \
    --runtime="$RUNTIME" --time_based --ramp_time="$RAMP" \
    "${FIO_EXTRA[@]}" \
    --output-format=json --output="$out" >"${out%.json}.stdout" 2>"${out%.json}.stderr" ||
    die "fio ($variant, $name) failed (see ${out%.json}.stderr): $(tail -n 5 "${out%.json}.stderr")"
}

run_ours() { # name rw bs qd out
  local name=$1 rw=$2 bs=$3 qd=$4 out=$5
  timeout --kill-after=5 "$RUN_TIMEOUT" "$BENCH" device --filename "$FILE" --size "$SIZE" \
    --rw "$rw" --bs "$bs" --iodepth "$qd" --numjobs 1 \
    --runtime "$RUNTIME" --time_based --ramp_time "$RAMP" \
    --ioengine io_uring --output-format json --name "$name" \
    >"$out" 2>"${out%.json}.stderr" ||
    die "kiseki-bench device ($name) failed (see ${out%.json}.stderr): $(tail -n 5 "${out%.json}.stderr")"
}

VARIANTS=(fio-fixed fio-plain)
((FIO_ONLY)) || VARIANTS+=(ours)
NV=${#VARIANTS[@]}
WL_NAMES=()
for wl in "${WORKLOADS[@]}"; do
  read -r name _ <<<"$wl"
  WL_NAMES+=("$name")
  mkdir -p "$RESULTS/$name"
done

start=$SECONDS
for ((round = 1; round <= ROUNDS; round++)); do
  for wl in "${WORKLOADS[@]}"; do
    read -r name rw bs qd <<<"$wl"
    # Rotate which tool goes first so slow drift (thermal, SLC cache, page
    # writeback of other tenants) doesn't systematically favour one.
    for ((k = 0; k < NV; k++)); do
      v=${VARIANTS[$(((k + round - 1) % NV))]}
      out=$RESULTS/$name/r$round-$v.json
      if [[ $v == ours ]]; then
        run_ours "$name" "$rw" "$bs" "$qd" "$out"
      else
        run_fio "$v" "$name" "$rw" "$bs" "$qd" "$out"
      fi
    done
    brief=("fio fixedbufs=$RESULTS/$name/r$round-fio-fixed.json" "fio plain=$RESULTS/$name/r$round-fio-plain.json")
    ((FIO_ONLY)) || brief+=("ours=$RESULTS/$name/r$round-ours.json")
    log "round $round/$ROUNDS $name: $("${PY[@]}" brief "$name" "${brief[@]}")"
  done
done
log "runs took $((SECONDS - start)) s; raw JSON in $RESULTS"

HEADER="### kiseki-bench device vs fio, $(date -u +%F)

$MACHINE; $FIO_VERSION (io_uring, O_DIRECT, numjobs=1); ${SIZE} file on $(basename "$FILE"); $MODE; kiseki commit $COMMIT.
fio = the faster of fixedbufs+registerfiles and plain (by median); ours/fio = median of per-round paired ratios; p99 = completion latency; cpu/io = (usr+sys) CPU per I/O."

SUMMARY_ARGS=(--results "$RESULTS" --rounds "$ROUNDS" --header "$HEADER")
((FIO_ONLY)) && SUMMARY_ARGS+=(--no-ours)
"${PY[@]}" summarize "${SUMMARY_ARGS[@]}" "${WL_NAMES[@]}" | tee "$RESULTS/summary.txt"
