"""The S3 protocol's edges against Kiseki's S3 front end: flexible checksums and Content-MD5,
payload hashes (signed, unsigned, streaming), presigned URLs and their expiry, clock skew,
virtual-host style addressing, and the bounds on headers, bodies and plaintext.

Run by tests/s3_clients.rs with the endpoint, CA bundle and a tenant's key in the
environment. boto3 drives what it can; the rest goes through http.client with requests
signed here (SigV4 as AWS documents it), so that a date, a payload hash or a chunk
signature can be made wrong on purpose. Each negative has a positive twin that passes
through the same code, so a broken signer here cannot pass for a refusal there.
"""

import base64
import datetime
import hashlib
import hmac
import http.client
import os
import socket
import ssl
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["KISEKI_S3_ENDPOINT"]
CA = os.environ["KISEKI_S3_CA"]
KEY = os.environ["KISEKI_S3_ALICE_KEY"]
SECRET = os.environ["KISEKI_S3_ALICE_SECRET"]
# A domain of two labels under which the test server takes virtual-host style requests
# (OpenSSL matches a wildcard only with two labels after it: *.localhost is not enough).
VHOST_DOMAIN = os.environ["KISEKI_S3_VHOST_DOMAIN"]
PORT = urllib.parse.urlparse(ENDPOINT).port
TLS = ssl.create_default_context(cafile=CA)

# Names under .localhost resolve to loopback here, as RFC 6761 wants, even where the
# system resolver does not do it.
_resolve = socket.getaddrinfo


def _loopback_for_localhost(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".localhost"):
        host = "127.0.0.1"
    return _resolve(host, *args, **kwargs)


socket.getaddrinfo = _loopback_for_localhost


def client(endpoint=ENDPOINT, style="path"):
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
        region_name="us-east-1", verify=CA,
        config=Config(s3={"addressing_style": style}, retries={"max_attempts": 1}))


def error_code(call):
    try:
        call()
    except ClientError as error:
        return error.response["Error"]["Code"]
    raise AssertionError("expected an S3 error, the call succeeded")


def b64(data):
    return base64.b64encode(data).decode()


def crc32(data):
    return b64(struct.pack(">I", zlib.crc32(data)))


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return b64(struct.pack(">I", crc ^ 0xFFFFFFFF))


def crc64nvme(data):
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x9A6C9329AC4BC9B5 if crc & 1 else 0)
    return b64(struct.pack(">Q", crc ^ 0xFFFFFFFFFFFFFFFF))


def digest(name, data):
    return b64(hashlib.new(name, data).digest())


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


# ---- A SigV4 signer for raw requests ----

def signing_key(date):
    key = ("AWS4" + SECRET).encode()
    for part in (date, "us-east-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign(method, path, headers, payload_hash, when=None, host=None):
    """Headers for a request signed at `when` (default now) with `payload_hash` as its
    x-amz-content-sha256; returns them and what a streaming body's chunks chain from."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    signed = {k.lower(): str(v) for k, v in headers.items()}
    signed["host"] = host or "127.0.0.1:%d" % PORT
    signed["x-amz-date"] = amz_date
    signed["x-amz-content-sha256"] = payload_hash
    names = sorted(signed)
    canonical = "\n".join([
        method, urllib.parse.quote(path, safe="/-_.~"), "",
        "".join("%s:%s\n" % (name, signed[name].strip()) for name in names),
        ";".join(names), payload_hash])
    scope = "%s/us-east-1/s3/aws4_request" % date
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, sha256_hex(canonical.encode())])
    key = signing_key(date)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" \
        % (KEY, scope, ";".join(names), signature)
    return signed, (signature, amz_date, scope, key)


def send(method, path, headers, body=b""):
    """Sends to 127.0.0.1 over TLS (the certificate names it); returns status, S3 code, body."""
    connection = http.client.HTTPSConnection("127.0.0.1", PORT, context=TLS, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    code = None
    if b"<Code>" in data:
        code = data.split(b"<Code>")[1].split(b"</Code>")[0].decode()
    return response.status, code, data


def signed_put(path, body, payload_hash=None, when=None, extra=None, host=None):
    headers = {"content-length": str(len(body))}
    headers.update(extra or {})
    payload_hash = payload_hash or sha256_hex(body)
    signed, _ = sign("PUT", path, headers, payload_hash, when=when, host=host)
    return send("PUT", path, signed, body)


def signed_get(path, when=None, host=None):
    signed, _ = sign("GET", path, {}, sha256_hex(b""), when=when, host=host)
    return send("GET", path, signed)


def aws_chunked(chunks, chain, tamper=False):
    """An aws-chunked body, each chunk signed after the one before (the seed is the request's
    signature); with `tamper`, the first chunk's bytes change after it was signed."""
    previous, amz_date, scope, key = chain
    out = b""
    for index, chunk in enumerate(chunks + [b""]):
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous,
                             sha256_hex(b""), sha256_hex(chunk)])
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        sent = chunk
        if tamper and index == 0:
            sent = bytes([chunk[0] ^ 1]) + chunk[1:]
        out += b"%x;chunk-signature=%s\r\n" % (len(chunk), signature.encode()) + sent + b"\r\n"
        previous = signature
    return out


