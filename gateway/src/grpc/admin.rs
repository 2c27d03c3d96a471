//! `kiseki.admin.v1.StorageAdminService`: what this node really has, from the engine's
//! shard counters and the metadata group's Raft metrics. Read-only: the engine has no
//! drain or device-state operation to call yet, so none is served.

use std::sync::Arc;
use std::time::Duration;

use kiseki_engine::{CapacityLevel, DeviceState, Stats};
use kiseki_proto::admin::storage_admin_service_server::StorageAdminService;
use kiseki_proto::admin::{
    Device, GetDeviceRequest, ListDevicesReply, ListDevicesRequest, ListNodesReply,
    ListNodesRequest, Node, StatusReply, StatusRequest,
};
use kiseki_security::keymanager::KeyStoreBackend;
use tonic::{Request, Response, Status};

use super::Shared;
use super::methods;
use crate::constants::GRPC_ENGINE_STATS_TIMEOUT_SECS;

pub(crate) struct AdminApi<S>(pub(crate) Arc<Shared<S>>);

impl<S: KeyStoreBackend + Send + 'static> AdminApi<S> {
    async fn shards(&self) -> Result<Vec<Stats>, Status> {
        let timeout = Duration::from_secs(GRPC_ENGINE_STATS_TIMEOUT_SECS);
        match tokio::time::timeout(timeout, self.0.front.engine.stats()).await {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(error)) => {
                tracing::warn!(%error, "grpc: engine stats failed");
                Err(Status::unavailable("the engine did not answer"))
            }
            Err(_) => Err(Status::unavailable("the engine did not answer in time")),
        }
    }

    fn device(&self, shard: usize, stats: &Stats) -> Device {
        Device {
            shard: shard as u32,
            path: self.0.front.device_path.clone(),
            state: stats.device_state.to_string(),
            capacity: capacity_name(stats.capacity).to_owned(),
            fill_percent: u32::from(stats.fill_percent),
            data_bytes_total: stats.data_bytes_total,
            data_bytes_used: stats.data_bytes_used,
            chunks: stats.chunks,
            integrity_errors: stats.integrity_errors,
            scrub_reads: stats.scrub_reads,
            journal_fill_percent: u32::from(stats.journal_fill_percent),
        }
    }
}

#[tonic::async_trait]
impl<S: KeyStoreBackend + Send + 'static> StorageAdminService for AdminApi<S> {
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        self.0.gate.check(&request, &methods::STATUS, None, None)?;
        let shards = self.shards().await?;
        let group = &self.0.front.meta;
        let (leader, term, voters) = {
            let metrics = group.raft().metrics();
            let metrics = metrics.borrow();
            let voters: Vec<u64> = metrics.membership_config.voter_ids().collect();
            (metrics.current_leader, metrics.current_term, voters)
        };
        let usable = shards.iter().all(|shard| {
            matches!(shard.device_state, DeviceState::Healthy | DeviceState::Degraded)
        });
        let worst =
            shards.iter().map(|shard| shard.capacity).max().unwrap_or(CapacityLevel::Normal);
        Ok(Response::new(StatusReply {
            node_id: group.node_id(),
            metadata_leader: leader.unwrap_or(0),
            metadata_term: term,
            metadata_voters: voters,
            shards: shards.len() as u32,
            chunks: shards.iter().map(|shard| shard.chunks).sum(),
            data_bytes_total: shards.iter().map(|shard| shard.data_bytes_total).sum(),
            data_bytes_used: shards.iter().map(|shard| shard.data_bytes_used).sum(),
            integrity_errors: shards.iter().map(|shard| shard.integrity_errors).sum(),
            capacity: capacity_name(worst).to_owned(),
            ready: usable && leader.is_some(),
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesReply>, Status> {
        self.0.gate.check(&request, &methods::LIST_NODES, None, None)?;
        let metrics = self.0.front.meta.raft().metrics();
        let metrics = metrics.borrow();
        let membership = &metrics.membership_config;
        let voters: Vec<u64> = membership.voter_ids().collect();
        let nodes = membership
            .nodes()
            .map(|(id, node)| Node {
                node_id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
                leader: metrics.current_leader == Some(*id),
            })
            .collect();
        Ok(Response::new(ListNodesReply { nodes }))
    }

    async fn list_devices(
        &self,
        request: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesReply>, Status> {
        self.0.gate.check(&request, &methods::LIST_DEVICES, None, None)?;
        let shards = self.shards().await?;
        let devices =
            shards.iter().enumerate().map(|(index, stats)| self.device(index, stats)).collect();
        Ok(Response::new(ListDevicesReply { devices }))
    }

    async fn get_device(
        &self,
        request: Request<GetDeviceRequest>,
    ) -> Result<Response<Device>, Status> {
        let shard = request.get_ref().shard;
        self.0.gate.check(&request, &methods::GET_DEVICE, Some(&shard.to_string()), None)?;
        let shards = self.shards().await?;
        let stats = shards
            .get(shard as usize)
            .ok_or_else(|| Status::not_found(format!("no shard {shard}")))?;
        Ok(Response::new(self.device(shard as usize, stats)))
    }
}

fn capacity_name(level: CapacityLevel) -> &'static str {
    match level {
        CapacityLevel::Normal => "normal",
        CapacityLevel::Warning => "warning",
        CapacityLevel::Critical => "critical",
        CapacityLevel::Full => "full",
    }
}
