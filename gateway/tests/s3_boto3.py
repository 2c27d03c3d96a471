"""A real S3 client (boto3, with its default flexible checksums) against Kiseki's S3 front end.

Run by tests/s3_clients.rs with the endpoint, CA bundle and two tenants' keys in the
environment. Every response is checked; the first failure raises and exits non-zero.
"""

import datetime
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

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

# ---- Multipart uploads ----
MIB = 1 << 20
alice.create_bucket(Bucket="multi")


def multipart_etag(parts):
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return '"%s-%d"' % (digest, len(parts))


def md5_etag(data):
    return '"%s"' % hashlib.md5(data).hexdigest()


def upload_parts(key, upload_id, parts, first=1):
    for number, data in enumerate(parts, start=first):
        got = alice.upload_part(
            Bucket="multi", Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        assert got["ETag"] == md5_etag(data), (number, got["ETag"])


def complete(client, key, upload_id, numbered):
    return client.complete_multipart_upload(
        Bucket="multi", Key=key, UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in numbered]})


# Three parts of about 5 MiB; the first is 3 bytes longer, so part boundaries fall inside
# the object's chunks rather than on them.
parts = [body(5 * MIB + 3, 10), body(5 * MIB, 11), body(5 * MIB, 12)]
created = alice.create_multipart_upload(
    Bucket="multi", Key="big.bin", ContentType="application/x-multi", Metadata={"kind": "mp"})
upload_id = created["UploadId"]
assert created["Key"] == "big.bin" and created["Bucket"] == "multi", created
assert len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id), upload_id
# Part 2 first with other bytes, then replaced: the listing and the object show the second.
upload_parts("big.bin", upload_id, [body(5 * MIB, 99)], first=2)
upload_parts("big.bin", upload_id, parts)
listed = alice.list_parts(Bucket="multi", Key="big.bin", UploadId=upload_id)
assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3], listed["Parts"]
assert [p["Size"] for p in listed["Parts"]] == [len(p) for p in parts], listed["Parts"]
assert [p["ETag"] for p in listed["Parts"]] == [md5_etag(p) for p in parts], listed["Parts"]
assert listed["IsTruncated"] is False, listed
page = alice.list_parts(Bucket="multi", Key="big.bin", UploadId=upload_id, MaxParts=2)
assert [p["PartNumber"] for p in page["Parts"]] == [1, 2] and page["IsTruncated"], page
assert page["NextPartNumberMarker"] == 2, page
page = alice.list_parts(
    Bucket="multi", Key="big.bin", UploadId=upload_id, PartNumberMarker=2)
assert [p["PartNumber"] for p in page["Parts"]] == [3] and not page["IsTruncated"], page
uploads = alice.list_multipart_uploads(Bucket="multi")
assert [(u["Key"], u["UploadId"]) for u in uploads["Uploads"]] == [("big.bin", upload_id)], uploads
assert uploads["IsTruncated"] is False, uploads

# Completion refusals: the upload stays open through each.
etags = [(n, md5_etag(p)) for n, p in enumerate(parts, start=1)]
assert error_code(lambda: complete(alice, "big.bin", upload_id, [etags[1], etags[0]])) \
    == "InvalidPartOrder"
assert error_code(lambda: complete(
    alice, "big.bin", upload_id, [etags[0], (2, md5_etag(b"other"))])) == "InvalidPart"
assert error_code(lambda: complete(
    alice, "big.bin", upload_id, [etags[0], (4, etags[2][1])])) == "InvalidPart"
assert error_code(lambda: complete(alice, "other.bin", upload_id, etags)) == "NoSuchUpload"
assert error_code(lambda: complete(alice, "big.bin", "0" * 32, etags)) == "NoSuchUpload"
assert error_code(lambda: alice.upload_part(
    Bucket="multi", Key="big.bin", UploadId=upload_id, PartNumber=10001, Body=b"x")) \
    == "InvalidArgument"
