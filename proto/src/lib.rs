//! Kiseki's wire formats: the fabric's frames and the chunk service's payloads; and the
//! gRPC services' protobuf messages and tonic service code, generated at build time from
//! `proto/kiseki/*/v1/*.proto` by protox and tonic-prost-build: the key service ([`keys`]),
//! the data path ([`data`]), storage administration ([`admin`]), the control plane
//! ([`control`]) and audit export ([`audit`]), with their encoded descriptors
//! ([`FILE_DESCRIPTOR_SET`]) for server reflection.
//!
//! Every message between nodes, and between nodes and HPC clients, is a [`FrameHeader`]
//! (24 bytes, little-endian, versioned; byte map in `frame.rs`) followed by its payload.
//! Requests and responses share the header; the request id pairs them, so many requests
//! can be in flight on one connection and answered in any order.
//!
//! What this crate does not do: I/O, TLS, allocation from a length it has not checked, or
//! any interpretation of chunk bytes (they are sealed envelopes, opaque here). Decoders take
//! byte slices and return typed errors; they never panic on any input (a `cargo fuzz`
//! target, `fuzz/fuzz_targets/frame_decode.rs`, runs them on arbitrary bytes).
//!
//! Invariants:
//! - every on-wire struct has a compile-time size check beside it;
//! - a header is rejected before its payload is read if its magic, version, kind, op or
//!   reserved bits are unknown, or its length is over the reader's limit;
//! - payload decoders check every length against the bytes present and against the limits
//!   in [`constants`] before they slice or allocate.

#![forbid(unsafe_code)]

pub mod constants;

/// The key manager's gRPC service, `kiseki.keys.v1` (generated).
#[allow(missing_debug_implementations, unused_qualifications, clippy::all)]
pub mod keys {
    tonic::include_proto!("kiseki.keys.v1");
}

/// The data path for HPC clients, `kiseki.data.v1` (generated).
#[allow(missing_debug_implementations, unused_qualifications, clippy::all)]
pub mod data {
    tonic::include_proto!("kiseki.data.v1");
}

/// Storage administration, `kiseki.admin.v1` (generated).
#[allow(missing_debug_implementations, unused_qualifications, clippy::all)]
pub mod admin {
    tonic::include_proto!("kiseki.admin.v1");
}

/// The control plane, `kiseki.control.v1` (generated).
#[allow(missing_debug_implementations, unused_qualifications, clippy::all)]
pub mod control {
    tonic::include_proto!("kiseki.control.v1");
}

/// Audit export, `kiseki.audit.v1` (generated).
#[allow(missing_debug_implementations, unused_qualifications, clippy::all)]
pub mod audit {
    tonic::include_proto!("kiseki.audit.v1");
}

/// Every gRPC service's file descriptors, encoded (a `FileDescriptorSet`): what server
/// reflection answers `grpcurl list` and `describe` from.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kiseki_descriptor.bin"));

mod chunk;
mod frame;

#[doc(hidden)]
pub mod fuzzing;

pub use chunk::{
    ChunkRequest, ChunkResponse, HasChunksBitmap, PayloadError, TenantRef, decode_error_message,
    error_message,
};
pub use frame::{FRAME_HEADER_BYTES, FrameError, FrameHeader, FrameKind, Op, Status};
