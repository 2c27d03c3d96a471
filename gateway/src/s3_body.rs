//! An upload's body (PutObject, UploadPart) read whole within a bound, and checked against
//! what the client said it is before anything is stored.
//!
//! What is checked, and by whom:
//! - The SigV4 payload hash (`x-amz-content-sha256` as a hex digest) and the chunk
//!   signatures of `STREAMING-AWS4-HMAC-SHA256-PAYLOAD`: by `s3s`, as the body streams; a
//!   failure surfaces here as a read error and is answered XAmzContentSHA256Mismatch or
//!   SignatureDoesNotMatch. `UNSIGNED-PAYLOAD` and `STREAMING-UNSIGNED-PAYLOAD-TRAILER`
//!   carry no payload hash (AWS allows them; TLS protects the bytes in flight).
//! - Flexible checksums (`x-amz-checksum-crc32`, `-crc32c`, `-crc64nvme`, `-sha1`,
//!   `-sha256`), as headers or as trailers of an aws-chunked body: here, over the whole
//!   body; a mismatch is BadDigest. An algorithm named by `x-amz-sdk-checksum-algorithm`
//!   without a value is computed and returned, as S3 does.
//! - `Content-MD5`: here; a mismatch is BadDigest, a value that is not an MD5 InvalidDigest.
//!
//! The body is held in memory, up to the caller's limit: more is EntityTooLarge, and the
//! read stops there (the front refuses a declared length over it before reading at all).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Bytes};
use s3s::checksum::ChecksumHasher;
use s3s::dto::{ChecksumAlgorithm, StreamingBlob};
use s3s::{S3Error, S3ErrorCode, S3Result, TrailingHeaders, s3_error};

use crate::objects::ObjectChecksums;

/// What a request says its body is; each value as the client sent it (base64).
#[derive(Debug, Default)]
pub struct Claims<'a> {
    pub content_md5: Option<&'a str>,
    /// `x-amz-sdk-checksum-algorithm`: compute this one even without a value.
    pub algorithm: Option<&'a ChecksumAlgorithm>,
    /// The `x-amz-trailer` header: the trailer the aws-chunked body ends with.
    pub trailer: Option<&'a str>,
    pub crc32: Option<&'a str>,
    pub crc32c: Option<&'a str>,
    pub crc64nvme: Option<&'a str>,
    pub sha1: Option<&'a str>,
    pub sha256: Option<&'a str>,
}

/// Reads `body` whole (at most `limit_bytes`: EntityTooLarge beyond) and checks it against
/// `claims` and the trailers it ended with; returns it with the checksums it was checked
/// against (or asked to have computed). Nothing is stored by this; a caller stores the
/// body only after it returned `Ok`.
pub async fn read_checked(
    body: Option<StreamingBlob>,
    limit_bytes: usize,
    claims: &Claims<'_>,
    trailers: Option<&TrailingHeaders>,
) -> S3Result<(Bytes, ObjectChecksums)> {
    let bytes = match body {
        None => Bytes::new(),
        Some(blob) => read_limited(s3s::Body::from(blob), limit_bytes).await?,
    };
    // The trailers arrived with the body's last chunk, which has now been read.
    let trailer_map = trailers.and_then(TrailingHeaders::take);
    let trailed = |name: &str| {
        trailer_map.as_ref().and_then(|map| map.get(name)).and_then(|value| value.to_str().ok())
    };
    let mut claimed = Vec::with_capacity(ALGORITHMS.len());
    for algorithm in &ALGORITHMS {
        let header = algorithm.claim(claims);
        let trailer = trailed(algorithm.header);
        let value = match (header, trailer) {
            (Some(header), Some(trailer)) if header.as_str() != trailer => {
                return Err(bad_digest(algorithm));
            }
            (header, trailer) => header.or(trailer.map(str::to_owned)),
        };
        let named = claims.algorithm.is_some_and(|named| named.as_str() == algorithm.name);
        if value.is_some() || named {
            claimed.push((algorithm, value));
        }
    }
    if let Some(declared) = claims.trailer {
        check_trailer_arrived(declared, trailed)?;
    }
    if let Some(named) = claims.algorithm
        && !ALGORITHMS.iter().any(|algorithm| algorithm.name == named.as_str())
    {
        return Err(s3_error!(InvalidRequest, "unknown checksum algorithm"));
    }
    let checksums = verify_checksums(&bytes, &claimed)?;
    if let Some(content_md5) = claims.content_md5 {
        verify_content_md5(&bytes, content_md5)?;
    }
    Ok((bytes, checksums))
}

