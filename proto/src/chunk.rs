//! Payloads of the chunk service: put, get, has-chunks and release, and their answers.
//!
//! Byte maps (little-endian):
//!
//! ```text
//! every request      0  1        tenant_len   0 = no tenant (node-to-node), else 1..=63
//!                    1  n        tenant       the org id, [a-z0-9-] (present if n > 0)
//! PutChunk        1+n  rest      envelope     the sealed chunk, opaque here (>= 1 byte)
//! GetChunk        1+n  32        chunk_id
//! HasChunks       1+n  4         count        1..=HAS_CHUNKS_IDS_MAX
//!                 5+n  32*count  chunk_ids
//! ReleaseChunk    1+n  32        chunk_id     the chunk one reference of is dropped
//!
//! responses     Ok PutChunk: empty; Ok GetChunk: the envelope; Ok HasChunks: a bitmap of
//!               ceil(count / 8) bytes, bit i (LSB first) set when id i is held; Ok
//!               ReleaseChunk: empty; any other status: an optional UTF-8 message of at
//!               most ERROR_MESSAGE_MAX_BYTES.
//! ```
//!
//! The tenant names on whose behalf the request runs: a tenant caller's must be its own
//! org (the server checks it against the certificate), a storage node's may name the tenant
//! it replicates for, or none. A release names the same tenant the put it undoes named.

use std::fmt;

use crate::constants::{ERROR_MESSAGE_MAX_BYTES, HAS_CHUNKS_IDS_MAX, TENANT_ID_MAX_BYTES};
use crate::frame::Op;

const CHUNK_ID_BYTES: usize = 32;

/// On whose behalf a chunk request runs: a tenant's org id, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantRef<'a>(Option<&'a str>);

/// A decoded chunk-service request, borrowing the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkRequest<'a> {
    Put { tenant: TenantRef<'a>, envelope: &'a [u8] },
    Get { tenant: TenantRef<'a>, chunk_id: [u8; 32] },
    Has { tenant: TenantRef<'a>, chunk_ids: &'a [u8] },
    Release { tenant: TenantRef<'a>, chunk_id: [u8; 32] },
}

/// A successful answer's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkResponse<'a> {
    Put,
    Get { envelope: &'a [u8] },
    Has(HasChunksBitmap<'a>),
    Release,
}

/// Which of the asked chunk ids a node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HasChunksBitmap<'a> {
    bits: &'a [u8],
    count: usize,
}

/// Why a payload does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadError {
    /// Fewer bytes than the fields announce.
    Truncated { needed_bytes: usize, len_bytes: usize },
    /// More bytes than the fields use.
    TrailingBytes { extra_bytes: usize },
    /// A tenant id over the limit or with a character outside [a-z0-9-].
    BadTenant,
    /// A put without an envelope.
    EmptyEnvelope,
    /// A has-chunks count of zero or over the limit.
    BadCount { count: u32, max: u32 },
    /// This op has no chunk-service payload.
    NotAChunkOp { op: Op },
    /// An error message over the limit or not UTF-8.
    BadMessage,
}

impl<'a> TenantRef<'a> {
    pub const NONE: TenantRef<'static> = TenantRef(None);

    /// A tenant reference for `org`, checked as the decoder checks it.
    pub fn org(org: &'a str) -> Result<TenantRef<'a>, PayloadError> {
        check_tenant(org.as_bytes())?;
        Ok(TenantRef(Some(org)))
    }

    pub fn as_str(&self) -> Option<&'a str> {
        self.0
    }

    fn encoded_len(&self) -> usize {
        1 + self.0.map_or(0, str::len)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let org = self.0.unwrap_or("");
        out.push(org.len() as u8);
        out.extend_from_slice(org.as_bytes());
    }

    /// Splits a tenant reference off the front of `payload`.
    fn decode(payload: &'a [u8]) -> Result<(TenantRef<'a>, &'a [u8]), PayloadError> {
        let (&len, rest) = payload.split_first().ok_or(truncated(1, payload.len()))?;
        let len = usize::from(len);
        if len == 0 {
            return Ok((TenantRef(None), rest));
        }
        let org = rest.get(..len).ok_or(truncated(1 + len, payload.len()))?;
        check_tenant(org)?;
        let org = std::str::from_utf8(org).map_err(|_| PayloadError::BadTenant)?;
        Ok((TenantRef(Some(org)), &rest[len..]))
    }
}

impl<'a> ChunkRequest<'a> {
    pub fn op(&self) -> Op {
        match self {
            ChunkRequest::Put { .. } => Op::PutChunk,
            ChunkRequest::Get { .. } => Op::GetChunk,
            ChunkRequest::Has { .. } => Op::HasChunks,
            ChunkRequest::Release { .. } => Op::ReleaseChunk,
        }
    }

