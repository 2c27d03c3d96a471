#!/usr/bin/env bash
# Kiseki's S3 front end against a peer S3 server: same load, same machine, same run.
#
# The peer is s3s-fs (the `s3s` crate's file-system server, the S3 library Kiseki's gateway
# is built on), installed with `cargo install` into a cache directory when absent. It
# serves plain HTTP from files in the page cache, without fsync, encryption or
# consensus; Kiseki serves HTTPS (TLS 1.3), seals every object (AES-256-GCM), commits each
# manifest through its Raft group (fsync'd redb) and writes chunks with O_DIRECT. Both run
# on 127.0.0.1 with their data in one temporary directory: `kiseki-server dev` (release
# build, a fresh data dir) and `s3s-fs`.
#
# Each case is driven by `kiseki-bench s3` (the same load generator: --concurrency workers,
# each with its own kept-alive connection and one request in flight, SigV4 signed): 64 KiB
# and 4 MiB objects, PUT then GET (GET first PUTs its key space), the peer and Kiseki in
# alternating order. Then one latency case: 4 KiB GETs, one at a time. It prints each
# round, a table of the medians with Kiseki's MiB/s over the peer's per case, and last a
# line `min ratio <x>`: the lowest of those ratios.
#
# A 503 answer (SlowDown: Kiseki's engine had no free buffer or queue slot) is retried up to
# RETRIES times after 1, 2, 4 ... 100 ms, as S3 clients retry it; the retries are counted in
# each row (a request that still fails stops the script).
#
# Settings (environment): ROUNDS (1), RUNTIME seconds per case (5), RAMP seconds (1),
# CONCURRENCY (16), RETRIES (100), PEER_VERSION (0.14.1), PEER_PORT (28014), DEVICE_SIZE of
# Kiseki's device file (2G), KISEKI_BENCH_CACHE (~/.cache/kiseki-bench: where the peer is
# installed), CARGO_TARGET_DIR (target).
# Everything it starts is stopped on exit, and its temporary directory removed.

set -euo pipefail

ROUNDS=${ROUNDS:-1}
RUNTIME=${RUNTIME:-5}
RAMP=${RAMP:-1}
CONCURRENCY=${CONCURRENCY:-16}
RETRIES=${RETRIES:-100}
PEER_VERSION=${PEER_VERSION:-0.14.1}
PEER_PORT=${PEER_PORT:-28014}
DEVICE_SIZE=${DEVICE_SIZE:-2G}
CACHE=${KISEKI_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiseki-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
PEER_ROOT=$CACHE/s3s-fs-$PEER_VERSION
PEER_BIN=$PEER_ROOT/bin/s3s-fs

# case name, --bs, --objects (the key space: GETs read it, PUTs overwrite it)
CASES=("64k 65536 256" "4m 4194304 32")

say() { printf '%s\n' "$*" >&2; }

if [ ! -x "$PEER_BIN" ]; then
    say "installing s3s-fs $PEER_VERSION into $PEER_ROOT (cargo install, a few minutes) ..."
    nice -n 19 cargo install s3s-fs --version "=$PEER_VERSION" --features binary --locked \
        --root "$PEER_ROOT" >&2
fi

say "building kiseki-server and kiseki-bench (release) ..."
(cd "$ROOT" && nice -n 19 cargo build --release -q -p kiseki-gateway -p kiseki-bench --bins)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiseki-s3-vs-peer.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# ---- Kiseki: one dev node, every port but S3's picked free, printed on start ----
"$BIN/kiseki-server" dev --data-dir "$WORK/kiseki-data" --device-size "$DEVICE_SIZE" \
    --s3-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --fabric-addr 127.0.0.1:0 \
    >"$WORK/kiseki.out" 2>"$WORK/kiseki.log" &
PIDS+=($!)
for _ in $(seq 600); do
    if grep -q '^ready:' "$WORK/kiseki.out"; then break; fi
    sleep 0.1
done
grep -q '^ready:' "$WORK/kiseki.out" \
    || { say "kiseki-server dev did not come up:"; cat "$WORK/kiseki.log" >&2; exit 1; }
field() { awk -v label="$1" '$0 ~ "^  " label ":" { sub("^  " label ": *", ""); print $1; exit }' \
    "$WORK/kiseki.out"; }
KISEKI_ENDPOINT=$(field S3)
KISEKI_CA=$(field "CA bundle")
KISEKI_ACCESS_KEY=$(field "access key")
KISEKI_SECRET=$(field "secret key")

# ---- the peer ----
PEER_ACCESS_KEY=bench
PEER_SECRET=$(head -c 30 /dev/urandom | base64 | tr '+/' '-_')
mkdir "$WORK/peer-data"
"$PEER_BIN" --host 127.0.0.1 --port "$PEER_PORT" --access-key "$PEER_ACCESS_KEY" \
    --secret-key "$PEER_SECRET" "$WORK/peer-data" >"$WORK/peer.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PEER_PORT") 2>/dev/null; then break; fi
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$PEER_PORT") 2>/dev/null \
    || { say "s3s-fs did not come up on $PEER_PORT:"; cat "$WORK/peer.log" >&2; exit 1; }