assert error_code(lambda: alice.upload_part(
    Bucket="multi", Key="big.bin", UploadId="not-an-upload", PartNumber=1, Body=b"x")) \
    == "NoSuchUpload"

# Tenants apart: Bob sees neither Alice's bucket's uploads nor her upload through his own.
bob.create_bucket(Bucket="bobs")
assert error_code(lambda: bob.create_multipart_upload(Bucket="multi", Key="x")) == "AccessDenied"
assert error_code(lambda: alice.create_multipart_upload(Bucket="no-such-bucket", Key="x")) \
    == "NoSuchBucket"
assert error_code(lambda: bob.list_multipart_uploads(Bucket="multi")) == "AccessDenied"
assert error_code(lambda: bob.list_parts(
    Bucket="multi", Key="big.bin", UploadId=upload_id)) == "AccessDenied"
assert error_code(lambda: bob.upload_part(
    Bucket="multi", Key="big.bin", UploadId=upload_id, PartNumber=1, Body=b"x")) \
    == "AccessDenied"
assert error_code(lambda: bob.abort_multipart_upload(
    Bucket="multi", Key="big.bin", UploadId=upload_id)) == "AccessDenied"
assert error_code(lambda: complete(bob, "big.bin", upload_id, etags)) == "AccessDenied"
assert error_code(lambda: bob.upload_part(
    Bucket="bobs", Key="big.bin", UploadId=upload_id, PartNumber=1, Body=b"x")) \
    == "NoSuchUpload"
assert error_code(lambda: bob.list_parts(
    Bucket="bobs", Key="big.bin", UploadId=upload_id)) == "NoSuchUpload"
assert bob.list_multipart_uploads(Bucket="bobs").get("Uploads", []) == []

done = complete(alice, "big.bin", upload_id, etags)
whole = b"".join(parts)
assert done["ETag"] == multipart_etag(parts), (done["ETag"], multipart_etag(parts))
assert done["Key"] == "big.bin" and done["Bucket"] == "multi", done
got = alice.get_object(Bucket="multi", Key="big.bin")
assert got["Body"].read() == whole
assert got["ContentLength"] == len(whole)
assert got["ETag"] == multipart_etag(parts), got["ETag"]
assert got["ContentType"] == "application/x-multi", got["ContentType"]
assert got["Metadata"] == {"kind": "mp"}, got["Metadata"]
assert alice.head_object(Bucket="multi", Key="big.bin")["ETag"] == multipart_etag(parts)
listed = alice.list_objects_v2(Bucket="multi")["Contents"]
assert [(o["Key"], o["Size"], o["ETag"]) for o in listed] \
    == [("big.bin", len(whole), multipart_etag(parts))], listed
# Ranges at part boundaries (inside a chunk) and chunk boundaries, and the last byte.
b1, b2 = len(parts[0]), len(parts[0]) + len(parts[1])
for first, last in [(b1 - 1, b1), (b1 - 10, b1 + 10), (b1, b1 + CHUNK), (CHUNK - 1, CHUNK),
                    (b2 - CHUNK, b2 + CHUNK), (b1 - 5, b2 + 5), (len(whole) - 1, len(whole) - 1)]:
    got = alice.get_object(Bucket="multi", Key="big.bin", Range="bytes=%d-%d" % (first, last))
    assert got["Body"].read() == whole[first:last + 1], (first, last)
    assert got["ContentRange"] == "bytes %d-%d/%d" % (first, last, len(whole)), got
# The upload is gone.
assert error_code(lambda: alice.list_parts(
    Bucket="multi", Key="big.bin", UploadId=upload_id)) == "NoSuchUpload"
assert error_code(lambda: complete(alice, "big.bin", upload_id, etags)) == "NoSuchUpload"
assert alice.list_multipart_uploads(Bucket="multi").get("Uploads", []) == []

