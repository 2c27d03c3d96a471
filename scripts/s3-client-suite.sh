#!/usr/bin/env bash
# The real-client suite (issue 8): starts `kiseki-server dev` on a fresh data dir and drives
# its S3 front end with aws-cli (Debian `awscli`), boto3 (pip, current: flexible checksums
# on by default), rclone (Debian) and curl (presigned GETs), then checks what the node left
# behind: no plaintext on the device file, no secret in its log.
#
#   scripts/s3-client-suite.sh             build the debug kiseki-server, run everything
#   KISEKI_SERVER=path scripts/s3-client-suite.sh    use that binary instead
#
# Two tenants: org `dev` with the key the node prints, and org `globex` with a key made by
# `kiseki-server s3-credentials create` (node stopped, globex's tenant admin) between a first
# and a second start. Every response is checked: bytes, ETags, status codes, S3 error codes.
# As root it installs the clients it misses; otherwise it says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

step() { printf '\n--> %s\n' "$*"; }
fail() {
    echo "s3-client-suite: FAILED: $*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# ---- Clients ----
# Each client is given the node's CA explicitly; a bundle from the environment would only
# get in the way (rclone's S3 SDK refuses --ca-cert when AWS_CA_BUNDLE is set).
unset AWS_CA_BUNDLE AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN
# The Debian aws-cli, by path: a pip aws-cli elsewhere on the PATH would be another client.
AWS_BIN=/usr/bin/aws
missing=()
[ -x "$AWS_BIN" ] || missing+=(awscli)
have rclone || missing+=(rclone)
have curl || missing+=(curl)
have faketime || missing+=(faketime)
if [ "${#missing[@]}" != 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        fail "missing ${missing[*]}; install them (as root: apt-get install ${missing[*]})"
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import boto3' 2>/dev/null; then
    python3 -m pip install --quiet boto3 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages boto3
fi
"$AWS_BIN" --version
rclone version | sed -n 1p
python3 -c 'import boto3; print("boto3", boto3.__version__)'

if [ -z "${KISEKI_SERVER:-}" ]; then
    cargo build --quiet -p kiseki-gateway --bin kiseki-server
    KISEKI_SERVER="$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/kiseki-server"
fi

work=$(mktemp -d /tmp/kiseki-s3-suite.XXXXXX)
data="$work/data"
node_pid=""
cleanup() {
    if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
        kill -TERM "$node_pid" 2>/dev/null || true
        wait "$node_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# ---- The node ----
# Starts the dev node on free ports and waits for its ready line; sets S3_URL, S3_PORT,
# DEV_KEY and DEV_SECRET from what it prints.
start_node() {
    local log="$work/node-$1"
    "$KISEKI_SERVER" dev --data-dir "$data" --device-size 512M --cores 1 \
        --s3-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --fabric-addr 127.0.0.1:0 \
        --grpc-addr 127.0.0.1:0 \
        >"$log.out" 2>"$log.err" &
    node_pid=$!
    for _ in $(seq 1 600); do
        grep -q '^ready:' "$log.out" 2>/dev/null && break
        kill -0 "$node_pid" 2>/dev/null || fail "kiseki-server dev exited: $(cat "$log.err")"
        sleep 0.1
    done
    grep -q '^ready:' "$log.out" || fail "kiseki-server dev not ready after 60 s"
    S3_URL=$(sed -n 's/^  S3: *\(https:[^ ]*\).*/\1/p' "$log.out")
    S3_PORT=${S3_URL##*:}
    DEV_KEY=$(sed -n 's/^  access key: *//p' "$log.out")
    DEV_SECRET=$(sed -n 's/^  secret key: *//p' "$log.out")
    [ -n "$S3_URL" ] && [ -n "$DEV_KEY" ] && [ -n "$DEV_SECRET" ] ||
        fail "the node did not print its S3 address and key"
}

stop_node() {
    kill -TERM "$node_pid"
    local status=0
    wait "$node_pid" || status=$?
    node_pid=""
    [ "$status" = 0 ] || fail "kiseki-server dev exited $status on SIGTERM"
}

step "first start: the data dir, the dev tenant and its key"
start_node 1
first_key=$DEV_KEY
stop_node

step "tenant globex: its admin's certificate, then an S3 key by s3-credentials create"
"$KISEKI_SERVER" cert issue --ca "$data/tls/ca" --role tenant --org globex --name bob \
    --out "$work/bob" >/dev/null
echo '{"auditor": {"Audit": ["Read"]}}' >"$work/policy.json"
echo '{"tenant-admin": ["globex/bob"]}' >"$work/scope.json"
made=$("$KISEKI_SERVER" s3-credentials create --data-dir "$data" --tenant-id globex \
    --workload-id suite --ca "$data/tls/ca/ca.crt" --cert "$work/bob/bob.crt" \
    --key "$work/bob/bob.key" --policy-file "$work/policy.json" --scope-file "$work/scope.json")
GLOBEX_KEY=$(sed -n 's/^access key: *//p' <<<"$made")
GLOBEX_SECRET=$(sed -n 's/^secret key: *//p' <<<"$made")
[ "${#GLOBEX_KEY}" = 21 ] && [ "${#GLOBEX_SECRET}" = 40 ] || fail "s3-credentials printed: $made"

step "second start: the same data dir and key"
start_node 2
[ "$DEV_KEY" = "$first_key" ] || fail "the dev key changed across a restart"
CA="$data/tls/ca/ca.crt"

# ---- boto3: every served operation and the negatives ----
step "boto3 ($(python3 -c 'import boto3; print(boto3.__version__)')): tests/s3_boto3.py"
KISEKI_S3_ENDPOINT=$S3_URL KISEKI_S3_CA=$CA KISEKI_S3_CHUNK=$((1 << 20)) \
    KISEKI_S3_ALICE_KEY=$DEV_KEY KISEKI_S3_ALICE_SECRET=$DEV_SECRET \
    KISEKI_S3_BOB_KEY=$GLOBEX_KEY KISEKI_S3_BOB_SECRET=$GLOBEX_SECRET \
    python3 gateway/tests/s3_boto3.py >"$work/boto3.log" 2>&1 ||
    fail "boto3 suite: $(tail -30 "$work/boto3.log")"
grep -q 'every check passed' "$work/boto3.log" || fail "boto3 suite: $(tail -30 "$work/boto3.log")"
echo "boto3: every check passed"

# ---- aws-cli ----
aws_as() { # KEY SECRET args...: the Debian aws-cli as that key's holder
    local key=$1 secret=$2
    shift 2
    AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret AWS_DEFAULT_REGION=us-east-1 \
        AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_PAGER= \
        "$AWS_BIN" --endpoint-url "$S3_URL" --ca-bundle "$CA" "$@"
}
dev_aws() { aws_as "$DEV_KEY" "$DEV_SECRET" "$@"; }
# expect_code CODE command...: the command fails with that S3 error code.
expect_code() {
    local code=$1 output
    shift
    if output=$("$@" 2>&1); then
        fail "expected $code, succeeded: $*"
    fi
    grep -q "($code)" <<<"$output" || fail "expected $code from: $*; got: $output"
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
md5hex() { md5sum "$1" | cut -c1-32; }

files="$work/files"
mkdir -p "$files"
# Text with a marker that must never reach the device file in the clear, and binary bodies.
python3 - "$files" <<'EOF'
import hashlib, sys
d = sys.argv[1]
with open(f"{d}/marker.txt", "w") as f:
    for i in range(40000):
        f.write(f"KISEKI-SUITE-PLAINTEXT-MARKER line {i:06d}\n")
def body(size, seed):
    out = bytearray()
    n = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d-%d" % (seed, n)).digest()
        n += 1
    return bytes(out[:size])
open(f"{d}/big.bin", "wb").write(body(20 << 20, 1))
for i in range(3):
    open(f"{d}/part{i + 1}.bin", "wb").write(body(5 << 20, 10 + i))
open(f"{d}/small.txt", "wb").write(b"hello from aws-cli\n")
EOF

step "aws-cli ($("$AWS_BIN" --version 2>&1 | cut -d' ' -f1)): buckets, objects, multipart"
dev_aws s3 mb s3://suite >/dev/null
dev_aws s3api head-bucket --bucket suite
[ "$(dev_aws s3api get-bucket-location --bucket suite | json 'd.get("LocationConstraint")')" = None ] ||
    fail "GetBucketLocation"
# Versioning never enabled: no status at all (rclone asks this before deleting).
[ -z "$(dev_aws s3api get-bucket-versioning --bucket suite)" ] || fail "GetBucketVersioning"
expect_code NoSuchBucket dev_aws s3api get-bucket-versioning --bucket no-such-bucket
grep -q ' suite$' <<<"$(dev_aws s3 ls)" || fail "s3 ls does not list the bucket"

# A 20 MiB file: aws-cli uploads it in 8 MiB parts; it comes back byte for byte.
dev_aws s3 cp "$files/big.bin" s3://suite/big.bin >/dev/null
dev_aws s3 cp s3://suite/big.bin "$work/big.back" >/dev/null
cmp "$files/big.bin" "$work/big.back" || fail "s3 cp round trip"
etag=$(dev_aws s3api head-object --bucket suite --key big.bin | json 'd["ETag"]')
[[ "$etag" == *-3\" ]] || fail "a 3-part upload's ETag is md5-of-md5s-3, got $etag"

# A single PUT: ETag = MD5, user metadata and content type kept.
etag=$(dev_aws s3api put-object --bucket suite --key small.txt --body "$files/small.txt" \
    --content-type text/plain --metadata owner=suite | json 'd["ETag"]')
[ "$etag" = "\"$(md5hex "$files/small.txt")\"" ] || fail "PUT ETag $etag"
head=$(dev_aws s3api head-object --bucket suite --key small.txt)
[ "$(json 'd["Metadata"]["owner"]' <<<"$head")" = suite ] || fail "user metadata: $head"
[ "$(json 'd["ContentType"]' <<<"$head")" = text/plain ] || fail "content type: $head"
[ "$(json 'd["ContentLength"]' <<<"$head")" = 19 ] || fail "content length: $head"

# Multipart by hand: three 5 MiB parts; the ETag is S3's md5-of-md5s-3.
upload=$(dev_aws s3api create-multipart-upload --bucket suite --key parts.bin | json 'd["UploadId"]')
parts=""
for n in 1 2 3; do
    etag=$(dev_aws s3api upload-part --bucket suite --key parts.bin --upload-id "$upload" \
        --part-number "$n" --body "$files/part$n.bin" | json 'd["ETag"]')
    [ "$etag" = "\"$(md5hex "$files/part$n.bin")\"" ] || fail "part $n ETag $etag"
    parts="$parts{\"ETag\":$etag,\"PartNumber\":$n},"
done
listed=$(dev_aws s3api list-parts --bucket suite --key parts.bin --upload-id "$upload" |
    json 'len(d["Parts"])')
[ "$listed" = 3 ] || fail "ListParts shows $listed parts"
grep -q "$upload" <<<"$(dev_aws s3api list-multipart-uploads --bucket suite)" ||
    fail "ListMultipartUploads does not show the upload"
etag=$(dev_aws s3api complete-multipart-upload --bucket suite --key parts.bin \
    --upload-id "$upload" --multipart-upload "{\"Parts\":[${parts%,}]}" | json 'd["ETag"]')
want=$(python3 - "$files" <<'EOF'
import hashlib, sys
digests = b"".join(hashlib.md5(open(f"{sys.argv[1]}/part{n}.bin", "rb").read()).digest()
                   for n in (1, 2, 3))
print(f'"{hashlib.md5(digests).hexdigest()}-3"')
EOF
)
[ "$etag" = "$want" ] || fail "multipart ETag $etag, S3 computes $want"
cat "$files"/part{1,2,3}.bin >"$work/parts.want"
dev_aws s3 cp s3://suite/parts.bin "$work/parts.back" >/dev/null
cmp "$work/parts.want" "$work/parts.back" || fail "multipart object bytes"

# Ranged GETs at the 1 MiB chunk boundary and across the part boundary.
for range in 1048575-1048576 5242879-5242880 0-0 15728639-15728639; do
    first=${range%-*} last=${range#*-}
    dev_aws s3api get-object --bucket suite --key parts.bin --range "bytes=$range" \
        "$work/range.back" >/dev/null
    python3 -c 'import sys; f, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]); sys.stdout.buffer.write(open(f, "rb").read()[a:b + 1])' \
        "$work/parts.want" "$first" "$last" >"$work/range.want"
    cmp "$work/range.want" "$work/range.back" || fail "range $range"
done

# Abort: the upload is gone.
aborted=$(dev_aws s3api create-multipart-upload --bucket suite --key gone.bin | json 'd["UploadId"]')
dev_aws s3api abort-multipart-upload --bucket suite --key gone.bin --upload-id "$aborted"
expect_code NoSuchUpload dev_aws s3api list-parts --bucket suite --key gone.bin --upload-id "$aborted"

# Copy, ListObjectsV2 pages, ListObjects v1, versions, batch delete.
dev_aws s3api copy-object --bucket suite --key copy.txt --copy-source suite/small.txt >/dev/null
dev_aws s3 cp s3://suite/copy.txt - | cmp - "$files/small.txt" || fail "CopyObject bytes"
for n in 1 2 3 4 5; do
    dev_aws s3api put-object --bucket suite --key "page/$n" --body "$files/small.txt" >/dev/null
done
token="" seen=0 pages=0
while :; do
    args=(--bucket suite --prefix page/ --max-keys 2)
    [ -z "$token" ] || args+=(--continuation-token "$token")
    page=$(dev_aws s3api list-objects-v2 "${args[@]}")
    seen=$((seen + $(json 'len(d.get("Contents", []))' <<<"$page")))
    pages=$((pages + 1))
    token=$(json 'd.get("NextContinuationToken", "")' <<<"$page")
    [ -n "$token" ] || break
done
[ "$seen" = 5 ] && [ "$pages" = 3 ] || fail "ListObjectsV2 pages: $seen keys in $pages pages"
prefixes=$(dev_aws s3api list-objects-v2 --bucket suite --delimiter / |
    json '[p["Prefix"] for p in d.get("CommonPrefixes", [])]')
[ "$prefixes" = "['page/']" ] || fail "delimiter: $prefixes"
v1=$(dev_aws s3api list-objects --bucket suite --prefix page/ --max-items 10 | json 'len(d["Contents"])')
[ "$v1" = 5 ] || fail "ListObjects v1: $v1"
version=$(dev_aws s3api list-object-versions --bucket suite --prefix small.txt |
    json 'd["Versions"][0]["VersionId"]')
[ "$version" = null ] || fail "ListObjectVersions: $version"
deleted=$(dev_aws s3api delete-objects --bucket suite \
    --delete '{"Objects":[{"Key":"page/1"},{"Key":"page/2"},{"Key":"absent"}]}' |
    json 'len(d["Deleted"])')
[ "$deleted" = 3 ] || fail "DeleteObjects deleted $deleted"

# Conditional GETs (this aws-cli has no conditional PUT; boto3 above sends them).
etag=$(dev_aws s3api head-object --bucket suite --key small.txt | json 'd["ETag"]')
dev_aws s3api get-object --bucket suite --key small.txt --if-match "$etag" "$work/c" >/dev/null
expect_code PreconditionFailed dev_aws s3api get-object --bucket suite --key small.txt --if-match '"0"' "$work/c"
expect_code 304 dev_aws s3api get-object --bucket suite --key small.txt --if-none-match "$etag" "$work/c"

step "curl: presigned GETs"
url=$(dev_aws s3 presign s3://suite/small.txt --expires-in 300)
curl -sf --cacert "$CA" "$url" | cmp - "$files/small.txt" || fail "presigned GET"
status=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" "${url/small.txt/copy.txt}")
[ "$status" = 403 ] || fail "a presigned URL used for another key: $status"

step "negatives: wrong secret, unknown key, skewed clock, another tenant, plaintext"
expect_code SignatureDoesNotMatch aws_as "$DEV_KEY" "${DEV_SECRET%?}x" s3 ls
expect_code InvalidAccessKeyId aws_as KSKNOBODYHOLDSTHIS0 "$DEV_SECRET" s3 ls
# A clock 20 minutes ahead signs a request S3 refuses (behind, the node's certificate would
# not be valid yet for the client).
skewed_aws() {
    AWS_ACCESS_KEY_ID=$DEV_KEY AWS_SECRET_ACCESS_KEY=$DEV_SECRET AWS_DEFAULT_REGION=us-east-1 \
        AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        faketime -f +20m "$AWS_BIN" --endpoint-url "$S3_URL" --ca-bundle "$CA" "$@"
}
expect_code RequestTimeTooSkewed skewed_aws s3api list-buckets
globex_aws() { aws_as "$GLOBEX_KEY" "$GLOBEX_SECRET" "$@"; }
[ "$(globex_aws s3api list-buckets | json 'len(d["Buckets"])')" = 0 ] || fail "globex sees dev's buckets"
expect_code AccessDenied globex_aws s3api get-object --bucket suite --key small.txt "$work/x"
expect_code AccessDenied globex_aws s3api list-objects-v2 --bucket suite
expect_code AccessDenied globex_aws s3api get-bucket-versioning --bucket suite
expect_code BucketAlreadyExists globex_aws s3api create-bucket --bucket suite
status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$S3_PORT/" || true)
# curl's 000: no HTTP answer at all (a TLS port does not speak plaintext HTTP).
[ "$status" = 000 ] || fail "plaintext HTTP to the HTTPS port answered $status"

# ---- rclone ----
step "rclone ($(rclone version | sed -n '1s/^rclone //p')): copy, check, cat, multipart, purge"
export RCLONE_CONFIG_KISEKI_TYPE=s3 RCLONE_CONFIG_KISEKI_PROVIDER=Other \
    RCLONE_CONFIG_KISEKI_ACCESS_KEY_ID=$DEV_KEY \
    RCLONE_CONFIG_KISEKI_SECRET_ACCESS_KEY=$DEV_SECRET \
    RCLONE_CONFIG_KISEKI_ENDPOINT=$S3_URL RCLONE_CONFIG_KISEKI_REGION=us-east-1
# Every rclone message goes to its log too: an ERROR line there fails the suite at the end.
rc() { rclone --config /dev/null --ca-cert "$CA" --s3-upload-cutoff 5M --s3-chunk-size 5M \
    --retries 1 --low-level-retries 1 "$@" 2> >(tee -a "$work/rclone.log" >&2); }
rc mkdir kiseki:rclone
rc copy "$files" kiseki:rclone/files
rc check "$files" kiseki:rclone/files || fail "rclone check"
[ "$(rc lsf kiseki:rclone/files | sort | tr '\n' ' ')" = \
    "big.bin marker.txt part1.bin part2.bin part3.bin small.txt " ] || fail "rclone lsf"
rc cat kiseki:rclone/files/small.txt | cmp - "$files/small.txt" || fail "rclone cat"
rc copyto kiseki:rclone/files/big.bin "$work/rclone-big.back"
cmp "$files/big.bin" "$work/rclone-big.back" || fail "rclone multipart round trip"
rc purge kiseki:rclone
[ "$(dev_aws s3api list-buckets | json 'sorted(b["Name"] for b in d["Buckets"])')" = "['suite']" ] ||
    fail "rclone purge left its bucket"

if grep -q ERROR "$work/rclone.log"; then
    fail "rclone reported errors: $(grep ERROR "$work/rclone.log")"
fi

step "clean up through aws-cli: every object and the bucket; two marker objects stay"
dev_aws s3 rm --recursive s3://suite >/dev/null
dev_aws s3 rb s3://suite >/dev/null
[ "$(dev_aws s3api list-buckets | json 'len(d["Buckets"])')" = 0 ] || fail "buckets left"
# Kept for the check below: one object in chunks on the device, one inline in the metadata.
dev_aws s3 mb s3://kept >/dev/null
dev_aws s3 cp "$files/marker.txt" s3://kept/marker.txt >/dev/null
head -c 200 "$files/marker.txt" >"$work/inline.txt"
dev_aws s3 cp "$work/inline.txt" s3://kept/inline.txt >/dev/null

step "what the node left behind: no plaintext on the device, no secret in its log"
stop_node
if grep -rqa 'KISEKI-SUITE-PLAINTEXT-MARKER' "$data"; then
    fail "plaintext object bytes in the data dir (device file or metadata)"
fi
for secret in "$DEV_SECRET" "$GLOBEX_SECRET"; do
    if grep -rqaF "$secret" "$work"/node-*.err "$data"; then
        fail "an S3 secret in the node's log or data dir"
    fi
done
# The dev node prints its own tenant's secret on stdout by design; never globex's.
if grep -qF "$GLOBEX_SECRET" "$work"/node-*.out; then
    fail "another tenant's secret on the node's stdout"
fi

echo
echo "s3-client-suite: every check passed (boto3, aws-cli, rclone, curl)"
