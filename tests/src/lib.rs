//! Kiseki's integration tests. This library is empty on purpose: the crate exists for its
//! one test binary, `tests/it/main.rs` (run it with `cargo test -p kiseki-tests`), so that
//! every integration test links once and shares one set of helpers.
//!
//! What the tests do: drive the public APIs of the other crates against every backend the
//! build has (memory, io_uring on a file, and the fault-injecting wrapper over each), with
//! seeded randomness; every randomised failure prints the seed that replays it
//! (`KISEKI_TEST_SEED=<seed>`).
//!
//! What they do not do: nothing here is linked into a shipped binary, and no test needs a
//! network, a real NVMe device or SPDK.

#![forbid(unsafe_code)]
