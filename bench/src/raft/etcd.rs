//! The etcd side of `kiseki-bench raft`: etcd's v3 `KV/Put` over gRPC, at the leader, in
//! plaintext or over TLS with a client certificate (`--etcd-tls-dir`).
//!
//! Why not the `etcd-client` crate: its build script compiles etcd's .proto files with
//! `tonic-prost-build`, which needs a system `protoc`, and Kiseki builds without one
//! (DESIGN.md: .proto files go through protox). The two calls the bench makes are declared
//! here by hand instead, field numbers as etcd's `rpc.proto` gives them (unknown fields of
//! a response are skipped on decode), over the same tonic 0.14 the design names.

use std::path::Path;

use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_prost::ProstCodec;

use super::PutTarget;

/// HTTP/2 connections to the leader: the workers' puts multiplex over them (Kiseki's client
/// keeps the same number per node).
const CONNECTIONS: usize = 4;

const PUT_PATH: &str = "/etcdserverpb.KV/Put";
const STATUS_PATH: &str = "/etcdserverpb.Maintenance/Status";

/// etcd's `PutRequest` (the fields the bench sets).
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// etcd's `ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    cluster_id: u64,
    #[prost(uint64, tag = "2")]
    member_id: u64,
    #[prost(int64, tag = "3")]
    revision: i64,
    #[prost(uint64, tag = "4")]
    raft_term: u64,
}

/// etcd's `PutResponse` (its header; `prev_kv` is never asked for).
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {}

/// etcd's `StatusResponse` (the fields that find the leader).
#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(uint64, tag = "4")]
    leader: u64,
}

/// Puts at etcd's leader over a few HTTP/2 connections.
pub struct Etcd {
    channels: Vec<Grpc<Channel>>,
    run: u64,
}

impl Etcd {
    /// Finds the leader among `endpoints` and connects to it.
    pub async fn connect(
        endpoints: &[String],
        concurrency: u32,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Etcd, String> {
        let mut leader_url = None;
        for url in endpoints {
            let mut grpc = Grpc::new(connect(url, tls.as_ref()).await?);
            let status: StatusResponse = unary(&mut grpc, STATUS_PATH, StatusRequest {})
                .await
                .map_err(|e| format!("{url}: status: {e}"))?;
            let member = status.header.map_or(0, |header| header.member_id);
            if status.leader != 0 && status.leader == member {
                leader_url = Some(url.clone());
            }
        }
        let url = leader_url.ok_or_else(|| format!("no leader among {endpoints:?}"))?;
        let mut channels = Vec::new();
        for _ in 0..CONNECTIONS.min(concurrency as usize).max(1) {
            channels.push(Grpc::new(connect(&url, tls.as_ref()).await?));
        }
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        Ok(Etcd { channels, run })
    }
}

impl PutTarget for Etcd {
    async fn put(&self, worker: u32, sequence: u64, value: &[u8]) -> Result<(), String> {
        let mut grpc = self.channels[worker as usize % self.channels.len()].clone();
        let request = PutRequest {
            key: format!("/bench/{}/w{worker}/{sequence}", self.run).into_bytes(),
            value: value.to_vec(),
        };
        let response: PutResponse =
            unary(&mut grpc, PUT_PATH, request).await.map_err(|e| format!("put: {e}"))?;
        match response.header {
            Some(header) if header.revision > 0 => Ok(()),
            _ => Err("put: an answer without a revision".to_owned()),
        }
    }
}

/// TLS to etcd with the client identity of `dir` (ca.crt, client.crt, client.key); the
/// members' certificates must name 127.0.0.1.
pub fn tls_config(dir: &Path) -> Result<ClientTlsConfig, String> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|e| format!("--etcd-tls-dir: {name}: {e}"))
    };
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")?))
        .identity(Identity::from_pem(read("client.crt")?, read("client.key")?)))
}

async fn connect(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel, String> {
    let mut endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|e| format!("{url}: {e}"))?.tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(|e| format!("{url}: TLS: {e}"))?;
    }
    endpoint.connect().await.map_err(|e| format!("{url}: connect: {e}"))
}

async fn unary<Q, R>(grpc: &mut Grpc<Channel>, path: &'static str, request: Q) -> Result<R, String>
where
    Q: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    grpc.ready().await.map_err(|e| e.to_string())?;
    let codec = ProstCodec::<Q, R>::default();
    let response = grpc
        .unary(tonic::Request::new(request), PathAndQuery::from_static(path), codec)
        .await
        .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
    Ok(response.into_inner())
}