/// The body's bytes, at most `limit_bytes` of them; the read stops at the first byte over.
async fn read_limited(mut body: s3s::Body, limit_bytes: usize) -> S3Result<Bytes> {
    if let Some(bytes) = body.bytes() {
        return if bytes.len() > limit_bytes { Err(too_large()) } else { Ok(bytes) };
    }
    let hint = body.size_hint();
    let expected = usize::try_from(hint.exact().unwrap_or(hint.lower())).unwrap_or(limit_bytes);
    let mut out = Vec::with_capacity(expected.min(limit_bytes));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(stream_error)?;
        let Ok(data) = frame.into_data() else { continue };
        if data.len() > limit_bytes - out.len() {
            return Err(too_large());
        }
        out.extend_from_slice(&data);
    }
    Ok(Bytes::from(out))
}

fn too_large() -> S3Error {
    s3_error!(EntityTooLarge, "the body is larger than this server takes in one request")
}

/// The S3 error for a body that failed while it streamed. `s3s` keeps its stream error
/// types private, so they are told apart by their names in the message.
fn stream_error(error: s3s::StdError) -> S3Error {
    let text = error.to_string();
    if text.contains("Sha256Mismatch") {
        let mut error = S3Error::with_message(
            S3ErrorCode::Custom("XAmzContentSHA256Mismatch".into()),
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        );
        error.set_status_code(hyper::StatusCode::BAD_REQUEST);
        error
    } else if text.contains("SignatureMismatch") {
        s3_error!(SignatureDoesNotMatch, "a chunk signature does not match")
    } else {
        tracing::debug!(%text, "S3: an upload's body ended early or malformed");
        s3_error!(IncompleteBody, "the body ended early or is malformed")
    }
}

/// One flexible-checksum algorithm: its S3 name and header.
struct Algorithm {
    name: &'static str,
    header: &'static str,
    /// Bytes of its digest.
    digest_bytes: usize,
    claim: fn(&Claims<'_>) -> Option<String>,
}

impl Algorithm {
    fn claim(&self, claims: &Claims<'_>) -> Option<String> {
        (self.claim)(claims)
    }
}

impl std::fmt::Debug for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

static ALGORITHMS: [Algorithm; 5] = [
    Algorithm {
        name: ChecksumAlgorithm::CRC32,
        header: "x-amz-checksum-crc32",
        digest_bytes: 4,
        claim: |c| c.crc32.map(str::to_owned),
    },
    Algorithm {
        name: ChecksumAlgorithm::CRC32C,
        header: "x-amz-checksum-crc32c",
        digest_bytes: 4,
        claim: |c| c.crc32c.map(str::to_owned),
    },
    Algorithm {
        name: ChecksumAlgorithm::CRC64NVME,
        header: "x-amz-checksum-crc64nvme",
        digest_bytes: 8,
        claim: |c| c.crc64nvme.map(str::to_owned),
    },
    Algorithm {
        name: ChecksumAlgorithm::SHA1,
        header: "x-amz-checksum-sha1",
        digest_bytes: 20,
        claim: |c| c.sha1.map(str::to_owned),
    },
    Algorithm {
        name: ChecksumAlgorithm::SHA256,
        header: "x-amz-checksum-sha256",
        digest_bytes: 32,
        claim: |c| c.sha256.map(str::to_owned),
    },
];

/// A declared trailer (`x-amz-trailer: x-amz-checksum-crc32`) must have arrived.
fn check_trailer_arrived<'a>(
    declared: &str,
    trailed: impl Fn(&str) -> Option<&'a str>,
) -> S3Result<()> {
    for name in declared.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        let name = name.to_ascii_lowercase();
        if ALGORITHMS.iter().any(|a| a.header == name) && trailed(&name).is_none() {
            return Err(s3_error!(IncompleteBody, "the declared checksum trailer did not arrive"));
        }
    }
    Ok(())
}