def streaming_put(path, chunks, tamper=False):
    total = sum(len(c) for c in chunks)
    # Every chunk header has a 64-digit signature: the length is known before signing.
    encoded_length = sum(len(b"%x;chunk-signature=" % len(c)) + 64 + 2 + len(c) + 2
                         for c in chunks + [b""])
    headers = {"content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(total),
               "content-length": str(encoded_length)}
    signed, chain = sign("PUT", path, headers, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    body = aws_chunked(chunks, chain, tamper)
    assert len(body) == encoded_length
    return send("PUT", path, signed, body)


def trailer_put(path, data, trailer_name, trailer_value):
    """An upload as current SDKs send it by default: unsigned aws-chunked body, with the
    checksum in a trailer."""
    body = b"%x\r\n" % len(data) + data + b"\r\n0\r\n" \
        + ("%s:%s\r\n" % (trailer_name, trailer_value)).encode() + b"\r\n"
    headers = {"content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
               "x-amz-trailer": trailer_name, "content-length": str(len(body))}
    signed, _ = sign("PUT", path, headers, "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    return send("PUT", path, signed, body)


s3 = client()
s3.create_bucket(Bucket="proto")


def absent(key):
    return error_code(lambda: s3.head_object(Bucket="proto", Key=key)) == "404"


# ---- Flexible checksums through boto3 ----
data = b"kiseki flexible checksums " * 100
# boto3's default: CRC32 in a trailer of an unsigned aws-chunked body.
put = s3.put_object(Bucket="proto", Key="default", Body=data)
assert put["ChecksumCRC32"] == crc32(data), put
got = s3.get_object(Bucket="proto", Key="default", ChecksumMode="ENABLED")
assert got["Body"].read() == data and got["ChecksumCRC32"] == crc32(data), got
assert got.get("ChecksumType") == "FULL_OBJECT", got
head = s3.head_object(Bucket="proto", Key="default", ChecksumMode="ENABLED")
assert head["ChecksumCRC32"] == crc32(data), head
# Not asked, not sent; nor for a range, whose bytes it does not cover.
assert "ChecksumCRC32" not in s3.head_object(Bucket="proto", Key="default")
ranged = s3.get_object(Bucket="proto", Key="default", Range="bytes=0-9", ChecksumMode="ENABLED")
assert ranged["Body"].read() == data[:10] and "ChecksumCRC32" not in ranged, ranged
for algorithm, value in [("SHA1", digest("sha1", data)), ("SHA256", digest("sha256", data))]:
    put = s3.put_object(Bucket="proto", Key="alg-" + algorithm, Body=data,
                        ChecksumAlgorithm=algorithm)
    assert put["Checksum" + algorithm] == value, (algorithm, put)
    head = s3.head_object(Bucket="proto", Key="alg-" + algorithm, ChecksumMode="ENABLED")
    assert head["Checksum" + algorithm] == value, (algorithm, head)
# A copy keeps them: its bytes are the same.
s3.copy_object(Bucket="proto", Key="copied", CopySource="proto/alg-SHA256")
head = s3.head_object(Bucket="proto", Key="copied", ChecksumMode="ENABLED")
assert head["ChecksumSHA256"] == digest("sha256", data), head

# Wrong values: BadDigest, and nothing stored.
for field, wrong in [("ChecksumCRC32", crc32(b"other")), ("ChecksumSHA1", digest("sha1", b"x")),
                     ("ChecksumSHA256", digest("sha256", b"x")),
                     ("ContentMD5", digest("md5", b"x"))]:
    key = "wrong-" + field
    assert error_code(lambda: s3.put_object(
        Bucket="proto", Key=key, Body=data, **{field: wrong})) == "BadDigest", field
    assert absent(key), field
# Right values sent by the caller pass.
s3.put_object(Bucket="proto", Key="md5", Body=data, ContentMD5=digest("md5", data))
assert s3.get_object(Bucket="proto", Key="md5")["Body"].read() == data

# CRC32C and CRC64NVME (boto3 needs awscrt for them): as headers on signed raw PUTs.
for header, function in [("x-amz-checksum-crc32c", crc32c), ("x-amz-checksum-crc64nvme", crc64nvme),
                         ("x-amz-checksum-crc32", crc32)]:
    name = header.rsplit("-", 1)[1]
    status, code, _ = signed_put("/proto/raw-" + name, data, extra={header: function(data)})
    assert status == 200, (header, status, code)
    head = s3.head_object(Bucket="proto", Key="raw-" + name, ChecksumMode="ENABLED")
    assert head["Checksum" + name.upper()] == function(data), (header, head)
    status, code, _ = signed_put("/proto/raw-bad-" + name, data,
                                 extra={header: function(data + b"!")})
    assert (status, code) == (400, "BadDigest"), (header, status, code)
    assert absent("raw-bad-" + name), header

# Trailing checksums: right (stored and returned), wrong (BadDigest, nothing stored).
for trailer, function in [("x-amz-checksum-crc32", crc32), ("x-amz-checksum-crc32c", crc32c),
                          ("x-amz-checksum-sha256", lambda d: digest("sha256", d))]:
    name = trailer.rsplit("-", 1)[1]
    status, code, _ = trailer_put("/proto/trail-" + name, data, trailer, function(data))
    assert status == 200, (trailer, status, code)
    got = s3.get_object(Bucket="proto", Key="trail-" + name, ChecksumMode="ENABLED")
    assert got["Body"].read() == data and got["Checksum" + name.upper()] == function(data)
    status, code, _ = trailer_put("/proto/trail-bad-" + name, data, trailer, function(b"x"))
    assert (status, code) == (400, "BadDigest"), (trailer, status, code)
    assert absent("trail-bad-" + name), trailer

# UploadPart: checked and returned the same way; a wrong part is not kept.
upload = s3.create_multipart_upload(Bucket="proto", Key="parts")["UploadId"]
part = s3.upload_part(Bucket="proto", Key="parts", UploadId=upload, PartNumber=1, Body=data)
assert part["ChecksumCRC32"] == crc32(data), part
part = s3.upload_part(Bucket="proto", Key="parts", UploadId=upload, PartNumber=2, Body=data,
                      ChecksumAlgorithm="SHA256")
assert part["ChecksumSHA256"] == digest("sha256", data), part
assert error_code(lambda: s3.upload_part(
    Bucket="proto", Key="parts", UploadId=upload, PartNumber=3, Body=data,
    ChecksumCRC32=crc32(b"x"))) == "BadDigest"
assert error_code(lambda: s3.upload_part(
    Bucket="proto", Key="parts", UploadId=upload, PartNumber=3, Body=data,
    ContentMD5=digest("md5", b"x"))) == "BadDigest"
listed = s3.list_parts(Bucket="proto", Key="parts", UploadId=upload)["Parts"]
assert [p["PartNumber"] for p in listed] == [1, 2], listed
s3.abort_multipart_upload(Bucket="proto", Key="parts", UploadId=upload)
print("flexible checksums and Content-MD5: checked")

# ---- Payload hashes ----
body = b"payload hash " * 50
status, code, _ = signed_put("/proto/signed", body)
assert status == 200, (status, code)
assert s3.get_object(Bucket="proto", Key="signed")["Body"].read() == body
status, code, _ = signed_put("/proto/signed-bad", body, payload_hash=sha256_hex(b"other"))
assert (status, code) == (400, "XAmzContentSHA256Mismatch"), (status, code)
assert absent("signed-bad")
status, code, _ = signed_put("/proto/unsigned", body, payload_hash="UNSIGNED-PAYLOAD")
assert status == 200, (status, code)
assert s3.get_object(Bucket="proto", Key="unsigned")["Body"].read() == body
# A signed hash that is not a hash at all.
status, code, _ = signed_put("/proto/garbled", body, payload_hash="not-a-hash")
assert status in (400, 403) and absent("garbled"), (status, code)
# STREAMING-AWS4-HMAC-SHA256-PAYLOAD: every chunk signed; a changed chunk is refused.
chunks = [b"a" * 8192, b"b" * 8192, b"c" * 100]
status, code, _ = streaming_put("/proto/streamed", chunks)
assert status == 200, (status, code)
assert s3.get_object(Bucket="proto", Key="streamed")["Body"].read() == b"".join(chunks)
status, code, _ = streaming_put("/proto/streamed-bad", chunks, tamper=True)
assert (status, code) == (403, "SignatureDoesNotMatch"), (status, code)
assert absent("streamed-bad")
print("payload hashes (signed, unsigned, streaming): checked")

# ---- Clock skew: 15 minutes either way ----
now = datetime.datetime.now(datetime.timezone.utc)
for minutes in (-5, 5):
    status, code, _ = signed_get("/", when=now + datetime.timedelta(minutes=minutes))
    assert status == 200, (minutes, status, code)
for minutes in (-20, 20):
    status, code, _ = signed_get("/", when=now + datetime.timedelta(minutes=minutes))
    assert (status, code) == (403, "RequestTimeTooSkewed"), (minutes, status, code)
    status, code, _ = signed_put("/proto/skewed", b"x", when=now + datetime.timedelta(minutes=minutes))
    assert (status, code) == (403, "RequestTimeTooSkewed"), (minutes, status, code)
assert absent("skewed")
# SigV2 in a header carries no date s3s checks (a captured request would replay for ever):
# refused whatever its date, as AWS's newer regions do.
v2 = boto3.client(
    "s3", endpoint_url=ENDPOINT, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
    region_name="us-east-1", verify=CA,
    config=Config(signature_version="s3", s3={"addressing_style": "path"},
                  retries={"max_attempts": 1}))
assert error_code(lambda: v2.list_buckets()) == "InvalidRequest"
print("clock skew: checked")

# ---- Presigned URLs ----
s3.put_object(Bucket="proto", Key="shared", Body=b"presigned bytes")


def fetch(url):
    try:
        with urllib.request.urlopen(url, context=TLS, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# boto3 presigns with SigV2 by default (an `Expires` time), with SigV4 when asked (an
# `X-Amz-Expires` duration): both are bounded to seven days.
s3v4 = boto3.client(
    "s3", endpoint_url=ENDPOINT, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
    region_name="us-east-1", verify=CA,
    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
for presigner, marker in [(s3, "Expires="), (s3v4, "X-Amz-Expires=")]:
    def presign(seconds, key="shared"):
        url = presigner.generate_presigned_url(
            "get_object", Params={"Bucket": "proto", "Key": key}, ExpiresIn=seconds)
        assert marker in url, url
        return url
    url = presign(3600)
    assert fetch(url) == (200, b"presigned bytes"), (marker, fetch(url))
    assert fetch(presign(604800 - 60))[0] == 200, marker
    status, text = fetch(presign(604801 + 60))
    assert status == 403 and b"AccessDenied" in text, (marker, status, text)
    # A changed signature, and another key's object under the same signature.
    status, _ = fetch(url.replace("Signature=", "Signature=0"))
    assert status in (400, 403), (marker, status)
    status, _ = fetch(url.replace("/shared?", "/default?"))
    assert status == 403, (marker, status)
    short = presign(1)
    time.sleep(2.5)
    status, text = fetch(short)
    assert status == 403 and b"AccessDenied" in text, (marker, status, text)
print("presigned URLs: checked")

# ---- Virtual-host style ----
# boto3 against a configured domain: https://<bucket>.<domain>:port/<key>.
vhost = client("https://%s:%d" % (VHOST_DOMAIN, PORT), style="virtual")
vhost.create_bucket(Bucket="vhosted")
vhost.put_object(Bucket="vhosted", Key="dir/obj", Body=b"virtual host")
assert vhost.get_object(Bucket="vhosted", Key="dir/obj")["Body"].read() == b"virtual host"
assert [o["Key"] for o in vhost.list_objects_v2(Bucket="vhosted")["Contents"]] == ["dir/obj"]
# The same objects path style, on the domain itself and on 127.0.0.1.
on_domain = client("https://%s:%d" % (VHOST_DOMAIN, PORT), style="path")
assert on_domain.get_object(Bucket="vhosted", Key="dir/obj")["Body"].read() == b"virtual host"
assert s3.get_object(Bucket="vhosted", Key="dir/obj")["Body"].read() == b"virtual host"
# <bucket>.localhost (the dev node's form): a raw request whose Host names the bucket.
host = "vhosted.localhost:%d" % PORT
status, code, got = signed_get("/dir/obj", host=host)
assert (status, got) == (200, b"virtual host"), (status, code, got)
status, code, _ = signed_put("/put-by-host", b"by host", host=host)
assert status == 200, (status, code)
assert s3.get_object(Bucket="vhosted", Key="put-by-host")["Body"].read() == b"by host"
# localhost itself is path style.
status, code, got = signed_get("/vhosted/dir/obj", host="localhost:%d" % PORT)
assert (status, got) == (200, b"virtual host"), (status, code, got)
# A host naming another bucket reaches that bucket, not this one.
status, code, _ = signed_get("/dir/obj", host="nosuchbucket.localhost:%d" % PORT)
assert (status, code) == (404, "NoSuchBucket"), (status, code)
for key in ["dir/obj", "put-by-host"]:
    s3.delete_object(Bucket="vhosted", Key=key)
s3.delete_bucket(Bucket="vhosted")
print("virtual-host style: checked")

# ---- Bounds ----


def raw_exchange(request, tls=True, read_timeout=10):
    """Sends `request` bytes and returns what came back before the server closed or went
    quiet (a send the server cut short is not an error here)."""
    sock = socket.create_connection(("127.0.0.1", PORT), timeout=read_timeout)
    if tls:
        sock = TLS.wrap_socket(sock, server_hostname="127.0.0.1")
    received = b""
    try:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError, socket.timeout):
                break
            if not chunk:
                break
            received += chunk
            if b"\r\n\r\n" in received and tls:
                head = received.split(b"\r\n\r\n")[0]
                if b"content-length: 0" in head.lower() or len(received) > len(head) + 4 + 200:
                    break
    finally:
        sock.close()
    return received


# The same exchange with a small header is answered (so an empty answer below is the
# server's refusal, not a TLS failure of this client).
small = raw_exchange(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: a\r\n\r\n")
assert small.startswith(b"HTTP/1.1 "), small[:100]
# A header over the server's 64 KiB: refused (431) or the connection closed, never served.
big = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * (100 << 10) + b"\r\n\r\n"
answer = raw_exchange(big)
assert not answer.startswith(b"HTTP/1.1 200"), answer[:100]
assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:100]
# A body declared over the bound: EntityTooLarge at once, before a body byte is sent.
for length_header in [b"Content-Length: 300000000", b"Content-Length: 5368709121",
                      b"Content-Length: 10\r\nx-amz-decoded-content-length: 300000000"]:
    answer = raw_exchange(b"PUT /proto/huge HTTP/1.1\r\nHost: 127.0.0.1\r\n" + length_header
                          + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"EntityTooLarge" in answer, answer[:300]
assert absent("huge")
# Plaintext HTTP to the HTTPS port: no HTTP answer at all.
answer = raw_exchange(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", tls=False)
assert b"HTTP/1." not in answer, answer[:100]
# The server still serves after all of that.
assert s3.head_object(Bucket="proto", Key="shared")["ContentLength"] == len(b"presigned bytes")
print("bounds (header, declared body, plaintext): checked")

for entry in s3.list_objects_v2(Bucket="proto").get("Contents", []):
    s3.delete_object(Bucket="proto", Key=entry["Key"])
s3.delete_bucket(Bucket="proto")
print("protocol edges with boto3 %s: every check passed" % boto3.__version__)
sys.exit(0)
