#!/usr/bin/env bash
# The test command (README, CI): installs what a fresh machine lacks, then runs the style
# checks, the tests, and a compile check of every hardware backend feature.
#
#   scripts/test.sh          everything
#
# Needs: Rust (rustup with cargo, rustfmt, clippy), python3 and openssl (the mTLS tests run
# the seed's openssl commands), boto3 (pip; the S3 client test); as root it installs the
# Debian packages it misses. Tests
# that need root (a ramfs mount for the O_DIRECT refusal) run only as root, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step is stamped with the seconds since the start, so a slow CI run shows where.
step() { printf '\n==> [%4d s] %s\n' "$SECONDS" "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

apt_updated=0
apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "scripts/test.sh: missing $*; install it (as root: apt-get install $*)" >&2
        exit 1
    fi
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

step "toolchain"
if ! have cargo; then
    echo "scripts/test.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
have python3 || apt_install python3
have openssl || apt_install openssl
# The S3 front end's client test drives it with boto3 (current, flexible checksums on).
if ! python3 -c 'import boto3' 2>/dev/null; then
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    python3 -m pip install --quiet boto3 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages boto3
fi
# The `rdma` feature builds rdma-sys: bindgen needs libclang, and the verbs libraries are
# found through pkg-config. No device is needed to build or test it.
rdma_debs=()
for deb in libibverbs-dev librdmacm-dev libclang-dev pkg-config; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q 'ok installed' || rdma_debs+=("$deb")
done
[ "${#rdma_debs[@]}" = 0 ] || apt_install "${rdma_debs[@]}"
if have rustup; then
    installed=$(rustup component list --installed)
    for component in rustfmt clippy; do
        grep -q "^$component" <<<"$installed" || rustup component add "$component"
    done
fi
cargo --version
python3 --version
openssl version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# The SPDK feature only changes `devices` and `bench`: check and test those two again with
# it rather than the whole workspace twice.
SPDK_CRATES=(-p kiseki-devices -p kiseki-bench)

step "cargo clippy with every hardware feature (spdk)"
cargo clippy "${SPDK_CRATES[@]}" --all-targets --features spdk -- -D warnings

# The RDMA feature only changes `fabric`: clippy and test it again with the feature (without a
# device, discovery must say "no RDMA device" and the selector must not offer RDMA).
step "cargo clippy -p kiseki-fabric --features rdma"
cargo clippy -p kiseki-fabric --all-targets --features rdma -- -D warnings

step "cargo test --workspace"
cargo test --workspace

step "cargo test -p kiseki-fabric --features rdma"
cargo test -p kiseki-fabric --features rdma

# With SPDK absent, the devices crate's SPDK backend must refuse clearly, and so must the
# bench's `--ioengine=spdk` (its CLI test): the bench's other test binaries do not change
# with the feature and are not rebuilt for it.
step "cargo test with every hardware feature (spdk: must refuse clearly without SPDK)"
cargo test -p kiseki-devices --features spdk
cargo test -p kiseki-bench --features spdk --test cli

# Each feature applies to the members that declare it: `spdk` to devices and bench, `rdma` to
# fabric.
step "cargo check --workspace --features spdk,rdma"
cargo check --workspace --features spdk,rdma

# Real S3 clients against a `kiseki-server dev` the script starts: aws-cli (Debian), boto3
# (pip), rclone (Debian) and curl; it installs the clients it misses.
step "S3 real-client suite against kiseki-server dev (boto3, aws-cli, rclone, curl)"
scripts/s3-client-suite.sh

step "engine crash test: a writer killed with SIGKILL, then recovery and verification (20 runs)"
scripts/crash-test.sh 20

echo
echo "scripts/test.sh: all checks passed in $SECONDS s"
