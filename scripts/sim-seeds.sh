#!/usr/bin/env bash
# The crash simulator at full length (issue 3): runs the engine's seeded power-cut simulator
# (engine/tests/shard.rs, `crash_simulation_keeps_every_acknowledged_op`) over N seeds in a
# release build. CI runs the default few hundred; this is the long run.
#
#   scripts/sim-seeds.sh [N]       N seeds, 0..N (default 10000)
#
# A failure names its seed; replay it with
#   KISEKI_SIM_SEED=<seed> cargo test --release -p kiseki-engine --test shard \
#       crash_simulation_keeps_every_acknowledged_op -- --exact --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=${1:-10000}
case "$seeds" in
    '' | *[!0-9]*)
        echo "usage: scripts/sim-seeds.sh [N]  (N: a number of seeds)" >&2
        exit 2
        ;;
esac

echo "sim-seeds: building the shard tests (release)"
cargo test --release --quiet -p kiseki-engine --test shard --no-run
started_ms=$(($(date +%s%N) / 1000000))
KISEKI_SIM_SEEDS=$seeds cargo test --release --quiet -p kiseki-engine --test shard \
    crash_simulation_keeps_every_acknowledged_op -- --exact --nocapture
elapsed_ms=$(($(date +%s%N) / 1000000 - started_ms))
echo "sim-seeds: $seeds seeds passed in $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000))) s"
