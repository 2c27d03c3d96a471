//! Parses arbitrary bytes as an envelope; the checks (re-encoding round trip, no panic in
//! parse or open) live in `kiseki_security::fuzzing` so a stable-Rust test runs them too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiseki_security::fuzzing::parse_envelope(data);
});
