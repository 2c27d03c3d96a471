//! Parses arbitrary bytes as a KES policy file (named API path globs and identity
//! bindings, seed 002); the checks (no panic, one policy per identity, globs that never
//! cross `/`, deny wins) live in `kiseki_security::fuzzing` so a stable-Rust test runs
//! them too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiseki_security::fuzzing::parse_kes_policy_file(data);
});
