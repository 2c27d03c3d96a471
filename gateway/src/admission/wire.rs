//! The admission protocol on the wire: frames, and the JSON messages they carry.
//!
//! Byte map of a frame (both directions):
//!
//! ```text
//! offset  size  field
//! 0       4     body length, u32 little-endian: 1 ..= ADMISSION_FRAME_MAX_BYTES
//! 4       n     body: one UTF-8 JSON message, a RequestFrame or a ResponseFrame
//! ```
//!
//! Every message has a `version` field (today [`PROTOCOL_VERSION`]); a peer refuses any
//! other. One request frame gets one response frame, in order.
//!
//! What this module does not do: decide anything. The service (`service.rs`) and the node
//! (`client.rs`) give the messages their meaning.
//!
//! Invariants:
//! - a length of zero or over the limit is an error before any body byte is read or any
//!   buffer is allocated from it: the caller closes the connection;
//! - a received body sits in a `Zeroizing` buffer (it may hold a token), and a token inside
//!   a message is a [`Secret`]: zeroed on drop, `<redacted>` in `Debug`.

use std::fmt;
use std::io;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::constants::ADMISSION_FRAME_MAX_BYTES;

/// The only protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes of a frame header: the body length.
pub const FRAME_HEADER_BYTES: usize = 4;
const _: () = assert!(FRAME_HEADER_BYTES == size_of::<u32>(), "the header is one u32");
const _: () = assert!(ADMISSION_FRAME_MAX_BYTES as u64 <= u32::MAX as u64 / 2);

/// A request: its version and what it asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    pub version: u16,
    pub request: Request,
}

/// What a peer asks the admission service.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Admission's first step, over a connection without a client certificate: redeem
    /// `token` (minted for `node`) for a certificate-granting certificate over the public
    /// key of `csr_pem`.
    Admit { token: Secret, node: String, csr_pem: String },
    /// With a certificate-granting certificate: a role certificate for `name`, which must
    /// be the CGC's own common name (API path `/v1/admission/request/<name>`). The node
    /// name is always a DNS SAN; `sans` may add only the node name and the address the
    /// request comes from.
    Issue {
        role: IssueRole,
        name: String,
        csr_pem: String,
        #[serde(default)]
        sans: Vec<String>,
    },
    /// With a certificate-granting certificate: a new CGC for `name`, the CGC's own common
    /// name (API path `/v1/admission/renew/<name>`).
    Renew { name: String, csr_pem: String },
    /// Any other API path, on the cluster or on `tenant`. The admission service serves
    /// none, but answers through the same authorization as every API: a CGC is denied
    /// (and audited) whatever it names, and a caller the path is allowed to learns it is
    /// not served here.
    Call {
        path: String,
        #[serde(default)]
        tenant: Option<String>,
    },
}

/// The role certificates admission issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueRole {
    /// `kiseki-server`: a storage node.
    Server,
    /// `kiseki-keyserver`: the key manager.
    Keyserver,
}

/// A response: its version and the answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFrame {
    pub version: u16,
    pub response: Response,
}

/// The admission service's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// The certificate asked for, PEM. Its key is the CSR's; the node holds the private key.
    Certificate { certificate_pem: String },
    /// A refusal; the reason is one of the generic [`RemoteError`] words, the detail is in
    /// the service's log.
    Error { reason: RemoteError },
}

/// What a remote peer is told when the service says no: a few words that reveal nothing
/// about tokens, certificates or policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteError {
    /// A token was not accepted (unknown, used, expired, for another node, malformed), or
    /// the admission failed after the token was spent.
    AdmissionRefused,
    /// The caller may not do this (no certificate, wrong role, another node's name, a
    /// path authorization denies).
    AccessDenied,
    /// The caller may call this path, but this listener does not serve it.
    NotServedHere,
    /// The frame did not hold a request of this version.
    BadRequest,
    /// The service failed; nothing was issued.
    Internal,
}

/// A secret string (an admission token) inside a message: zeroed when dropped, never shown
/// by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection between frames (with or without TLS close_notify).
    Closed,
    /// A length of zero or over [`ADMISSION_FRAME_MAX_BYTES`]; nothing more was read.
    BadLength {
        len_bytes: u32,
    },
    Io(io::Error),
}

impl Secret {
    pub fn new(text: Zeroizing<String>) -> Secret {
        Secret(text)
    }

    /// The secret's text; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        // The `String` moves into the buffer that zeroes it; it is not copied.
        String::deserialize(deserializer).map(|text| Secret(Zeroizing::new(text)))
    }
}

