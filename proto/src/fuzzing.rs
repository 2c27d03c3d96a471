//! Entry points for `cargo fuzz` (see `fuzz/`): each decodes arbitrary bytes the way a
//! reader of a connection does and must never panic. Not part of the public API.

use crate::constants::FRAME_PAYLOAD_MAX_BYTES_DEFAULT;
use crate::{ChunkRequest, ChunkResponse, FRAME_HEADER_BYTES, FrameHeader, FrameKind};

/// A frame as it arrives: a header, then (if the header decodes) its payload, decoded as
/// its op's request or response.
pub fn decode_frame(data: &[u8]) -> bool {
    let Ok(header) = FrameHeader::decode(data, FRAME_PAYLOAD_MAX_BYTES_DEFAULT) else {
        return false;
    };
    let payload = &data[FRAME_HEADER_BYTES..];
    let Some(payload) = payload.get(..header.payload_len_bytes as usize) else {
        return false;
    };
    match header.kind {
        FrameKind::Request => ChunkRequest::decode(header.op, payload).is_ok(),
        FrameKind::Response => {
            let asked = (header.request_id % 1024) as usize;
            ChunkResponse::decode(header.op, payload, asked).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Op, TenantRef};

    /// A seeded stand-in for the fuzzer: mutations of valid frames never panic, and the
    /// valid ones decode.
    #[test]
    fn mutated_frames_never_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let acme = TenantRef::org("acme").unwrap();
        let request = ChunkRequest::Get { tenant: acme, chunk_id: [3; 32] };
        let mut payload = Vec::new();
        request.encode_into(&mut payload);
        let mut frame =
            FrameHeader::request(Op::GetChunk, 5, payload.len() as u32).encode().to_vec();
        frame.extend(&payload);
        assert!(decode_frame(&frame), "the valid frame decodes");
        for _ in 0..20_000 {
            let mut mutated = frame.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % mutated.len();
                mutated[at] = next() as u8;
            }
            let cut = (next() as usize) % (mutated.len() + 1);
            decode_frame(&mutated[..cut]);
            decode_frame(&mutated);
        }
    }
}
