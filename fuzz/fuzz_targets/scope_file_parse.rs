//! Parses arbitrary bytes as a scope file (roles to certificate common names, seed 004);
//! the checks (no panic, a round trip, the cross-check with a policy file) live in
//! `kiseki_security::fuzzing` so a stable-Rust test runs them too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiseki_security::fuzzing::parse_scope_file(data);
});
