//! Reads arbitrary bytes as a peer certificate and as a SPIFFE id; the checks (no panic,
//! ids that print back as their input, KES ids and fingerprints of the bytes, identities
//! that agree with and without a trust domain) live in `kiseki_security::fuzzing` so a
//! stable-Rust test runs them too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiseki_security::fuzzing::parse_identity(data);
});