/// Computes each claimed algorithm over `bytes` in one pass and compares it with the value
/// the client sent, if it sent one.
fn verify_checksums(
    bytes: &[u8],
    claimed: &[(&Algorithm, Option<String>)],
) -> S3Result<ObjectChecksums> {
    if claimed.is_empty() {
        return Ok(ObjectChecksums::default());
    }
    let wants = |name: &str| claimed.iter().any(|(algorithm, _)| algorithm.name == name);
    let mut hasher = ChecksumHasher::default();
    if wants(ChecksumAlgorithm::CRC32) {
        hasher.crc32 = Some(Default::default());
    }
    if wants(ChecksumAlgorithm::CRC32C) {
        hasher.crc32c = Some(Default::default());
    }
    if wants(ChecksumAlgorithm::CRC64NVME) {
        hasher.crc64nvme = Some(Default::default());
    }
    if wants(ChecksumAlgorithm::SHA1) {
        hasher.sha1 = Some(Default::default());
    }
    if wants(ChecksumAlgorithm::SHA256) {
        hasher.sha256 = Some(Default::default());
    }
    hasher.update(bytes);
    let computed = hasher.finalize();
    let checksums = ObjectChecksums {
        crc32: computed.checksum_crc32,
        crc32c: computed.checksum_crc32c,
        crc64nvme: computed.checksum_crc64nvme,
        sha1: computed.checksum_sha1,
        sha256: computed.checksum_sha256,
    };
    for (algorithm, value) in claimed {
        let Some(value) = value else { continue };
        let sent = STANDARD
            .decode(value.trim())
            .ok()
            .filter(|digest| digest.len() == algorithm.digest_bytes)
            .ok_or_else(|| {
                S3Error::with_message(
                    S3ErrorCode::InvalidRequest,
                    format!("Value for {} header is invalid.", algorithm.header),
                )
            })?;
        let ours = checksums.value(algorithm.name).and_then(|text| STANDARD.decode(text).ok());
        if ours.as_deref() != Some(sent.as_slice()) {
            return Err(bad_digest(algorithm));
        }
    }
    Ok(checksums)
}

fn bad_digest(algorithm: &Algorithm) -> S3Error {
    S3Error::with_message(
        S3ErrorCode::BadDigest,
        format!("The {} you specified did not match the calculated checksum.", algorithm.name),
    )
}