# A short last part, a part left out of the completion, and a completion that replaces the
# object above.
short = [body(5 * MIB, 20), body(1000, 21)]
upload_id = alice.create_multipart_upload(Bucket="multi", Key="big.bin")["UploadId"]
upload_parts("big.bin", upload_id, short + [body(MIB, 22)])
done = complete(alice, "big.bin", upload_id, [(1, md5_etag(short[0])), (2, md5_etag(short[1]))])
assert done["ETag"] == multipart_etag(short), done["ETag"]
got = alice.get_object(Bucket="multi", Key="big.bin")
assert got["Body"].read() == b"".join(short) and got["ETag"] == multipart_etag(short)
got = alice.get_object(Bucket="multi", Key="big.bin", Range="bytes=%d-" % (5 * MIB - 2))
assert got["Body"].read() == b"".join(short)[5 * MIB - 2:]

# Parts under 5 MiB other than the last: EntityTooSmall, and the upload stays open.
upload_id = alice.create_multipart_upload(Bucket="multi", Key="small.bin")["UploadId"]
small = [body(MIB, 30), body(MIB, 31)]
upload_parts("small.bin", upload_id, small)
assert error_code(lambda: complete(
    alice, "small.bin", upload_id, [(1, md5_etag(small[0])), (2, md5_etag(small[1]))])) \
    == "EntityTooSmall"
# Paging the bucket's uploads: two uploads of one key and one of another.
second_id = alice.create_multipart_upload(Bucket="multi", Key="small.bin")["UploadId"]
third_id = alice.create_multipart_upload(Bucket="multi", Key="tail.bin")["UploadId"]
everything = alice.list_multipart_uploads(Bucket="multi")["Uploads"]
assert [u["Key"] for u in everything] == ["small.bin", "small.bin", "tail.bin"], everything
assert {u["UploadId"] for u in everything} == {upload_id, second_id, third_id}
page = alice.list_multipart_uploads(Bucket="multi", MaxUploads=1)
assert page["IsTruncated"] and page["NextKeyMarker"] == "small.bin", page
rest = alice.list_multipart_uploads(
    Bucket="multi", KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])
assert [u["UploadId"] for u in rest["Uploads"]] == [u["UploadId"] for u in everything[1:]], rest
after_key = alice.list_multipart_uploads(Bucket="multi", KeyMarker="small.bin")
assert [u["Key"] for u in after_key["Uploads"]] == ["tail.bin"], after_key
assert [u["Key"] for u in alice.list_multipart_uploads(
    Bucket="multi", Prefix="t")["Uploads"]] == ["tail.bin"]
# Aborts release the parts; a second abort finds nothing.
for key, uid in [("small.bin", upload_id), ("small.bin", second_id), ("tail.bin", third_id)]:
    alice.abort_multipart_upload(Bucket="multi", Key=key, UploadId=uid)
assert error_code(lambda: alice.abort_multipart_upload(
    Bucket="multi", Key="small.bin", UploadId=upload_id)) == "NoSuchUpload"
assert error_code(lambda: alice.upload_part(
    Bucket="multi", Key="small.bin", UploadId=upload_id, PartNumber=1, Body=b"x")) \
    == "NoSuchUpload"
assert alice.list_multipart_uploads(Bucket="multi").get("Uploads", []) == []

# UploadPartCopy: a range of one object and the whole of another become parts.
source = body(6 * MIB + 5, 50)
alice.put_object(Bucket="multi", Key="source.bin", Body=source)
upload_id = alice.create_multipart_upload(Bucket="multi", Key="copied.bin")["UploadId"]


def part_copy(client, number, copy_source, **extra):
    return client.upload_part_copy(Bucket="multi", Key="copied.bin", UploadId=upload_id,
                                   PartNumber=number, CopySource=copy_source, **extra)


first = source[CHUNK - 1:CHUNK - 1 + 5 * MIB]
got = part_copy(alice, 1, "multi/source.bin",
                CopySourceRange="bytes=%d-%d" % (CHUNK - 1, CHUNK - 2 + 5 * MIB))
