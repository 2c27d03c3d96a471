//! Raft RPCs over the fabric's TCP+mTLS: the same pooled, persistent, framed connections
//! (TLS 1.3, client certificates of the cluster CA, CRL re-read) that carry chunks.
//!
//! - [`FabricRpcTransport`] sends a group's RPC bytes as one `Op::Raft` request to the node
//!   whose address openraft's membership names (`BasicNode::addr`, an `IP:port`), checking
//!   the node's certificate against that IP.
//! - [`RaftHandler`] serves `Op::Raft` on a node's `TcpServer`: only peers whose certificate
//!   carries the server role reach the groups; anyone else is answered `Denied` (and logged
//!   as an audit event) before a byte of the RPC is decoded. A plaintext client never gets
//!   past the TLS handshake, and a frame over the fabric's limit closes the connection before
//!   its payload is read; the RPC dispatcher then refuses anything over the RPC limit.
//!
//! - The same handler built with [`RaftHandler::for_node`] also serves client requests
//!   (proposals, reads, membership changes: `client.rs`), under the same role check.
//!
//! What it does not do: pick the peers (membership does) or retry (openraft does).

use std::net::SocketAddr;
use std::sync::Arc;

use kiseki_fabric::{
    BoxFuture, Endpoint, FabricRequest, FabricResponse, Handler, Peer, Transport, TransportError,
};
use kiseki_proto::{Op, Status};
use kiseki_security::Role;
use openraft::BasicNode;

use crate::node::MetadataNode;
use crate::rpc::{RpcServer, RpcTransport, RpcTransportError, is_client_request};
use crate::types::NodeId;

/// Sends Raft RPCs over a fabric transport (in production a `TcpTransport`).
#[derive(Debug)]
pub struct FabricRpcTransport {
    transport: Arc<dyn Transport>,
}

impl FabricRpcTransport {
    pub fn new(transport: Arc<dyn Transport>) -> FabricRpcTransport {
        FabricRpcTransport { transport }
    }
}

impl RpcTransport for FabricRpcTransport {
    async fn call(
        &self,
        target: NodeId,
        node: &BasicNode,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, RpcTransportError> {
        let addr: SocketAddr = node.addr.parse().map_err(|_| {
            RpcTransportError::Unreachable(format!(
                "node {target}: its address {:?} is not IP:port",
                node.addr
            ))
        })?;
        let endpoint =
            Endpoint { node: format!("raft-{target}"), addr, server_name: addr.ip().to_string() };
        // openraft drops an RPC's future when its timeout (one heartbeat, for appends)
        // passes. Run inside that future, a new connection's TCP connect and TLS handshake
        // would be dropped with it, and to a peer whose handshake takes longer than a
        // heartbeat (a node just started, on a loaded machine) no connection would ever
        // come up: seen as a new node that never caught up. The call runs in a task of its
        // own instead, so the connection joins the pool for the next RPC; a response nobody
        // waits for is dropped, which Raft tolerates as a lost message. The transport's
        // connect and request timeouts bound the task.
        let transport = Arc::clone(&self.transport);
        let call = tokio::spawn(async move {
            transport.call(&endpoint, FabricRequest::new(Op::Raft, request)).await
        });
        let response = call
            .await
            .map_err(|_| RpcTransportError::Lost(format!("node {target}: the RPC task ended")))?
            .map_err(|error| transport_error(target, error))?;
        if response.status != Status::Ok {
            let status = response.status;
            return Err(RpcTransportError::Unreachable(format!(
                "node {target} answered {status:?} to a Raft RPC"
            )));
        }
        Ok(response.into_contiguous().payload)
    }
}

fn transport_error(target: NodeId, error: TransportError) -> RpcTransportError {
    let why = format!("node {target}: {error}");
    if error.may_have_reached_peer() {
        RpcTransportError::Lost(why)
    } else {
        RpcTransportError::Unreachable(why)
    }
}

/// Serves `Op::Raft` (and `Ping`) on a node's fabric listener, for server-role peers only.
#[derive(Debug, Clone)]
pub struct RaftHandler {
    server: RpcServer,
    /// The node whose groups answer client requests; without one they are refused.
    node: Option<Arc<MetadataNode>>,
}

impl RaftHandler {
    /// Serves Raft RPCs only (client requests are refused as not served).
    pub fn new(server: RpcServer) -> Arc<RaftHandler> {
        Arc::new(RaftHandler { server, node: None })
    }

    /// Serves `node`'s Raft RPCs and client requests.
    pub fn for_node(node: Arc<MetadataNode>) -> Arc<RaftHandler> {
        Arc::new(RaftHandler { server: node.rpc_server().clone(), node: Some(node) })
    }
}

impl Handler for RaftHandler {
    fn handle<'a>(
        &'a self,
        peer: &'a Peer,
        request: FabricRequest,
    ) -> BoxFuture<'a, FabricResponse> {
        Box::pin(async move {
            if peer.identity.role() != Some(&Role::Server) {
                tracing::warn!(
                    target: "kiseki::audit",
                    %peer,
                    op = ?request.op,
                    "raft RPC denied: only storage nodes (server role) take part in consensus"
                );
                return FabricResponse::new(Status::Denied, Vec::new());
            }
            match request.op {
                Op::Ping => FabricResponse::new(Status::Ok, Vec::new()),
                Op::Raft => {
                    let request = request.into_contiguous();
                    let payload = &request.payload;
                    let answer = match &self.node {
                        Some(node) if is_client_request(payload) => {
                            crate::client::serve(node, payload).await
                        }
                        _ => self.server.handle(payload).await,
                    };
                    FabricResponse::new(Status::Ok, answer)
                }
                _ => FabricResponse::new(Status::BadRequest, Vec::new()),
            }
        })
    }
}