    pub fn tenant(&self) -> TenantRef<'a> {
        match self {
            ChunkRequest::Put { tenant, .. }
            | ChunkRequest::Get { tenant, .. }
            | ChunkRequest::Has { tenant, .. }
            | ChunkRequest::Release { tenant, .. } => *tenant,
        }
    }

    /// The payload bytes, appended to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.tenant().encode_into(out);
        match self {
            ChunkRequest::Put { envelope, .. } => out.extend_from_slice(envelope),
            ChunkRequest::Get { chunk_id, .. } | ChunkRequest::Release { chunk_id, .. } => {
                out.extend_from_slice(chunk_id)
            }
            ChunkRequest::Has { chunk_ids, .. } => {
                let count = (chunk_ids.len() / CHUNK_ID_BYTES) as u32;
                out.extend_from_slice(&count.to_le_bytes());
                out.extend_from_slice(chunk_ids);
            }
        }
    }

    /// The payload's length, for the frame header.
    pub fn encoded_len(&self) -> usize {
        self.tenant().encoded_len()
            + match self {
                ChunkRequest::Put { envelope, .. } => envelope.len(),
                ChunkRequest::Get { .. } | ChunkRequest::Release { .. } => CHUNK_ID_BYTES,
                ChunkRequest::Has { chunk_ids, .. } => 4 + chunk_ids.len(),
            }
    }

    /// Decodes the payload of a request frame with op `op`.
    pub fn decode(op: Op, payload: &'a [u8]) -> Result<ChunkRequest<'a>, PayloadError> {
        let (tenant, body) = TenantRef::decode(payload)?;
        match op {
            Op::PutChunk if body.is_empty() => Err(PayloadError::EmptyEnvelope),
            Op::PutChunk => Ok(ChunkRequest::Put { tenant, envelope: body }),
            Op::GetChunk => {
                let chunk_id = exact::<CHUNK_ID_BYTES>(body, payload.len() - body.len())?;
                Ok(ChunkRequest::Get { tenant, chunk_id })
            }
            Op::ReleaseChunk => {
                let chunk_id = exact::<CHUNK_ID_BYTES>(body, payload.len() - body.len())?;
                Ok(ChunkRequest::Release { tenant, chunk_id })
            }
            Op::HasChunks => {
                let head = payload.len() - body.len();
                let count = u32::from_le_bytes(
                    body.get(..4).ok_or(truncated(head + 4, payload.len()))?.try_into().expect("4"),
                );
                if count == 0 || count > HAS_CHUNKS_IDS_MAX {
                    return Err(PayloadError::BadCount { count, max: HAS_CHUNKS_IDS_MAX });
                }
                let ids_len = count as usize * CHUNK_ID_BYTES;
                let ids = &body[4..];
                if ids.len() < ids_len {
                    return Err(truncated(head + 4 + ids_len, payload.len()));
                }
                if ids.len() > ids_len {
                    return Err(PayloadError::TrailingBytes { extra_bytes: ids.len() - ids_len });
                }
                Ok(ChunkRequest::Has { tenant, chunk_ids: ids })
            }
            op => Err(PayloadError::NotAChunkOp { op }),
        }
    }

    /// The ids of a `Has` request, one by one.
    pub fn chunk_ids(&self) -> impl Iterator<Item = [u8; 32]> + 'a {
        let ids: &'a [u8] = match self {
            ChunkRequest::Has { chunk_ids, .. } => chunk_ids,
            _ => &[],
        };
        ids.chunks_exact(CHUNK_ID_BYTES).map(|id| id.try_into().expect("32 bytes"))
    }
}

impl<'a> ChunkResponse<'a> {
    /// Decodes the payload of an `Ok` response to `op`; `asked` is the number of ids a
    /// has-chunks request asked about.
    pub fn decode(op: Op, payload: &'a [u8], asked: usize) -> Result<Self, PayloadError> {
        match op {
            Op::PutChunk if payload.is_empty() => Ok(ChunkResponse::Put),
            Op::PutChunk => Err(PayloadError::TrailingBytes { extra_bytes: payload.len() }),
            Op::GetChunk if payload.is_empty() => Err(PayloadError::EmptyEnvelope),
            Op::GetChunk => Ok(ChunkResponse::Get { envelope: payload }),
            Op::ReleaseChunk if payload.is_empty() => Ok(ChunkResponse::Release),
            Op::ReleaseChunk => Err(PayloadError::TrailingBytes { extra_bytes: payload.len() }),
            Op::HasChunks => {
                let needed = asked.div_ceil(8);
                if payload.len() < needed {
                    return Err(truncated(needed, payload.len()));
                }
                if payload.len() > needed {
                    return Err(PayloadError::TrailingBytes {
                        extra_bytes: payload.len() - needed,
                    });
                }
                Ok(ChunkResponse::Has(HasChunksBitmap { bits: payload, count: asked }))
            }
            op => Err(PayloadError::NotAChunkOp { op }),
        }
    }
}