assert got["CopyPartResult"]["ETag"] == md5_etag(first), got
got = part_copy(alice, 2, "photos/dir/large.bin", CopySourceIfMatch=md5_etag(large))
assert got["CopyPartResult"]["ETag"] == md5_etag(large), got
assert error_code(lambda: part_copy(
    alice, 3, "multi/source.bin", CopySourceRange="bytes=%d-%d" % (len(source), len(source) + 9))) \
    == "InvalidRange"
assert error_code(lambda: part_copy(
    alice, 3, "photos/dir/large.bin", CopySourceIfNoneMatch=md5_etag(large))) \
    == "PreconditionFailed"
assert error_code(lambda: part_copy(alice, 3, "multi/absent.bin")) == "NoSuchKey"
assert error_code(lambda: part_copy(alice, 3, "bobs/anything")) == "AccessDenied"
bob_upload = bob.create_multipart_upload(Bucket="bobs", Key="stolen.bin")["UploadId"]
assert error_code(lambda: bob.upload_part_copy(
    Bucket="bobs", Key="stolen.bin", UploadId=bob_upload, PartNumber=1,
    CopySource="multi/source.bin")) == "AccessDenied"
assert error_code(lambda: part_copy(bob, 1, "bobs/anything")) == "AccessDenied"
bob.abort_multipart_upload(Bucket="bobs", Key="stolen.bin", UploadId=bob_upload)
done = complete(alice, "copied.bin", upload_id, [(1, md5_etag(first)), (2, md5_etag(large))])
assert done["ETag"] == multipart_etag([first, large]), done
got = alice.get_object(Bucket="multi", Key="copied.bin")
assert got["Body"].read() == first + large and got["ETag"] == multipart_etag([first, large])
for key in ["source.bin", "copied.bin"]:
    alice.delete_object(Bucket="multi", Key=key)