fn verify_content_md5(bytes: &[u8], content_md5: &str) -> S3Result<()> {
    let sent =
        STANDARD.decode(content_md5.trim()).ok().filter(|digest| digest.len() == 16).ok_or_else(
            || s3_error!(InvalidDigest, "The Content-MD5 you specified is not valid."),
        )?;
    if md5_many::md5(bytes).as_slice() != sent.as_slice() {
        return Err(s3_error!(
            BadDigest,
            "The Content-MD5 you specified did not match what was received."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(bytes: &'static [u8]) -> Option<StreamingBlob> {
        Some(StreamingBlob::from(s3s::Body::from(Bytes::from_static(bytes))))
    }

    async fn code_of(body: &'static [u8], claims: Claims<'_>) -> Option<String> {
        read_checked(blob(body), 1 << 20, &claims, None)
            .await
            .err()
            .map(|error| error.code().as_str().to_owned())
    }

    // "hello" under each algorithm, as S3 and the SDKs write them.
    const CRC32: &str = "NhCmhg==";
    const CRC32C: &str = "mnG7TA==";
    const SHA1: &str = "qvTGHdzF6KLavt4PO0gs2a6pQ00=";
    const SHA256: &str = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
    const MD5: &str = "XUFAKrxLKna5cZ2REBfFkg==";

    #[tokio::test]
    async fn matching_checksums_pass_and_are_returned() {
        let claims = Claims {
            crc32: Some(CRC32),
            crc32c: Some(CRC32C),
            sha1: Some(SHA1),
            sha256: Some(SHA256),
            content_md5: Some(MD5),
            ..Claims::default()
        };
        let (bytes, sums) = read_checked(blob(b"hello"), 1 << 20, &claims, None).await.unwrap();
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(sums.crc32.as_deref(), Some(CRC32));
        assert_eq!(sums.crc32c.as_deref(), Some(CRC32C));
        assert_eq!(sums.sha1.as_deref(), Some(SHA1));
        assert_eq!(sums.sha256.as_deref(), Some(SHA256));
        assert_eq!(sums.crc64nvme, None);
    }

    #[tokio::test]
    async fn a_named_algorithm_without_a_value_is_computed() {
        let algorithm = ChecksumAlgorithm::from_static(ChecksumAlgorithm::CRC64NVME);
        let claims = Claims { algorithm: Some(&algorithm), ..Claims::default() };
        let (_, sums) = read_checked(blob(b"hello"), 1 << 20, &claims, None).await.unwrap();
        let crc64 = sums.crc64nvme.expect("computed");
        assert_eq!(STANDARD.decode(&crc64).unwrap().len(), 8);
        // The computed value is what a client sending it would be checked against.
        let claims = Claims { crc64nvme: Some(&crc64), ..Claims::default() };
        assert_eq!(code_of(b"hello", claims).await, None);
        let claims = Claims { crc64nvme: Some(&crc64), ..Claims::default() };
        assert_eq!(code_of(b"hellO", claims).await.as_deref(), Some("BadDigest"));
    }

    #[tokio::test]
    async fn mismatches_are_bad_digest_and_malformed_values_refused() {
        for claims in [
            Claims { crc32: Some(CRC32C), ..Claims::default() },
            Claims { crc32c: Some(CRC32), ..Claims::default() },
            Claims { sha1: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA="), ..Claims::default() },
            Claims {
                sha256: Some("LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCU="),
                ..Claims::default()
            },
            Claims { content_md5: Some("XUFAKrxLKna5cZ2REBfFkw=="), ..Claims::default() },
        ] {
            let shown = format!("{claims:?}");
            assert_eq!(code_of(b"hello", claims).await.as_deref(), Some("BadDigest"), "{shown}");
        }
        let claims = Claims { crc32: Some("not base64!"), ..Claims::default() };
        assert_eq!(code_of(b"hello", claims).await.as_deref(), Some("InvalidRequest"));
        let claims = Claims { crc32: Some(SHA1), ..Claims::default() };
        assert_eq!(code_of(b"hello", claims).await.as_deref(), Some("InvalidRequest"));
        let claims = Claims { content_md5: Some(CRC32), ..Claims::default() };
        assert_eq!(code_of(b"hello", claims).await.as_deref(), Some("InvalidDigest"));
        let unknown = ChecksumAlgorithm::from_static("MD4");
        let claims = Claims { algorithm: Some(&unknown), ..Claims::default() };
        assert_eq!(code_of(b"hello", claims).await.as_deref(), Some("InvalidRequest"));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_too_large() {
        let error = read_checked(blob(b"hello"), 4, &Claims::default(), None).await.unwrap_err();
        assert_eq!(error.code().as_str(), "EntityTooLarge");
        assert!(read_checked(blob(b"hello"), 5, &Claims::default(), None).await.is_ok());
    }

    #[tokio::test]
    async fn a_streamed_body_is_cut_off_at_the_limit() {
        // A body of unknown length that never ends: the read must stop at the limit.
        let endless = futures_like_endless();
        let body = s3s::Body::http_body(endless);
        let error = read_limited(body, 1 << 16).await.unwrap_err();
        assert_eq!(error.code().as_str(), "EntityTooLarge");
    }

    /// An http body that yields 4 KiB frames for ever.
    fn futures_like_endless()
    -> impl hyper::body::Body<Data = Bytes, Error = std::io::Error> + Send + Sync + 'static {
        struct Endless;
        impl hyper::body::Body for Endless {
            type Data = Bytes;
            type Error = std::io::Error;
            fn poll_frame(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>>
            {
                std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
                    &[7u8; 4096],
                )))))
            }
        }
        Endless
    }

    #[test]
    fn stream_errors_map_to_their_s3_codes() {
        let code = |text: &str| {
            let error: s3s::StdError = text.to_owned().into();
            stream_error(error).code().as_str().to_owned()
        };
        assert_eq!(code("UploadStreamError: Sha256Mismatch"), "XAmzContentSHA256Mismatch");
        assert_eq!(code("AwsChunkedStreamError: SignatureMismatch"), "SignatureDoesNotMatch");
        assert_eq!(code("connection reset"), "IncompleteBody");
        let error: s3s::StdError = "UploadStreamError: Sha256Mismatch".to_owned().into();
        assert_eq!(stream_error(error).status_code(), Some(hyper::StatusCode::BAD_REQUEST));
    }
}
