//! Kiseki's front ends and the `kiseki-server` binary that wires every crate together.
//!
//! This crate is the top of the dependency graph: it may know about HTTP, gRPC and S3; the
//! crates below it do not. Its admin subcommands (`ca`, `cert`, `identity`,
//! `admission-token`) are thin shells over the `kiseki-security` crate.
//!
//! [`node`] is the node runner: given a started engine, TLS, the metadata's shape and bound
//! listeners, it starts the metadata, the key manager, the fabric server, the S3 and gRPC
//! front ends and the admin server, and serves until SIGINT or SIGTERM. [`dev`] runs it on
//! embedded defaults (the CA, certificates and device made on its first start); [`run`]
//! runs it from a configuration ([`config`]) on the operator's certificates and device.
//!
//! [`admission`] is the first network service here: the admission listener (seed 003) and
//! the node's `join`, over tokio and tokio-rustls with the TLS configurations of
//! `kiseki-security`. Its limits are in [`constants`].
//!
//! [`audit`] writes the data path's audit records (S3 data accesses, unknown keys) to the
//! key manager's hash-chained log.
//!
//! [`observe`] is what an operator watches: Prometheus metrics and the health probes.
//! [`objects`] is the object layer under the S3 front end, [`s3`]; [`multipart`] adds
//! multipart uploads to it; [`chunks`] is where it keeps chunks: this node's engine, or R
//! nodes through the fabric; [`md5_lanes`] gives it the MD5 of upload bodies, several at
//! once.
//!
//! [`grpc`] is the gRPC front end: the data path for HPC clients, storage admin, the
//! control plane, audit export and the key service on one mTLS listener, each method
//! authorized through one table ([`grpc::methods`]) from the client certificate alone.
//!
//! [`reseal`] re-seals a node's chunks to the current master-key epoch in the background
//! after a rotation, paced, pausable and resumable across restarts.
//!
//! [`keys_grpc`] serves the key manager (`kiseki_security::keymanager::KeyService`) as the
//! gRPC service `kiseki.keys.v1.KeyService` through the same rustls configuration, so the
//! CRL applies and the caller's role comes from its certificate.

#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod chunks;
pub mod cli;
pub mod config;
pub mod constants;
pub mod dev;
pub mod grpc;
mod grpc_tls;
pub mod hex;
pub mod jwks_https;
pub mod keys_grpc;
pub mod md5_lanes;
pub mod multipart;
pub mod node;
pub mod objects;
pub mod observe;
pub mod reseal;
pub mod run;
pub mod s3;
pub mod s3_body;
pub mod s3_front;
