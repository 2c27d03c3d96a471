//! One fabric listener per node: `Op::Raft` frames go to the metadata's Raft handler (a
//! cluster member's; it admits server-role peers only), every other operation to the chunk
//! service (which checks each caller's role and tenant itself). A node without peers has no
//! Raft handler: its `Op::Raft` frames go to the chunk service, which refuses them as it
//! refuses any operation it does not serve.
//!
//! What it does not do: check anything itself. Each handler keeps its own checks, so a frame
//! gets exactly the checks it would get on a listener of its own.

use std::sync::Arc;

use kiseki_consensus::fabric::RaftHandler;
use kiseki_fabric::{BoxFuture, ChunkService, FabricRequest, FabricResponse, Handler, Peer};
use kiseki_proto::Op;

/// Dispatches a node's fabric frames by operation; see the module's notes.
#[derive(Debug)]
pub(super) struct NodeHandler {
    raft: Option<Arc<RaftHandler>>,
    chunks: Arc<ChunkService>,
}

impl NodeHandler {
    pub(super) fn new(raft: Option<Arc<RaftHandler>>, chunks: Arc<ChunkService>) -> NodeHandler {
        NodeHandler { raft, chunks }
    }
}

impl Handler for NodeHandler {
    fn handle<'a>(
        &'a self,
        peer: &'a Peer,
        request: FabricRequest,
    ) -> BoxFuture<'a, FabricResponse> {
        match (&self.raft, request.op) {
            (Some(raft), Op::Raft) => raft.handle(peer, request),
            _ => self.chunks.handle(peer, request),
        }
    }
}