# aws-cli: `aws s3 cp` of a file over its 8 MiB multipart threshold, both ways.
if shutil.which("aws"):
    with tempfile.TemporaryDirectory() as scratch:
        config = os.path.join(scratch, "config")
        with open(config, "w") as out:
            out.write("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
        env = dict(os.environ, AWS_CONFIG_FILE=config,
                   AWS_SHARED_CREDENTIALS_FILE=os.path.join(scratch, "none"),
                   AWS_ACCESS_KEY_ID=os.environ["KISEKI_S3_ALICE_KEY"],
                   AWS_SECRET_ACCESS_KEY=os.environ["KISEKI_S3_ALICE_SECRET"],
                   AWS_CA_BUNDLE=CA)
        cli_body = body(9 * MIB + 17, 40)
        source, target = os.path.join(scratch, "up.bin"), os.path.join(scratch, "down.bin")
        with open(source, "wb") as out:
            out.write(cli_body)
        for args in (["cp", source, "s3://multi/cli.bin"], ["cp", "s3://multi/cli.bin", target]):
            subprocess.run(["aws", "--endpoint-url", ENDPOINT, "s3"] + args, env=env,
                           check=True, capture_output=True)
        with open(target, "rb") as downloaded:
            assert downloaded.read() == cli_body
        got = alice.get_object(Bucket="multi", Key="cli.bin")
        assert got["Body"].read() == cli_body
        # aws-cli cuts 8 MiB parts: two here.
        expected = multipart_etag([cli_body[:8 * MIB], cli_body[8 * MIB:]])
        assert got["ETag"] == expected, (got["ETag"], expected)
    alice.delete_object(Bucket="multi", Key="cli.bin")
    print("aws-cli multipart: checked")
else:
    print("aws-cli not installed: its multipart check skipped")

# ---- Copies, batch deletes, ListObjects (v1), versions, location ----
alice.create_bucket(Bucket="copies")
large, tiny = objects["dir/large.bin"], objects["tiny.txt"]
# COPY (the default): the source's bytes, ETag, content type and metadata.
copied = alice.copy_object(
    Bucket="copies", Key="large-copy", CopySource={"Bucket": "photos", "Key": "dir/large.bin"})
assert copied["CopyObjectResult"]["ETag"] == md5_etag(large), copied
got = alice.get_object(Bucket="copies", Key="large-copy")
assert got["Body"].read() == large and got["ETag"] == md5_etag(large)
assert got["ContentType"] == "application/x-test" and got["Metadata"] == {"origin": "boto3"}
got = alice.get_object(
    Bucket="copies", Key="large-copy", Range="bytes=%d-%d" % (CHUNK - 3, CHUNK + 3))
assert got["Body"].read() == large[CHUNK - 3:CHUNK + 4]
# REPLACE on an inline object: new content type and metadata, same bytes.
copied = alice.copy_object(
    Bucket="copies", Key="tiny-copy", CopySource="photos/tiny.txt", MetadataDirective="REPLACE",
    ContentType="text/plain", Metadata={"new": "yes"})
assert copied["CopyObjectResult"]["ETag"] == md5_etag(tiny), copied
got = alice.get_object(Bucket="copies", Key="tiny-copy")
assert got["Body"].read() == tiny and got["ContentType"] == "text/plain", got
assert got["Metadata"] == {"new": "yes"}, got["Metadata"]
# A multipart object keeps its ETag; deleting the source leaves the copy whole.
copied = alice.copy_object(Bucket="copies", Key="big-copy", CopySource="multi/big.bin")
assert copied["CopyObjectResult"]["ETag"] == multipart_etag(short), copied
alice.delete_object(Bucket="multi", Key="big.bin")
got = alice.get_object(Bucket="copies", Key="big-copy")
assert got["Body"].read() == b"".join(short) and got["ETag"] == multipart_etag(short)
# To itself: only with REPLACE.
assert error_code(lambda: alice.copy_object(
    Bucket="copies", Key="tiny-copy", CopySource="copies/tiny-copy")) == "InvalidRequest"
alice.copy_object(Bucket="copies", Key="tiny-copy", CopySource="copies/tiny-copy",
                  MetadataDirective="REPLACE", Metadata={"again": "1"})
assert alice.head_object(Bucket="copies", Key="tiny-copy")["Metadata"] == {"again": "1"}
assert error_code(lambda: alice.copy_object(
    Bucket="copies", Key="x", CopySource="photos/absent")) == "NoSuchKey"
# Tenants apart: no copy out of, or into, another tenant's bucket.
bob.put_object(Bucket="bobs", Key="bobs-own", Body=b"bob's bytes")
assert error_code(lambda: alice.copy_object(
    Bucket="copies", Key="stolen", CopySource="bobs/bobs-own")) == "AccessDenied"
assert error_code(lambda: bob.copy_object(
    Bucket="bobs", Key="stolen", CopySource="photos/tiny.txt")) == "AccessDenied"
assert error_code(lambda: bob.copy_object(
    Bucket="copies", Key="planted", CopySource="bobs/bobs-own")) == "AccessDenied"
assert error_code(lambda: alice.head_object(Bucket="copies", Key="planted")) in ("404", "NoSuchKey")

# DeleteObjects, verbose: deleted keys (absent ones too, as S3 does) and per-key errors.
long_key = "k" * 1100
result = alice.delete_objects(Bucket="copies", Delete={"Objects": [
    {"Key": "tiny-copy"}, {"Key": "absent"}, {"Key": long_key}]})
assert sorted(d["Key"] for d in result["Deleted"]) == ["absent", "tiny-copy"], result
assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [(long_key, "InvalidArgument")], result
assert error_code(lambda: alice.get_object(Bucket="copies", Key="tiny-copy")) == "NoSuchKey"
assert error_code(lambda: bob.delete_objects(
    Bucket="copies", Delete={"Objects": [{"Key": "large-copy"}]})) == "AccessDenied"
assert alice.head_object(Bucket="copies", Key="large-copy")["ContentLength"] == len(large)
# Quiet: only errors are reported.
result = alice.delete_objects(Bucket="copies", Delete={
    "Objects": [{"Key": "large-copy"}, {"Key": "big-copy"}], "Quiet": True})
assert result.get("Deleted", []) == [] and result.get("Errors", []) == [], result
assert alice.list_objects_v2(Bucket="copies")["KeyCount"] == 0
alice.delete_bucket(Bucket="copies")

# ListObjects (v1): everything, a delimiter, pages of one key by NextMarker, a marker.
everything = ["dir/large.bin", "dir/medium.bin", "tiny.txt"]
listed = alice.list_objects(Bucket="photos")
assert [o["Key"] for o in listed["Contents"]] == everything and not listed["IsTruncated"]
assert [o["ETag"] for o in listed["Contents"]] == [md5_etag(objects[k]) for k in everything]
grouped = alice.list_objects(Bucket="photos", Delimiter="/")
assert [o["Key"] for o in grouped["Contents"]] == ["tiny.txt"], grouped
assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["dir/"], grouped
keys, marker = [], ""
while True:
    page = alice.list_objects(Bucket="photos", MaxKeys=1, Marker=marker)
    keys += [o["Key"] for o in page.get("Contents", [])]
    if not page["IsTruncated"]:
        break
    marker = page["NextMarker"]
assert keys == everything, keys
after = alice.list_objects(Bucket="photos", Marker="dir/large.bin")
assert [o["Key"] for o in after["Contents"]] == everything[1:], after
assert [o["Key"] for o in alice.list_objects(Bucket="photos", Prefix="dir/")["Contents"]] \
    == everything[:2]
assert error_code(lambda: bob.list_objects(Bucket="photos")) == "AccessDenied"

# ListObjectVersions: versioning is off, so each object is its "null" version.
versions = alice.list_object_versions(Bucket="photos")
assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in versions["Versions"]] \
    == [(k, "null", True) for k in everything], versions
