//! `kiseki.audit.v1.AuditService`: the audit log as `kiseki-server audit export` reads it
//! ([`AuditLog::export_tenant`] for a tenant, [`AuditLog::cluster_view`] for the system),
//! each record's MAC and place checked as it is read.
//!
//! The read runs on a blocking thread over the key manager's root sealer and a clone of its
//! store (a handle on the metadata group), taken under the manager's lock and used after it
//! is let go: a long log does not hold up the puts and gets that need keys meanwhile. The
//! answer streams in batches.

use std::pin::Pin;
use std::sync::Arc;

use kiseki_proto::audit::audit_service_server::AuditService;
use kiseki_proto::audit::{ExportReply, ExportRequest, Record};
use kiseki_security::authz::Target;
use kiseki_security::keymanager::tenant_of_org;
use kiseki_security::keymanager::{AuditLog, AuditOutcome, ExportedRecord, KeyStoreBackend};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::Shared;
use super::methods;
use crate::constants::GRPC_AUDIT_BATCH_RECORDS;

pub(crate) struct AuditApi<S>(pub(crate) Arc<Shared<S>>);

type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportReply, Status>> + Send>>;

#[tonic::async_trait]
impl<S: KeyStoreBackend + Clone + Send + 'static> AuditService for AuditApi<S> {
    type ExportStream = ExportStream;

    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let org = request.get_ref().org.clone();
        let allowed = self.0.gate.check(&request, &methods::EXPORT_AUDIT, None, Some(&org))?;
        let after = request.get_ref().after_sequence;
        let tenant = match &allowed.target {
            Target::Cluster => None,
            Target::Tenant(org) => Some(tenant_of_org(org)),
        };
        let (root, store) = {
            let keys = crate::objects::lock(&self.0.front.keys);
            (keys.root_shared(), keys.store().clone())
        };
        let read = tokio::task::spawn_blocking(move || match tenant {
            Some(tenant) => {
                AuditLog::export_tenant(root.as_ref(), &store, tenant).map(|records| (records, 0))
            }
            None => AuditLog::cluster_view(root.as_ref(), &store),
        })
        .await
        .map_err(|_| Status::internal("the audit read failed"))?;
        let (records, withheld) = read.map_err(|error| {
            tracing::error!(%error, "grpc: the audit log does not verify");
            Status::data_loss("the audit log does not verify")
        })?;
        let records: Vec<Record> =
            records.into_iter().filter(|r| r.sequence > after).map(wire_record).collect();
        let mut batches: Vec<Vec<Record>> =
            records.chunks(GRPC_AUDIT_BATCH_RECORDS).map(<[Record]>::to_vec).collect();
        if batches.is_empty() {
            batches.push(Vec::new());
        }
        let last = batches.len() - 1;
        let replies = batches.into_iter().enumerate().map(move |(index, records)| {
            let withheld = if index == last { withheld } else { 0 };
            Ok::<_, Status>(ExportReply { records, tenant_records_withheld: withheld })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }
}

fn wire_record(record: ExportedRecord) -> Record {
    let entry = record.entry;
    let (outcome, reason) = match entry.outcome {
        AuditOutcome::Allowed => ("allowed", String::new()),
        AuditOutcome::Denied { reason } => ("denied", reason),
        AuditOutcome::Succeeded => ("succeeded", String::new()),
        AuditOutcome::Failed { reason } => ("failed", reason),
    };
    let kind = serde_json::to_value(entry.kind)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default();
    Record {
        sequence: record.sequence,
        hash: record.hash,
        time_unix_s: entry.time_unix_s,
        kind,
        actor: entry.actor,
        actor_key: entry.actor_key,
        role: entry.role,
        action: entry.action,
        target: entry.target,
        tenant: entry.tenant.unwrap_or_default(),
        outcome: outcome.to_owned(),
        reason,
    }
}
