//! Frames on a byte stream: a `kiseki_proto` header, then its payload.
//!
//! This is the only code that reads or writes fabric frames on a stream; connections
//! (`connection.rs`) call it for both directions. The header is read and checked first
//! (magic, version, kind, op, status, reserved bits, and the payload length against the
//! reader's limit), so a peer announcing an oversized or malformed frame is refused before
//! a byte of its payload is read or a byte of memory is set aside for it.
//!
//! What it does not do: pair requests with responses, decide what to do with a bad frame
//! (the connection closes, counts and logs), or interpret payloads.
//!
//! Invariants:
//! - a payload buffer is allocated only after its length passed the limit check, and is
//!   filled without zeroing (read into spare capacity, bounded by the announced length);
//! - end of stream exactly at a frame boundary is a clean close; anywhere else it is an
//!   error, never a short frame.

use std::fmt;
use std::io;

use kiseki_proto::{FRAME_HEADER_BYTES, FrameError, FrameHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why no frame could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The stream failed (or ended inside a frame).
    Io(io::Error),
    /// The header is not a valid header (or announces more than the limit).
    Header(FrameError),
}

/// Reads the next frame header. `Ok(None)`: the stream ended cleanly before a new frame.
pub(crate) async fn read_header<R>(
    reader: &mut R,
    payload_max_bytes: u32,
) -> Result<Option<FrameHeader>, ReadError>
where
    R: AsyncRead + Unpin,
{
    let mut bytes = [0u8; FRAME_HEADER_BYTES];
    let mut filled = 0;
    while filled < FRAME_HEADER_BYTES {
        let read = reader.read(&mut bytes[filled..]).await.map_err(ReadError::Io)?;
        if read == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("stream ended {filled} bytes into a frame header"),
            )));
        }
        filled += read;
    }
    FrameHeader::decode(&bytes, payload_max_bytes).map(Some).map_err(ReadError::Header)
}

/// Reads the payload `header` announces. The caller decoded `header` with its limit, so
/// the length is already checked.
pub(crate) async fn read_payload<R>(reader: &mut R, header: &FrameHeader) -> io::Result<Vec<u8>>
where
    R: AsyncRead + Unpin,
{
    let len_bytes = usize::try_from(header.payload_len_bytes).expect("u32 fits in usize");
    let mut payload = Vec::with_capacity(len_bytes);
    while payload.len() < len_bytes {
        let remaining_bytes = (len_bytes - payload.len()) as u64;
        let read = (&mut *reader).take(remaining_bytes).read_buf(&mut payload).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("stream ended {} bytes into a {len_bytes}-byte payload", payload.len()),
            ));
        }
    }
    assert_eq!(payload.len(), len_bytes, "a payload is read to its announced length");
    Ok(payload)
}

/// Writes one frame whose payload is `payload` then `shared` (not flushed: the caller
/// flushes once its queue is empty). The parts are written as they lie: an envelope is never
/// copied into a request or response buffer on its way out.
pub(crate) async fn write_frame<W>(
    writer: &mut W,
    header: &FrameHeader,
    payload: &[u8],
    shared: &[u8],
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    assert_eq!(
        usize::try_from(header.payload_len_bytes).ok(),
        Some(payload.len() + shared.len()),
        "a frame header announces its payload's length"
    );
    writer.write_all(&header.encode()).await?;
    writer.write_all(payload).await?;
    writer.write_all(shared).await
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(error) => write!(f, "read failed: {error}"),
            ReadError::Header(error) => write!(f, "bad frame header: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiseki_proto::{Op, Status};

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        block_on(async {
            let mut wire = Vec::new();
            let first = FrameHeader::request(Op::PutChunk, 1, 5);
            let second = FrameHeader::response(Op::GetChunk, 2, Status::NotFound, 0);
            write_frame(&mut wire, &first, b"he", b"llo").await.unwrap();
            write_frame(&mut wire, &second, b"", b"").await.unwrap();
            let mut reader = &wire[..];
            let header = read_header(&mut reader, 16).await.unwrap().unwrap();
            assert_eq!(header, first);
            assert_eq!(read_payload(&mut reader, &header).await.unwrap(), b"hello");
            let header = read_header(&mut reader, 16).await.unwrap().unwrap();
            assert_eq!(header, second);
            assert!(read_payload(&mut reader, &header).await.unwrap().is_empty());
            assert!(read_header(&mut reader, 16).await.unwrap().is_none(), "clean end");
        });
    }

    #[test]
    fn an_oversized_header_is_refused_before_its_payload() {
        block_on(async {
            let header = FrameHeader::request(Op::PutChunk, 1, 17).encode();
            let mut reader = &header[..];
            match read_header(&mut reader, 16).await {
                Err(ReadError::Header(FrameError::Oversized { len_bytes: 17, max_bytes: 16 })) => {}
                other => panic!("expected oversized, got {other:?}"),
            }
        });
    }

    #[test]
    fn truncated_frames_are_errors_not_short_frames() {
        block_on(async {
            let header = FrameHeader::request(Op::PutChunk, 1, 8).encode();
            let mut reader = &header[..10];
            assert!(matches!(read_header(&mut reader, 16).await, Err(ReadError::Io(_))));
            let mut wire = header.to_vec();
            wire.extend_from_slice(b"abc");
            let mut reader = &wire[..];
            let header = read_header(&mut reader, 16).await.unwrap().unwrap();
            let error = read_payload(&mut reader, &header).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        });
    }

    #[test]
    fn garbage_is_a_header_error() {
        block_on(async {
            let garbage = [0xA5u8; FRAME_HEADER_BYTES];
            let mut reader = &garbage[..];
            let result = read_header(&mut reader, 16).await;
            assert!(matches!(result, Err(ReadError::Header(FrameError::BadMagic { .. }))));
        });
    }
}