impl<'a> HasChunksBitmap<'a> {
    /// Whether the `index`-th id asked about is held.
    pub fn holds(&self, index: usize) -> bool {
        index < self.count && self.bits[index / 8] & (1 << (index % 8)) != 0
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encodes `held` (one flag per id asked) as a response payload, appended to `out`.
    pub fn encode_into(held: impl ExactSizeIterator<Item = bool>, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + held.len().div_ceil(8), 0);
        for (index, held) in held.enumerate() {
            if held {
                out[start + index / 8] |= 1 << (index % 8);
            }
        }
    }
}

/// An error response's message: at most [`ERROR_MESSAGE_MAX_BYTES`] of UTF-8, cut at a
/// character boundary when longer.
pub fn error_message(message: &str) -> &str {
    if message.len() <= ERROR_MESSAGE_MAX_BYTES {
        return message;
    }
    let mut end = ERROR_MESSAGE_MAX_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Decodes an error response's message.
pub fn decode_error_message(payload: &[u8]) -> Result<&str, PayloadError> {
    if payload.len() > ERROR_MESSAGE_MAX_BYTES {
        return Err(PayloadError::BadMessage);
    }
    std::str::from_utf8(payload).map_err(|_| PayloadError::BadMessage)
}

fn check_tenant(org: &[u8]) -> Result<(), PayloadError> {
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    if org.is_empty() || org.len() > TENANT_ID_MAX_BYTES || !org.iter().all(allowed) {
        return Err(PayloadError::BadTenant);
    }
    Ok(())
}

fn exact<const N: usize>(body: &[u8], head: usize) -> Result<[u8; N], PayloadError> {
    if body.len() < N {
        return Err(truncated(head + N, head + body.len()));
    }
    if body.len() > N {
        return Err(PayloadError::TrailingBytes { extra_bytes: body.len() - N });
    }
    Ok(body.try_into().expect("length checked"))
}

fn truncated(needed_bytes: usize, len_bytes: usize) -> PayloadError {
    PayloadError::Truncated { needed_bytes, len_bytes }
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Truncated { needed_bytes, len_bytes } => {
                write!(f, "payload of {len_bytes} bytes, {needed_bytes} needed")
            }
            PayloadError::TrailingBytes { extra_bytes } => {
                write!(f, "{extra_bytes} bytes after the payload's last field")
            }
            PayloadError::BadTenant => {
                write!(f, "tenant id must be 1 to {TENANT_ID_MAX_BYTES} of [a-z0-9-]")
            }
            PayloadError::EmptyEnvelope => f.write_str("empty envelope"),
            PayloadError::BadCount { count, max } => {
                write!(f, "{count} chunk ids asked: must be 1 to {max}")
            }
            PayloadError::NotAChunkOp { op } => write!(f, "{op:?} has no chunk payload"),
            PayloadError::BadMessage => f.write_str("error message too long or not UTF-8"),
        }
    }
}

