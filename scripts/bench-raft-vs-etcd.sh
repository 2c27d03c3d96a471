#!/usr/bin/env bash
# Kiseki's metadata Raft against etcd, same load, same durability, same machine, same run.
#
# Starts a 3-member etcd cluster (Debian's etcd-server, installed with apt-get when absent;
# fsync on every commit, etcd's default) and a 3-node Kiseki metadata cluster (`kiseki-server
# metadata`, redb fsync'd before every append and vote acknowledged, Raft over TCP+mTLS), all
# on 127.0.0.1, each with its data in a temporary directory. Then drives both with
# `kiseki-bench raft` (the same load generator: --concurrency workers, one put of --bs bytes
# under a fresh key in flight each, puts at the leader) in alternating rounds, and prints
# each round, a table of the medians, and last a line `ratio <x>`: Kiseki's committed puts
# per second over etcd's.
#
# Security alike too: with ETCD_TLS=1 (the default) etcd's members talk to each other and to
# the bench over TLS with client certificates of the same throwaway CA Kiseki uses, as
# Kiseki's do over its mTLS; ETCD_TLS=0 runs etcd in plaintext (its out-of-the-box setup).
#
# Settings (environment): ROUNDS (3), RUNTIME seconds per round (5), RAMP seconds (1),
# CONCURRENCY (64), BS value bytes (256), ETCD_TLS (1), CARGO_TARGET_DIR (target).
# Everything it starts is stopped on exit, and its temporary directory removed.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-5}
RAMP=${RAMP:-1}
CONCURRENCY=${CONCURRENCY:-64}
BS=${BS:-256}
ETCD_TLS=${ETCD_TLS:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release

ETCD_CLIENT_PORTS=(23791 23792 23793)
ETCD_PEER_PORTS=(23801 23802 23803)
KISEKI_PORTS=(27101 27102 27103)

say() { printf '%s\n' "$*" >&2; }

if ! command -v etcd >/dev/null 2>&1; then
    say "installing etcd-server and etcd-client (Debian) ..."
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server etcd-client >&2
fi
# Debian's package may start its own etcd on 2379; ours use other ports and data dirs.

say "building kiseki-server and kiseki-bench (release) ..."
(cd "$ROOT" && nice -n 19 cargo build --release -q -p kiseki-gateway -p kiseki-bench --bins)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiseki-raft-vs-etcd.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# ---- one throwaway CA: a server certificate per node and member, one for the bench ----
"$BIN/kiseki-server" ca init --out "$WORK/ca" >/dev/null
for i in 1 2 3 e0 e1 e2 client; do
    "$BIN/kiseki-server" cert issue --ca "$WORK/ca" --role server --name "$i" \
        --san 127.0.0.1 --out "$WORK/tls" >/dev/null
done
mkdir -m 0700 "$WORK/bench-tls"
cp "$WORK/ca/ca.crt" "$WORK/ca/crl.pem" "$WORK/bench-tls/"
cp "$WORK/tls/client.crt" "$WORK/tls/client.key" "$WORK/bench-tls/"

# ---- etcd: 3 members ----
scheme=http
if [ "$ETCD_TLS" = 1 ]; then scheme=https; fi
cluster=""
for i in 0 1 2; do
    cluster+="${cluster:+,}e$i=$scheme://127.0.0.1:${ETCD_PEER_PORTS[$i]}"
done
endpoints=""
for i in 0 1 2; do
    tls=()
    if [ "$ETCD_TLS" = 1 ]; then
        tls=(--cert-file "$WORK/tls/e$i.crt" --key-file "$WORK/tls/e$i.key"
            --client-cert-auth --trusted-ca-file "$WORK/ca/ca.crt"
            --peer-cert-file "$WORK/tls/e$i.crt" --peer-key-file "$WORK/tls/e$i.key"
            --peer-client-cert-auth --peer-trusted-ca-file "$WORK/ca/ca.crt")
    fi
    etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
        --listen-client-urls "$scheme://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
        --advertise-client-urls "$scheme://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
        --listen-peer-urls "$scheme://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
        --initial-advertise-peer-urls "$scheme://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
        --initial-cluster "$cluster" --initial-cluster-state new \
        --initial-cluster-token kiseki-bench --log-level error "${tls[@]}" \
        >"$WORK/etcd-$i.log" 2>&1 &
    PIDS+=($!)
    endpoints+="${endpoints:+,}$scheme://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}"
done
etcdctl_tls=()
etcd_bench_tls=()
if [ "$ETCD_TLS" = 1 ]; then
    etcdctl_tls=(--cacert "$WORK/ca/ca.crt" --cert "$WORK/tls/client.crt"
        --key "$WORK/tls/client.key")
    etcd_bench_tls=(--etcd-tls-dir "$WORK/bench-tls")
fi

# ---- Kiseki: 3 metadata nodes ----
connect=""
for i in 1 2 3; do
    peers=()
    for j in 1 2 3; do
        if [ "$j" != "$i" ]; then peers+=(--peer "$j=127.0.0.1:${KISEKI_PORTS[$((j - 1))]}"); fi
    done
    init=()
    if [ "$i" = 1 ]; then init=(--init); fi
    "$BIN/kiseki-server" metadata --node-id "$i" --listen "127.0.0.1:${KISEKI_PORTS[$((i - 1))]}" \
        --data-dir "$WORK/kiseki-$i" "${peers[@]}" "${init[@]}" \
        --ca "$WORK/ca/ca.crt" --cert "$WORK/tls/$i.crt" --key "$WORK/tls/$i.key" \
        --crl "$WORK/ca/crl.pem" >"$WORK/kiseki-$i.out" 2>"$WORK/kiseki-$i.log" &
    PIDS+=($!)
    connect+="${connect:+,}127.0.0.1:${KISEKI_PORTS[$((i - 1))]}"
done

# ---- wait for both clusters ----
for _ in $(seq 100); do
    if ETCDCTL_API=3 etcdctl "${etcdctl_tls[@]}" --endpoints "$endpoints" endpoint health \
        >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
ETCDCTL_API=3 etcdctl "${etcdctl_tls[@]}" --endpoints "$endpoints" endpoint health >&2 \
    || { say "etcd did not come up; see $WORK/etcd-*.log"; exit 1; }
for i in 1 2 3; do
    for _ in $(seq 100); do
        if grep -q '^ready:' "$WORK/kiseki-$i.out"; then break; fi
        sleep 0.1
    done
    grep -q '^ready:' "$WORK/kiseki-$i.out" \
        || { say "kiseki node $i did not come up:"; cat "$WORK/kiseki-$i.log" >&2; exit 1; }
done
say "etcd $(etcd --version | head -1 | awk '{print $3}') and kiseki up; $ROUNDS round(s) of" \
    "${RUNTIME}s, concurrency $CONCURRENCY, $BS-byte values, etcd TLS=$ETCD_TLS"

# ---- alternating rounds ----
run() { # target, then its flags; prints "ops_per_s p99_us p50_us"
    local target=$1
    shift
    "$BIN/kiseki-bench" raft --target "$target" "$@" --concurrency "$CONCURRENCY" \
        --runtime "$RUNTIME" --ramp_time "$RAMP" --bs "$BS" --output-format json \
        | python3 -c 'import json,sys; w=json.load(sys.stdin)["jobs"][0]["write"]; p=w["clat_ns"]["percentile"]; print("%.0f %.0f %.0f" % (w["iops"], p["99.000000"]/1000, p["50.000000"]/1000))'
}
ours=()
theirs=()
printf '%-6s %-7s %12s %10s %10s\n' round target "ops/s" "p50 us" "p99 us"
for round in $(seq "$ROUNDS"); do
    read -r e_ops e_p99 e_p50 < <(run etcd --endpoints "$endpoints" "${etcd_bench_tls[@]}")
    printf '%-6s %-7s %12s %10s %10s\n' "$round" etcd "$e_ops" "$e_p50" "$e_p99"
    read -r k_ops k_p99 k_p50 < <(run kiseki --connect "$connect" --tls-dir "$WORK/bench-tls")
    printf '%-6s %-7s %12s %10s %10s\n' "$round" kiseki "$k_ops" "$k_p50" "$k_p99"
    theirs+=("$e_ops $e_p99")
    ours+=("$k_ops $k_p99")
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
k_ops=$(printf '%s\n' "${ours[@]}" | awk '{print $1}' | median)
k_p99=$(printf '%s\n' "${ours[@]}" | awk '{print $2}' | median)
e_ops=$(printf '%s\n' "${theirs[@]}" | awk '{print $1}' | median)
e_p99=$(printf '%s\n' "${theirs[@]}" | awk '{print $2}' | median)
echo
printf '%-8s %12s %10s   (medians of %s rounds)\n' target "ops/s" "p99 us" "$ROUNDS"
printf '%-8s %12s %10s\n' kiseki "$k_ops" "$k_p99" etcd "$e_ops" "$e_p99"
awk -v k="$k_ops" -v e="$e_ops" 'BEGIN { printf "ratio %.2f\n", k / e }'