impl RemoteError {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteError::AdmissionRefused => "admission refused",
            RemoteError::AccessDenied => "access denied",
            RemoteError::NotServedHere => "not served here",
            RemoteError::BadRequest => "bad request",
            RemoteError::Internal => "internal error",
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Closed => f.write_str("connection closed"),
            FrameError::BadLength { len_bytes } => write!(
                f,
                "frame length {len_bytes} is outside 1..={ADMISSION_FRAME_MAX_BYTES} bytes"
            ),
            FrameError::Io(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Serializes `message` into a frame body, in a buffer zeroed on drop.
pub fn encode<T: Serialize>(message: &T) -> Zeroizing<Vec<u8>> {
    let mut body = Zeroizing::new(Vec::new());
    serde_json::to_writer(&mut *body, message).expect("admission messages always serialize");
    body
}

/// Writes one frame holding `body` and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, body: &[u8]) -> io::Result<()> {
    let len_bytes = u32::try_from(body.len())
        .ok()
        .filter(|len| (1..=ADMISSION_FRAME_MAX_BYTES).contains(len))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame body too large"))?;
    let mut frame = Zeroizing::new(Vec::with_capacity(FRAME_HEADER_BYTES + body.len()));
    frame.extend_from_slice(&len_bytes.to_le_bytes());
    frame.extend_from_slice(body);
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Reads one frame's body. The length is checked before the body is read or allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]).await {
            Ok(0) if filled == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(read) => filled += read,
            // Between frames, a TLS peer that hangs up without close_notify has only left.
            Err(error) if filled == 0 && error.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(FrameError::Closed);
            }
            Err(error) => return Err(FrameError::Io(error)),
        }
    }
    let len_bytes = u32::from_le_bytes(header);
    if !(1..=ADMISSION_FRAME_MAX_BYTES).contains(&len_bytes) {
        return Err(FrameError::BadLength { len_bytes });
    }
    let mut body = Zeroizing::new(vec![0u8; len_bytes as usize]);
    reader.read_exact(&mut body).await.map_err(FrameError::Io)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_lengths_are_refused_unread() {
        let request = RequestFrame {
            version: PROTOCOL_VERSION,
            request: Request::Admit {
                token: Secret::new(Zeroizing::new("kiseki-adm-00".to_owned())),
                node: "node1".to_owned(),
                csr_pem: "csr".to_owned(),
            },
        };
        assert!(!format!("{request:?}").contains("kiseki-adm"), "the token is redacted");
        let mut wire = Vec::new();
        write_frame(&mut wire, &encode(&request)).await.unwrap();
        let length = u32::from_le_bytes(wire[..4].try_into().unwrap()) as usize;
        assert_eq!(length, wire.len() - FRAME_HEADER_BYTES);
        let body = read_frame(&mut wire.as_slice()).await.unwrap();
        let back: RequestFrame = serde_json::from_slice(&body).unwrap();
        let Request::Admit { token, node, .. } = back.request else { panic!("{back:?}") };
        assert_eq!((token.expose(), node.as_str()), ("kiseki-adm-00", "node1"));

        for len_bytes in [0, ADMISSION_FRAME_MAX_BYTES + 1, u32::MAX] {
            let mut wire = len_bytes.to_le_bytes().to_vec();
            wire.extend_from_slice(b"{}");
            let error = read_frame(&mut wire.as_slice()).await.unwrap_err();
            assert!(matches!(error, FrameError::BadLength { .. }), "{len_bytes}: {error}");
        }
        assert!(matches!(read_frame(&mut &b""[..]).await, Err(FrameError::Closed)));
        assert!(matches!(read_frame(&mut &b"\x05\x00"[..]).await, Err(FrameError::Io(_))));
        let huge = vec![b' '; ADMISSION_FRAME_MAX_BYTES as usize + 1];
        assert!(write_frame(&mut Vec::new(), &huge).await.is_err());
    }

    #[test]
    fn unknown_fields_and_versions_are_visible_to_the_service() {
        let extra = r#"{"version":1,"request":{"renew":{"name":"n","csr_pem":"c","x":1}}}"#;
        assert!(serde_json::from_str::<RequestFrame>(extra).is_err());
        let call = r#"{"version":1,"request":{"call":{"path":"/v1/chunk/get/x"}}}"#;
        let frame: RequestFrame = serde_json::from_str(call).unwrap();
        assert!(matches!(frame.request, Request::Call { tenant: None, .. }));
        let error = Response::Error { reason: RemoteError::AccessDenied };
        let text = serde_json::to_string(&error).unwrap();
        assert_eq!(text, r#"{"error":{"reason":"access_denied"}}"#);
    }
}
