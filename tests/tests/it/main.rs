//! Kiseki's integration tests, one binary with one module per subject.
//!
//! - `admission`: a node's token redeemed once for a certificate-granting certificate, then
//!   its role certificate; replayed, expired, unknown and other nodes' tokens, a CGC on data
//!   and admin paths or asking for another name, oversized frames, another CA, a revoked CGC.
//! - `authz`: every (role, API path, target) of the built-in table against expectations
//!   written from the product's rules; the cluster admin and tenant content, with grants.
//! - `device_conformance`: one suite, written once over `D: BlockDevice`, run against every
//!   backend in the build (memory, io_uring on a file, and `FaultyDevice` over each).
//! - `device_doorbell`: an eventfd armed in the ring wakes an owner sleeping in the device.
//! - `device_open`: what the io_uring backend refuses to open, and how it says so.
//! - `device_poisoning`: a failed write (injected, or real on io_uring) poisons a device.
//! - `engine_at_rest`: a shard on a real device file holds only sealed envelopes, and every
//!   changed byte of a stored one is an integrity error on read and in the scrubber.
//! - `fault_injection`: the `FaultyDevice` and power-cut semantics the simulator relies on.
//! - `mtls`: mutual TLS on 127.0.0.1 through `TlsBuilder`: every refusal of the negative
//!   matrix (no certificate, other CA, expired, not yet valid, revoked before and after a CRL
//!   reload, key usage, two URI SANs, malformed SPIFFE id, wrong trust domain), every role,
//!   SPIFFE and fingerprint identities, and the seed's openssl certificates.
//!
//! Randomised tests name their seed in every failure message; `KISEKI_TEST_SEED=<seed>`
//! makes it the first seed run, which replays the failure.

mod admission;
mod authz;
mod device_conformance;
mod device_doorbell;
mod device_open;
mod device_poisoning;
mod engine_at_rest;
mod fault_injection;
mod mtls;
mod support;
