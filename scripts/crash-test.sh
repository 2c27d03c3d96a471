#!/usr/bin/env bash
# Crash safety for real (issue 3): kills a writer process with SIGKILL at random moments and
# checks, after each restart (recovery), every chunk whose put it acknowledged.
#
#   scripts/crash-test.sh [N]      N kill/verify rounds (default 20)
#
# The writer is `engine/examples/crash_writer.rs`: a shard on an io_uring device file (a
# preallocated 64 MiB file, O_DIRECT), putting, deduplicating and releasing chunks whose
# bytes follow from their id, and logging each acknowledged put to an ack log right after
# its ack. Each round: start the writer, let it run 50-500 ms (one round in 8: 1-15 ms, so
# that kills land in start-up and recovery, which writes a checkpoint and trims the journal
# and takes about 5 ms here), SIGKILL it, then run the verifier, which
# recovers the shard, checks every logged chunk is there with its logged reference count,
# and reads every stored chunk back against its expected bytes.
#
# Environment: KISEKI_CRASH_PROFILE, the cargo profile the writer is built with (default
# dev: the build `cargo test` already made, so CI compiles nothing more; `release` kills it
# among more writes per run); KISEKI_CRASH_DIR, where the device file goes (default target/ of the repo;
# it must take O_DIRECT, so not a tmpfs before Linux 6.6); KISEKI_CRASH_SEED, the first
# writer seed (default: random). On a loss the script exits 1 and keeps the device file and
# ack log for a post-mortem.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-20}
device_mib=64
kill_after_ms_min=50
kill_after_ms_max=500
early_kill_ms_min=1
early_kill_ms_max=15
first_seed=${KISEKI_CRASH_SEED:-$((RANDOM * 32768 + RANDOM))}

profile=${KISEKI_CRASH_PROFILE:-dev}
case "$profile" in
dev) profile_dir=debug ;;
release) profile_dir=release ;;
*)
    echo "crash-test: KISEKI_CRASH_PROFILE must be dev or release, not '$profile'" >&2
    exit 2
    ;;
esac
echo "crash-test: building the writer (profile $profile)"
cargo build --profile "$profile" --quiet -p kiseki-engine --example crash_writer
target_dir=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
    grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)}
writer="$target_dir/$profile_dir/examples/crash_writer"

parent=${KISEKI_CRASH_DIR:-$PWD/target}
mkdir -p "$parent"
dir=$(mktemp -d "$parent/crash-test.XXXXXX")
device="$dir/device"
ack_log="$dir/acks"
writer_pid=
keep_dir=0
cleanup() {
    if [ -n "$writer_pid" ]; then
        kill -KILL "$writer_pid" 2>/dev/null || true
        wait "$writer_pid" 2>/dev/null || true
    fi
    if [ "$keep_dir" = 0 ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT

fail() {
    keep_dir=1
    echo "crash-test: FAILED in run $run (writer seed $seed): $*" >&2
    echo "crash-test: device file and ack log kept in $dir" >&2
    exit 1
}

"$writer" format --device "$device" --size-mib "$device_mib"
started_ms=$(($(date +%s%N) / 1000000))
put_acks=0
kills=0
for ((run = 1; run <= runs; run++)); do
    seed=$((first_seed + run))
    "$writer" write --device "$device" --ack-log "$ack_log" --seed "$seed" --max-seconds 10 &
    writer_pid=$!
    if ((RANDOM % 8 == 0)); then
        low=$early_kill_ms_min high=$early_kill_ms_max
    else
        low=$kill_after_ms_min high=$kill_after_ms_max
    fi
    sleep "$(printf '0.%03d' $((low + RANDOM % (high - low + 1))))"
    if kill -KILL "$writer_pid" 2>/dev/null; then
        kills=$((kills + 1))
    fi
    status=0
    wait "$writer_pid" 2>/dev/null || status=$?  # no "Killed" job notice
    writer_pid=
    # 137 = killed by SIGKILL; 0 only if it ran out of time, which 500 ms never reach.
    if [ "$status" != 137 ] && [ "$status" != 0 ]; then
        fail "the writer exited with status $status before the kill"
    fi
    status=0
    summary=$("$writer" verify --device "$device" --ack-log "$ack_log") || status=$?
    if [ "$status" != 0 ]; then
        fail "the verifier exited with status $status (1 = acknowledged chunks lost)"
    fi
    put_acks=$(sed -n 's/.*put_acks=\([0-9]*\).*/\1/p' <<<"$summary")
    stored=$(sed -n 's/.* stored=\([0-9]*\).*/\1/p' <<<"$summary")
    if ((run % 20 == 0 || run == runs)); then
        echo "crash-test: run $run/$runs: $put_acks acks so far, $stored chunks stored now"
    fi
done
elapsed_ms=$(($(date +%s%N) / 1000000 - started_ms))
echo "crash-test: $kills of $runs writers killed mid-run, first seed $first_seed," \
    "$((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000))) s"
echo "crash-test: $runs runs, $put_acks acknowledged chunks verified, 0 lost"
