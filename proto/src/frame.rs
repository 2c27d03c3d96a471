//! The frame header every fabric message starts with.
//!
//! Byte map (little-endian, 24 bytes):
//!
//! ```text
//! offset size field
//!      0    4 magic          b"KSKF"
//!      4    2 version        1
//!      6    1 kind           1 = request, 2 = response
//!      7    1 op             what the request asks (see `Op`); echoed in its response:
//!                            1 ping, 2 put chunk, 3 get chunk, 4 has chunks, 5 RDMA setup,
//!                            6 Raft, 7 release chunk
//!      8    8 request_id     chosen by the requester, unique among its requests in flight
//!     16    4 payload_len    bytes following the header
//!     20    2 status         0 in requests; the outcome in responses (see `Status`)
//!     22    2 reserved       0
//! ```

use std::fmt;

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 24;

const MAGIC: [u8; 4] = *b"KSKF";
const VERSION: u16 = 1;

const _: () = assert!(FRAME_HEADER_BYTES == 4 + 2 + 1 + 1 + 8 + 4 + 2 + 2);

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub op: Op,
    pub request_id: u64,
    pub payload_len_bytes: u32,
    pub status: Status,
}

/// Whether a frame asks or answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Request,
    Response,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Liveness and round-trip time; empty payloads both ways.
    Ping,
    /// Store a sealed envelope (payload: `ChunkRequest::Put`).
    PutChunk,
    /// Read a chunk's envelope (payload: a chunk id).
    GetChunk,
    /// Which of these chunks the node holds (payload: chunk ids; answer: a bitmap).
    HasChunks,
    /// Connect an RDMA queue pair (payload: the caller's 48-byte queue-pair record; answer:
    /// the node's). Sent over TCP+mTLS so the RDMA peer is the certificate's holder. Not
    /// idempotent: each setup that lands creates a queue pair on the node, so a retry would
    /// leave another one behind.
    RdmaSetup,
    /// A Raft RPC of a metadata group (payload: `kiseki_consensus`'s RPC bytes, which carry
    /// their own versioned header and shard). Raft tolerates a repeated vote or append.
    Raft,
    /// Drop one reference to a chunk (payload: `ChunkRequest::Release`, a tenant and a
    /// chunk id). Not idempotent: each release that lands drops a reference.
    ReleaseChunk,
}

impl Op {
    /// The operation's name in snake case, as metrics and logs label it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Ping => "ping",
            Op::PutChunk => "put_chunk",
            Op::GetChunk => "get_chunk",
            Op::HasChunks => "has_chunks",
            Op::RdmaSetup => "rdma_setup",
            Op::Raft => "raft",
            Op::ReleaseChunk => "release_chunk",
        }
    }
}

/// The outcome a response reports. Security failures are deliberately coarse: an absent
/// chunk and one the caller may not see are both `NotFound`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok,
    /// No such chunk, or none the caller may see.
    NotFound,
    /// The caller's identity may not make this request.
    Denied,
    /// The payload does not decode.
    BadRequest,
    /// A bounded queue is full; retry later.
    Busy,
    /// The node cannot store (capacity, failed device); another replica may.
    Unavailable,
    /// The stored chunk failed an integrity check on this node.
    Integrity,
    /// Anything else; the payload may carry a short message.
    Internal,
}

impl Status {
    /// The status's name in snake case, as metrics and logs label it.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotFound => "not_found",
            Status::Denied => "denied",
            Status::BadRequest => "bad_request",
            Status::Busy => "busy",
            Status::Unavailable => "unavailable",
            Status::Integrity => "integrity",
            Status::Internal => "internal",
        }
    }
}

/// Why bytes are not a frame header. The checks run in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    TooShort {
        len_bytes: usize,
    },
    BadMagic {
        found: [u8; 4],
    },
    UnknownVersion {
        version: u16,
    },
    UnknownKind {
        kind: u8,
    },
    UnknownOp {
        op: u8,
    },
    UnknownStatus {
        status: u16,
    },
    /// A request with a non-zero status.
    StatusInRequest,
    NonzeroReserved,
    /// The payload is over the reader's limit: the connection must be closed.
    Oversized {
        len_bytes: u32,
        max_bytes: u32,
    },
}