assert [v["Size"] for v in versions["Versions"]] == [len(objects[k]) for k in everything]
assert [v["ETag"] for v in versions["Versions"]] == [md5_etag(objects[k]) for k in everything]
page = alice.list_object_versions(Bucket="photos", MaxKeys=2)
assert page["IsTruncated"] and page["NextKeyMarker"] == "dir/medium.bin", page
rest = alice.list_object_versions(Bucket="photos", KeyMarker=page["NextKeyMarker"])
assert [v["Key"] for v in rest["Versions"]] == ["tiny.txt"] and not rest["IsTruncated"], rest
assert error_code(lambda: bob.list_object_versions(Bucket="photos")) == "AccessDenied"

# GetBucketLocation: one region, us-east-1, shown as no constraint.
assert alice.get_bucket_location(Bucket="photos").get("LocationConstraint") is None
assert error_code(lambda: bob.get_bucket_location(Bucket="photos")) == "AccessDenied"
assert error_code(lambda: alice.get_bucket_location(Bucket="no-such-bucket")) == "NoSuchBucket"

bob.delete_object(Bucket="bobs", Key="bobs-own")
alice.delete_bucket(Bucket="multi")
bob.delete_bucket(Bucket="bobs")

# ---- Conditional requests ----
tiny_etag, other_etag = md5_etag(tiny), '"%s"' % ("0" * 32)
modified = alice.head_object(Bucket="photos", Key="tiny.txt")["LastModified"]
earlier = modified - datetime.timedelta(seconds=10)
later = modified + datetime.timedelta(seconds=10)


def get_tiny(client=alice, **conditions):
    return client.get_object(Bucket="photos", Key="tiny.txt", **conditions)


def head_tiny(**conditions):
    return alice.head_object(Bucket="photos", Key="tiny.txt", **conditions)


for passing in [{"IfMatch": tiny_etag}, {"IfMatch": "*"}, {"IfNoneMatch": other_etag},
                {"IfModifiedSince": earlier}, {"IfUnmodifiedSince": later},
                {"IfUnmodifiedSince": modified},
                # If-Match decides over If-Unmodified-Since, If-None-Match over
                # If-Modified-Since.
                {"IfMatch": tiny_etag, "IfUnmodifiedSince": earlier},
                {"IfNoneMatch": other_etag, "IfModifiedSince": later}]:
    got = get_tiny(**passing)
    assert got["Body"].read() == tiny and got["ETag"] == tiny_etag, passing
    assert head_tiny(**passing)["ContentLength"] == len(tiny), passing