impl std::error::Error for PayloadError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(request: &ChunkRequest<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        request.encode_into(&mut out);
        assert_eq!(out.len(), request.encoded_len());
        out
    }

    #[test]
    fn requests_round_trip() {
        let acme = TenantRef::org("acme-corp").unwrap();
        let ids: Vec<u8> = (0..3 * 32).map(|i| i as u8).collect();
        let requests = [
            ChunkRequest::Put { tenant: acme, envelope: b"sealed bytes" },
            ChunkRequest::Put { tenant: TenantRef::NONE, envelope: b"x" },
            ChunkRequest::Get { tenant: acme, chunk_id: [7; 32] },
            ChunkRequest::Has { tenant: TenantRef::NONE, chunk_ids: &ids },
            ChunkRequest::Release { tenant: acme, chunk_id: [9; 32] },
            ChunkRequest::Release { tenant: TenantRef::NONE, chunk_id: [0; 32] },
        ];
        for request in requests {
            let payload = encode(&request);
            assert_eq!(ChunkRequest::decode(request.op(), &payload), Ok(request));
        }
        let has = ChunkRequest::Has { tenant: acme, chunk_ids: &ids };
        let listed: Vec<[u8; 32]> = has.chunk_ids().collect();
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[1][0], 32);
    }

    #[test]
    fn malformed_requests_are_refused() {
        use PayloadError::*;
        assert!(matches!(ChunkRequest::decode(Op::GetChunk, &[]), Err(Truncated { .. })));
        assert_eq!(ChunkRequest::decode(Op::PutChunk, &[0]), Err(EmptyEnvelope));
        assert_eq!(ChunkRequest::decode(Op::GetChunk, &[1, b'A', 0]), Err(BadTenant));
        assert_eq!(ChunkRequest::decode(Op::GetChunk, &[1, b'/', 0]), Err(BadTenant));
        assert!(matches!(ChunkRequest::decode(Op::GetChunk, &[5, b'a']), Err(Truncated { .. })));
        let mut long = vec![64u8];
        long.extend([b'a'; 64]);
        assert_eq!(ChunkRequest::decode(Op::PutChunk, &long), Err(BadTenant));
        let mut get = vec![0u8];
        get.extend([1; 33]);
        assert_eq!(ChunkRequest::decode(Op::GetChunk, &get), Err(TrailingBytes { extra_bytes: 1 }));
        let mut has = vec![0u8];
        has.extend(0u32.to_le_bytes());
        assert!(matches!(ChunkRequest::decode(Op::HasChunks, &has), Err(BadCount { .. })));
        let mut has = vec![0u8];
        has.extend((HAS_CHUNKS_IDS_MAX + 1).to_le_bytes());
        assert!(matches!(ChunkRequest::decode(Op::HasChunks, &has), Err(BadCount { .. })));
        let mut has = vec![0u8];
        has.extend(2u32.to_le_bytes());
        has.extend([0; 32]);
        assert!(matches!(ChunkRequest::decode(Op::HasChunks, &has), Err(Truncated { .. })));
        assert_eq!(ChunkRequest::decode(Op::Ping, &[0]), Err(NotAChunkOp { op: Op::Ping }));
    }

    #[test]
    fn malformed_releases_are_refused() {
        use PayloadError::*;
        fn release(payload: &[u8]) -> Result<ChunkRequest<'_>, PayloadError> {
            ChunkRequest::decode(Op::ReleaseChunk, payload)
        }
        assert_eq!(release(&[]), Err(Truncated { needed_bytes: 1, len_bytes: 0 }));
        assert_eq!(release(&[0]), Err(Truncated { needed_bytes: 33, len_bytes: 1 }));
        let mut short = vec![0u8];
        short.extend([1; 31]);
        assert_eq!(release(&short), Err(Truncated { needed_bytes: 33, len_bytes: 32 }));
        let mut long = vec![0u8];
        long.extend([1; 33]);
        assert_eq!(release(&long), Err(TrailingBytes { extra_bytes: 1 }));
        let mut bad_tenant = vec![4u8];
        bad_tenant.extend(b"AC/E");
        bad_tenant.extend([1; 32]);
        assert_eq!(release(&bad_tenant), Err(BadTenant));
        let mut cut_tenant = vec![9u8];
        cut_tenant.extend(b"acme");
        assert!(matches!(release(&cut_tenant), Err(Truncated { .. })));
        // The answer to a release is empty.
        assert_eq!(ChunkResponse::decode(Op::ReleaseChunk, &[], 0), Ok(ChunkResponse::Release));
        assert_eq!(
            ChunkResponse::decode(Op::ReleaseChunk, &[0], 0),
            Err(TrailingBytes { extra_bytes: 1 })
        );
    }

    #[test]
    fn bitmaps_round_trip() {
        let held = [true, false, false, true, true, false, false, false, true, false];
        let mut payload = Vec::new();
        HasChunksBitmap::encode_into(held.iter().copied(), &mut payload);
        assert_eq!(payload.len(), 2);
        let ChunkResponse::Has(bitmap) =
            ChunkResponse::decode(Op::HasChunks, &payload, held.len()).unwrap()
        else {
            panic!("not a bitmap")
        };
        let decoded: Vec<bool> = (0..held.len()).map(|i| bitmap.holds(i)).collect();
        assert_eq!(decoded, held);
        assert!(!bitmap.holds(held.len()), "past the end is not held");
        assert!(ChunkResponse::decode(Op::HasChunks, &payload, 17).is_err());
        assert!(ChunkResponse::decode(Op::HasChunks, &payload, 8).is_err());
    }

    #[test]
    fn error_messages_are_bounded() {
        let long = "é".repeat(ERROR_MESSAGE_MAX_BYTES);
        let cut = error_message(&long);
        assert!(cut.len() <= ERROR_MESSAGE_MAX_BYTES);
        assert!(decode_error_message(cut.as_bytes()).is_ok());
        assert_eq!(decode_error_message(long.as_bytes()), Err(PayloadError::BadMessage));
        assert_eq!(decode_error_message(&[0xff]), Err(PayloadError::BadMessage));
    }
}
