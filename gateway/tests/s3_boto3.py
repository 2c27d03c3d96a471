"""A real S3 client (boto3, with its default flexible checksums) against Kiseki's S3 front end.

Run by tests/s3_clients.rs with the endpoint, CA bundle and two tenants' keys in the
environment. Every response is checked; the first failure raises and exits non-zero.
"""

import hashlib
import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["KISEKI_S3_ENDPOINT"]
CA = os.environ["KISEKI_S3_CA"]
CHUNK = int(os.environ["KISEKI_S3_CHUNK"])


def client(access_key, secret_key):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        verify=CA,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def error_code(call):
    try:
        call()
    except ClientError as error:
        return error.response["Error"]["Code"]
    raise AssertionError("expected an S3 error, the call succeeded")


def body(size, seed):
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d-%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


alice = client(os.environ["KISEKI_S3_ALICE_KEY"], os.environ["KISEKI_S3_ALICE_SECRET"])
bob = client(os.environ["KISEKI_S3_BOB_KEY"], os.environ["KISEKI_S3_BOB_SECRET"])

alice.create_bucket(Bucket="photos")
names = [b["Name"] for b in alice.list_buckets()["Buckets"]]
assert names == ["photos"], names
alice.head_bucket(Bucket="photos")

objects = {
    "tiny.txt": body(10, 1),
    "dir/medium.bin": body(100 * 1024, 2),
    "dir/large.bin": body(3 * CHUNK + 1234, 3),
}
for key, data in objects.items():
    put = alice.put_object(
        Bucket="photos", Key=key, Body=data, ContentType="application/x-test",
        Metadata={"origin": "boto3"},
    )
    assert put["ETag"] == '"%s"' % hashlib.md5(data).hexdigest(), (key, put["ETag"])

for key, data in objects.items():
    got = alice.get_object(Bucket="photos", Key=key)
    assert got["Body"].read() == data, key
    assert got["ContentLength"] == len(data), key
    assert got["ETag"] == '"%s"' % hashlib.md5(data).hexdigest(), key
    assert got["ContentType"] == "application/x-test", got["ContentType"]
    assert got["Metadata"] == {"origin": "boto3"}, got["Metadata"]
    head = alice.head_object(Bucket="photos", Key=key)
    assert head["ContentLength"] == len(data), key

# Ranged GETs at and across chunk boundaries, and to the end.
large = objects["dir/large.bin"]
for first, last in [(0, 0), (CHUNK - 5, CHUNK + 5), (CHUNK, 2 * CHUNK - 1), (3 * CHUNK, len(large) - 1)]:
    got = alice.get_object(Bucket="photos", Key="dir/large.bin", Range="bytes=%d-%d" % (first, last))
    assert got["Body"].read() == large[first:last + 1], (first, last)
    assert got["ContentRange"] == "bytes %d-%d/%d" % (first, last, len(large)), got["ContentRange"]
got = alice.get_object(Bucket="photos", Key="dir/large.bin", Range="bytes=-100")
assert got["Body"].read() == large[-100:]
assert error_code(lambda: alice.get_object(
    Bucket="photos", Key="dir/large.bin", Range="bytes=%d-" % (len(large) + 10))) == "InvalidRange"

# Listings: everything, a delimiter, pages of one key.
listed = alice.list_objects_v2(Bucket="photos")
assert [o["Key"] for o in listed["Contents"]] == ["dir/large.bin", "dir/medium.bin", "tiny.txt"]
assert all(o["Size"] == len(objects[o["Key"]]) for o in listed["Contents"])
grouped = alice.list_objects_v2(Bucket="photos", Delimiter="/")
assert [o["Key"] for o in grouped.get("Contents", [])] == ["tiny.txt"], grouped
assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["dir/"], grouped
keys, token = [], None
while True:
    kwargs = {"Bucket": "photos", "MaxKeys": 1}
    if token:
        kwargs["ContinuationToken"] = token
    page = alice.list_objects_v2(**kwargs)
    keys += [o["Key"] for o in page.get("Contents", [])]
    if not page["IsTruncated"]:
        break
    token = page["NextContinuationToken"]
assert keys == ["dir/large.bin", "dir/medium.bin", "tiny.txt"], keys
prefixed = alice.list_objects_v2(Bucket="photos", Prefix="dir/m")
assert [o["Key"] for o in prefixed["Contents"]] == ["dir/medium.bin"]

# Tenants apart: Bob lists none of Alice's buckets, reads none, cannot take a name.
assert bob.list_buckets()["Buckets"] == []
assert error_code(lambda: bob.get_object(Bucket="photos", Key="tiny.txt")) == "AccessDenied"
assert error_code(lambda: bob.create_bucket(Bucket="photos")) == "BucketAlreadyExists"

# Wrong secret, unknown key.
forged = client(os.environ["KISEKI_S3_ALICE_KEY"], "not-the-secret-" + "x" * 25)
assert error_code(lambda: forged.list_buckets()) == "SignatureDoesNotMatch"
stranger = client("KSKUNKNOWNUNKNOWNUNK", "whatever-" + "y" * 31)
assert error_code(lambda: stranger.list_buckets()) == "InvalidAccessKeyId"

# Deletes.
assert error_code(lambda: alice.delete_bucket(Bucket="photos")) == "BucketNotEmpty"
for key in objects:
    alice.delete_object(Bucket="photos", Key=key)
assert error_code(lambda: alice.get_object(Bucket="photos", Key="tiny.txt")) == "NoSuchKey"
alice.delete_object(Bucket="photos", Key="tiny.txt")  # absent: still 204
alice.delete_bucket(Bucket="photos")
assert error_code(lambda: alice.head_bucket(Bucket="photos")) in ("404", "NoSuchBucket")

print("boto3 %s: every check passed" % boto3.__version__)
sys.exit(0)
