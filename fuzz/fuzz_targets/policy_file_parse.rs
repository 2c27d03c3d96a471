//! Parses arbitrary bytes as a policy file (roles to object types and permissions, seed
//! 004); the checks (no panic, a normalized round trip, properties of every accepted file)
//! live in `kiseki_security::fuzzing` so a stable-Rust test runs them too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiseki_security::fuzzing::parse_policy_file(data);
});