for failing in [{"IfMatch": other_etag}, {"IfUnmodifiedSince": earlier}]:
    assert error_code(lambda: get_tiny(**failing)) == "PreconditionFailed", failing
    assert error_code(lambda: head_tiny(**failing)) == "412", failing
for unchanged in [{"IfNoneMatch": tiny_etag}, {"IfNoneMatch": "*"},
                  {"IfModifiedSince": modified}, {"IfModifiedSince": later}]:
    assert error_code(lambda: get_tiny(**unchanged)) == "304", unchanged
    assert error_code(lambda: head_tiny(**unchanged)) == "304", unchanged
# A ranged GET is conditional too.
got = alice.get_object(Bucket="photos", Key="dir/large.bin", Range="bytes=0-9",
                       IfMatch=md5_etag(large))
assert got["Body"].read() == large[:10]
assert error_code(lambda: alice.get_object(
    Bucket="photos", Key="dir/large.bin", Range="bytes=0-9", IfMatch=tiny_etag)) \
    == "PreconditionFailed"

# Conditional PUTs, checked where the put is applied.
alice.put_object(Bucket="photos", Key="cond.txt", Body=b"first", IfNoneMatch="*")
assert error_code(lambda: alice.put_object(
    Bucket="photos", Key="cond.txt", Body=b"second", IfNoneMatch="*")) == "PreconditionFailed"
assert alice.get_object(Bucket="photos", Key="cond.txt")["Body"].read() == b"first"
alice.put_object(Bucket="photos", Key="cond.txt", Body=b"second", IfMatch=md5_etag(b"first"))
assert error_code(lambda: alice.put_object(
    Bucket="photos", Key="cond.txt", Body=b"third", IfMatch=md5_etag(b"first"))) \
    == "PreconditionFailed"
assert alice.get_object(Bucket="photos", Key="cond.txt")["Body"].read() == b"second"
alice.put_object(Bucket="photos", Key="cond.txt", Body=large, IfMatch="*")
assert alice.get_object(Bucket="photos", Key="cond.txt")["Body"].read() == large
assert error_code(lambda: alice.put_object(
    Bucket="photos", Key="absent.txt", Body=b"x", IfMatch=tiny_etag)) == "NoSuchKey"
assert error_code(lambda: alice.head_object(Bucket="photos", Key="absent.txt")) == "404"

# Copy-source conditions: any failure is 412.
for failing in [{"CopySourceIfMatch": other_etag}, {"CopySourceIfNoneMatch": tiny_etag},
                {"CopySourceIfModifiedSince": later},
                {"CopySourceIfUnmodifiedSince": earlier}]:
    assert error_code(lambda: alice.copy_object(
        Bucket="photos", Key="cond-copy", CopySource="photos/tiny.txt", **failing)) \
        == "PreconditionFailed", failing
copied = alice.copy_object(Bucket="photos", Key="cond-copy", CopySource="photos/tiny.txt",
                           CopySourceIfMatch=tiny_etag, CopySourceIfModifiedSince=earlier)
assert copied["CopyObjectResult"]["ETag"] == tiny_etag

# Tenants apart: conditions say nothing about another tenant's objects.
assert error_code(lambda: get_tiny(bob, IfNoneMatch=tiny_etag)) == "AccessDenied"
assert error_code(lambda: get_tiny(bob, IfMatch=other_etag)) == "AccessDenied"
assert error_code(lambda: bob.put_object(
    Bucket="photos", Key="cond.txt", Body=b"bob", IfMatch="*")) == "AccessDenied"
assert error_code(lambda: bob.delete_object(Bucket="photos", Key="tiny.txt")) == "AccessDenied"
assert alice.get_object(Bucket="photos", Key="tiny.txt")["Body"].read() == tiny
for key in ["cond.txt", "cond-copy"]:
    alice.delete_object(Bucket="photos", Key=key)

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
