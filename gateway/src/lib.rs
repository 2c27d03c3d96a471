//! Kiseki's front ends and the `kiseki-server` binary that wires every crate together.
//!
//! This crate is the top of the dependency graph: it may know about HTTP, gRPC and S3; the
//! crates below it do not. Its admin subcommands (`ca`, `cert`, `identity`,
//! `admission-token`) are thin shells over the `kiseki-security` crate.

#![forbid(unsafe_code)]

pub mod cli;