say "kiseki ($KISEKI_ENDPOINT) and s3s-fs $PEER_VERSION (http://127.0.0.1:$PEER_PORT) up;" \
    "$ROUNDS round(s) of ${RUNTIME}s per case, concurrency $CONCURRENCY"

# ---- the load ----
# Prints "MiB/s ops/s p50_us p99_us retries", or nothing when the run failed (then the caller's
# read fails and the script stops).
run() { # target, rw, bs, objects, concurrency
    local target=$1 rw=$2 bs=$3 objects=$4 concurrency=$5 direction=write
    local flags
    if [ "$rw" = get ]; then direction=read; fi
    if [ "$target" = kiseki ]; then
        flags=(--endpoint "$KISEKI_ENDPOINT" --ca "$KISEKI_CA")
        export AWS_ACCESS_KEY_ID=$KISEKI_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$KISEKI_SECRET
    else
        flags=(--endpoint "http://127.0.0.1:$PEER_PORT")
        export AWS_ACCESS_KEY_ID=$PEER_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$PEER_SECRET
    fi
    if ! "$BIN/kiseki-bench" s3 "${flags[@]}" --bucket kiseki-bench --rw "$rw" --bs "$bs" \
        --objects "$objects" --concurrency "$concurrency" --runtime "$RUNTIME" \
        --ramp_time "$RAMP" --retries "$RETRIES" --output-format json \
        >"$WORK/last.json" 2>>"$WORK/bench.log"; then
        say "kiseki-bench s3 --rw $rw --bs $bs against $target failed:"
        tail -5 "$WORK/bench.log" >&2
        return 1
    fi
    python3 -c 'import json,sys
d = json.load(sys.stdin)["jobs"][0][sys.argv[1]]
p = d["clat_ns"]["percentile"]
print("%.1f %.0f %.0f %.0f %d" % (d["bw_bytes"] / 2**20, d["iops"], p["50.000000"] / 1000,
                                 p["99.000000"] / 1000, d["retries"]))' "$direction" \
        <"$WORK/last.json"
}

declare -A results
ROW='%-6s %-10s %-7s %10s %10s %10s %10s %8s\n'
# shellcheck disable=SC2059
printf "$ROW" round case target "MiB/s" "ops/s" "p50 us" "p99 us" retries
for round in $(seq "$ROUNDS"); do
    for case in "${CASES[@]}"; do
        read -r name bs objects <<<"$case"
        for rw in put get; do
            order=(peer kiseki)
            if [ $((round % 2)) = 0 ]; then order=(kiseki peer); fi
            for target in "${order[@]}"; do
                read -r mib ops p50 p99 retries \
                    < <(run "$target" "$rw" "$bs" "$objects" "$CONCURRENCY")
                # shellcheck disable=SC2059
                printf "$ROW" "$round" "$name-$rw" "$target" "$mib" "$ops" "$p50" "$p99" "$retries"
                results["$name-$rw $target"]+="$mib $p50 $p99;"
            done
        done
    done
    for target in peer kiseki; do
        read -r mib ops p50 p99 retries < <(run "$target" get 4096 256 1)
        # shellcheck disable=SC2059
        printf "$ROW" "$round" 4k-get-c1 "$target" "$mib" "$ops" "$p50" "$p99" "$retries"
        results["4k-get-c1 $target"]+="$mib $p50 $p99;"
    done
done

median() { # field number; reads "a b c;" records
    tr ';' '\n' | awk -v f="$1" 'NF { print $f }' | sort -n \
        | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}
echo
printf '%-10s %12s %12s %7s %12s %12s   (medians of %s round(s))\n' case "kiseki MiB/s" \
    "peer MiB/s" ratio "kiseki p50" "peer p50" "$ROUNDS"
ratios=()
for case in "${CASES[@]}"; do
    read -r name _ _ <<<"$case"
    for rw in put get; do
        k=$(median 1 <<<"${results["$name-$rw kiseki"]}")
        p=$(median 1 <<<"${results["$name-$rw peer"]}")
        k50=$(median 2 <<<"${results["$name-$rw kiseki"]}")
        p50=$(median 2 <<<"${results["$name-$rw peer"]}")
        ratio=$(awk -v k="$k" -v p="$p" 'BEGIN { printf "%.2f", k / p }')
        ratios+=("$ratio")
        printf '%-10s %12s %12s %7s %9s us %9s us\n' "$name-$rw" "$k" "$p" "$ratio" "$k50" "$p50"
    done
done
k50=$(median 2 <<<"${results["4k-get-c1 kiseki"]}")
p50=$(median 2 <<<"${results["4k-get-c1 peer"]}")
printf '4 KiB GET, one at a time: p50 kiseki %s us, peer %s us\n' "$k50" "$p50"
printf '%s\n' "${ratios[@]}" | sort -n | head -1 | awk '{ printf "min ratio %s\n", $1 }'