impl FrameHeader {
    pub fn request(op: Op, request_id: u64, payload_len_bytes: u32) -> FrameHeader {
        FrameHeader {
            kind: FrameKind::Request,
            op,
            request_id,
            payload_len_bytes,
            status: Status::Ok,
        }
    }

    pub fn response(
        op: Op,
        request_id: u64,
        status: Status,
        payload_len_bytes: u32,
    ) -> FrameHeader {
        FrameHeader { kind: FrameKind::Response, op, request_id, payload_len_bytes, status }
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut bytes = [0u8; FRAME_HEADER_BYTES];
        bytes[0..4].copy_from_slice(&MAGIC);
        bytes[4..6].copy_from_slice(&VERSION.to_le_bytes());
        bytes[6] = match self.kind {
            FrameKind::Request => 1,
            FrameKind::Response => 2,
        };
        bytes[7] = self.op.code();
        bytes[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.payload_len_bytes.to_le_bytes());
        bytes[20..22].copy_from_slice(&self.status.code().to_le_bytes());
        bytes
    }

    /// Decodes the first [`FRAME_HEADER_BYTES`] of `bytes`, refusing a payload over
    /// `payload_max_bytes`.
    pub fn decode(bytes: &[u8], payload_max_bytes: u32) -> Result<FrameHeader, FrameError> {
        let Some(bytes) = bytes.get(..FRAME_HEADER_BYTES) else {
            return Err(FrameError::TooShort { len_bytes: bytes.len() });
        };
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let version = u16_at(4);
        if version != VERSION {
            return Err(FrameError::UnknownVersion { version });
        }
        let kind = match bytes[6] {
            1 => FrameKind::Request,
            2 => FrameKind::Response,
            kind => return Err(FrameError::UnknownKind { kind }),
        };
        let op = Op::from_code(bytes[7]).ok_or(FrameError::UnknownOp { op: bytes[7] })?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..16]);
        let request_id = u64::from_le_bytes(id);
        let payload_len_bytes = u32_at(16);
        let status_code = u16_at(20);
        let status = Status::from_code(status_code)
            .ok_or(FrameError::UnknownStatus { status: status_code })?;
        if kind == FrameKind::Request && status != Status::Ok {
            return Err(FrameError::StatusInRequest);
        }
        if u16_at(22) != 0 {
            return Err(FrameError::NonzeroReserved);
        }
        if payload_len_bytes > payload_max_bytes {
            return Err(FrameError::Oversized {
                len_bytes: payload_len_bytes,
                max_bytes: payload_max_bytes,
            });
        }
        Ok(FrameHeader { kind, op, request_id, payload_len_bytes, status })
    }
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Ping,
        Op::PutChunk,
        Op::GetChunk,
        Op::HasChunks,
        Op::RdmaSetup,
        Op::Raft,
        Op::ReleaseChunk,
    ];

    pub fn code(self) -> u8 {
        match self {
            Op::Ping => 1,
            Op::PutChunk => 2,
            Op::GetChunk => 3,
            Op::HasChunks => 4,
            Op::RdmaSetup => 5,
            Op::Raft => 6,
            Op::ReleaseChunk => 7,
        }
    }

    pub fn from_code(code: u8) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.code() == code)
    }

    /// Whether repeating the request cannot change the outcome (so a selector may retry it
    /// on another transport after a failure). A put adds a reference each time it lands,
    /// a release drops one; an RDMA setup creates a queue pair on the node each time it
    /// lands.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Op::PutChunk | Op::RdmaSetup | Op::ReleaseChunk)
    }
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Ok,
        Status::NotFound,
        Status::Denied,
        Status::BadRequest,
        Status::Busy,
        Status::Unavailable,
        Status::Integrity,
        Status::Internal,
    ];

    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 0,
            Status::NotFound => 1,
            Status::Denied => 2,
            Status::BadRequest => 3,
            Status::Busy => 4,
            Status::Unavailable => 5,
            Status::Integrity => 6,
            Status::Internal => 7,
        }
    }

    pub fn from_code(code: u16) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.code() == code)
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooShort { len_bytes } => {
                write!(f, "{len_bytes} bytes, shorter than a {FRAME_HEADER_BYTES}-byte header")
            }
            FrameError::BadMagic { found } => write!(f, "bad frame magic {found:02x?}"),
            FrameError::UnknownVersion { version } => write!(f, "unknown frame version {version}"),
            FrameError::UnknownKind { kind } => write!(f, "unknown frame kind {kind}"),
            FrameError::UnknownOp { op } => write!(f, "unknown op {op}"),
            FrameError::UnknownStatus { status } => write!(f, "unknown status {status}"),
            FrameError::StatusInRequest => f.write_str("a request carries a status"),
            FrameError::NonzeroReserved => f.write_str("reserved header bits set"),
            FrameError::Oversized { len_bytes, max_bytes } => {
                write!(f, "frame payload of {len_bytes} bytes is over the {max_bytes}-byte limit")
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::NotFound => "not found",
            Status::Denied => "access denied",
            Status::BadRequest => "bad request",
            Status::Busy => "busy",
            Status::Unavailable => "unavailable",
            Status::Integrity => "integrity error",
            Status::Internal => "internal error",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 1 << 20;

    #[test]
    fn headers_round_trip() {
        for op in Op::ALL {
            let request = FrameHeader::request(op, u64::MAX - 3, 4096);
            assert_eq!(FrameHeader::decode(&request.encode(), MAX), Ok(request));
            for status in Status::ALL {
                let response = FrameHeader::response(op, 7, status, 0);
                assert_eq!(FrameHeader::decode(&response.encode(), MAX), Ok(response));
            }
        }
    }

    #[test]
    fn an_oversized_payload_is_refused_before_it_is_read() {
        let header = FrameHeader::request(Op::PutChunk, 1, MAX + 1).encode();
        assert_eq!(
            FrameHeader::decode(&header, MAX),
            Err(FrameError::Oversized { len_bytes: MAX + 1, max_bytes: MAX })
        );
        assert!(FrameHeader::decode(&header, MAX + 1).is_ok());
    }

    #[test]
    fn every_malformed_field_has_its_error() {
        let good = FrameHeader::request(Op::GetChunk, 9, 32).encode();
        let with = |at: usize, value: u8| {
            let mut bytes = good;
            bytes[at] = value;
            FrameHeader::decode(&bytes, MAX)
        };
        assert_eq!(
            FrameHeader::decode(&good[..23], MAX),
            Err(FrameError::TooShort { len_bytes: 23 })
        );
        assert!(matches!(with(0, b'X'), Err(FrameError::BadMagic { .. })));
        assert_eq!(with(4, 2), Err(FrameError::UnknownVersion { version: 2 }));
        assert_eq!(with(6, 3), Err(FrameError::UnknownKind { kind: 3 }));
        assert_eq!(with(7, 0), Err(FrameError::UnknownOp { op: 0 }));
        assert_eq!(with(20, 99), Err(FrameError::UnknownStatus { status: 99 }));
        assert_eq!(with(20, 1), Err(FrameError::StatusInRequest));
        assert_eq!(with(23, 1), Err(FrameError::NonzeroReserved));
    }

    #[test]
    fn op_codes_round_trip_and_are_distinct() {
        let expected = [(Op::Ping, 1), (Op::PutChunk, 2), (Op::GetChunk, 3)];
        let expected = expected.into_iter().chain([
            (Op::HasChunks, 4),
            (Op::RdmaSetup, 5),
            (Op::Raft, 6),
            (Op::ReleaseChunk, 7),
        ]);
        for (op, code) in expected {
            assert_eq!(op.code(), code, "{op:?}");
            assert_eq!(Op::from_code(code), Some(op));
        }
        assert_eq!(Op::from_code(0), None);
        assert_eq!(Op::from_code(8), None);
        let header = FrameHeader::request(Op::RdmaSetup, 11, 48);
        assert_eq!(header.encode()[7], 5);
        assert_eq!(FrameHeader::decode(&header.encode(), MAX), Ok(header));
    }

    #[test]
    fn only_puts_releases_and_rdma_setups_are_not_idempotent() {
        let retryable: Vec<Op> = Op::ALL.into_iter().filter(|op| op.is_idempotent()).collect();
        assert_eq!(retryable, [Op::Ping, Op::GetChunk, Op::HasChunks, Op::Raft]);
    }
}
