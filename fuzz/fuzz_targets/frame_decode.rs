//! Reads arbitrary bytes as a fabric frame: header, then its op's request or response
//! payload. The decoders must refuse, never panic; the harness is
//! `kiseki_proto::fuzzing::decode_frame` so a stable-Rust test runs it too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiseki_proto::fuzzing::decode_frame(data);
});
