//! The audit log: append-only records of who (name, key identity, role) did what (kind,
//! action) to what (target) with which result, when; stored in the key store's backend
//! (the consensus state machine, with the durability of data metadata).
//!
//! # Record bytes (version 1)
//!
//! `<mac: 64 hex digits> <body: JSON>`, where the body is
//! `{"v":1,"seq":N,"prev":"<64 hex>","entry":{...}}`: `seq` is the record's own sequence
//! number, `prev` the SHA-256 of the previous record's whole bytes (64 zeros for the
//! first), and `mac` HMAC-SHA256 of the body under a key derived from the root key.
//!
//! [`AuditLog::verify`] walks every record from 1 to the store's counter and finds:
//! an edited record (its MAC fails, even for the last record, which no successor's hash
//! covers), a deleted one (a gap: the next record sits at the wrong sequence, or the
//! counter says more records exist than are stored), and a reordered one (a sequence
//! number or a predecessor hash that does not match its place).
//!
//! Scope: a record about a tenant (its actor belongs to the tenant, or a cluster operator
//! acted on the tenant) is a tenant record; the rest are system records and never name a tenant. A tenant's export
//! holds its own records and the system records that concern every tenant (master-key and
//! policy changes); the cluster admin's view holds system records and only a count of
//! tenant records.
//!
//! No record holds plaintext, key material or a secret: entries are built from names,
//! public key identities, API paths, targets and outcomes only.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use crate::authz::{AuditEvent, AuditResult, Caller, Target};
use crate::ids::TenantId;
use crate::keymanager::error::KeyManagerError;
use crate::keymanager::root::RootSealer;
use crate::keymanager::service::tenant_of_org;
use crate::keymanager::store::{KeyStoreBackend, StoreError, StoredAudit};

const RECORD_VERSION: u32 = 1;
/// Appends retried when another node appended first; more means a busy or broken log.
const APPEND_RETRIES: usize = 16;
/// Longest field text kept in a record; a peer's text is cut there.
const FIELD_MAX_BYTES: usize = 512;

/// What kind of event a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditKind {
    AuthSuccess,
    AuthFailure,
    KeyOperation,
    AdminOperation,
    PolicyChange,
    DataAccess,
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditOutcome {
    Allowed,
    Denied { reason: String },
    Succeeded,
    Failed { reason: String },
}

/// One audit record's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time_unix_s: u64,
    pub kind: AuditKind,
    /// The actor's certificate common name.
    pub actor: String,
    /// SHA-256 of the actor's public key (64 hex digits), or empty for a local operator.
    pub actor_key: String,
    /// The actor's roles, comma-separated.
    pub role: String,
    /// The API path or operation.
    pub action: String,
    /// "cluster" or "tenant <org>".
    pub target: String,
    /// The tenant the record concerns (UUID text), if any: it makes a tenant record.
    pub tenant: Option<String>,
    pub outcome: AuditOutcome,
}

/// A record as export and verify show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportedRecord {
    pub sequence: u64,
    /// SHA-256 of the record's bytes, hex: what its successor's `prev` names.
    pub hash: String,
    pub entry: AuditEntry,
}

/// The state of a verified chain: how many records, and the newest one's hash (to write
/// down elsewhere, so a later verify can show nothing was cut from the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub records: u64,
    pub head_hash: String,
}

/// Why the log does not verify, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditVerifyError {
    /// The counter says the record exists, the store does not have it.
    Missing { sequence: u64 },
    /// The bytes are not a record.
    Malformed { sequence: u64 },
    /// The MAC does not match: the record was changed.
    Edited { sequence: u64 },
    /// The record names another sequence than its place: deleted or reordered records.
    OutOfPlace { sequence: u64, claims: u64 },
    /// The predecessor hash does not match the record before it.
    ChainBroken { sequence: u64 },
    /// The store could not be read.
    Store(StoreError),
    /// The root key could not MAC.
    Key(KeyManagerError),
}

impl std::fmt::Display for AuditVerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditVerifyError::Missing { sequence } => write!(f, "record {sequence} is missing"),
            AuditVerifyError::Malformed { sequence } => {
                write!(f, "record {sequence} is not a well-formed audit record")
            }
            AuditVerifyError::Edited { sequence } => {
                write!(f, "record {sequence} was edited (its MAC does not match)")
            }
            AuditVerifyError::OutOfPlace { sequence, claims } => write!(
                f,
                "record at {sequence} claims to be {claims}: records were deleted or reordered"
            ),
            AuditVerifyError::ChainBroken { sequence } => {
                write!(f, "record {sequence} does not follow its predecessor (hash chain broken)")
            }
            AuditVerifyError::Store(error) => write!(f, "audit store: {error}"),
            AuditVerifyError::Key(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for AuditVerifyError {}

#[derive(Serialize, Deserialize)]
struct Body {
    v: u32,
    seq: u64,
    prev: String,
    entry: AuditEntry,
}

/// Appends to, verifies and exports the audit log.
#[derive(Debug, Clone)]
pub struct AuditLog {
    /// Record one data access in this many (1 = all).
    data_access_every: u64,
    data_access_seen: u64,
}

impl Default for AuditLog {
    fn default() -> AuditLog {
        AuditLog { data_access_every: 1, data_access_seen: 0 }
    }
}

impl AuditEntry {
    /// An entry from an authorization decision. Its tenant is the actor's, if the actor
    /// belongs to one (a tenant's peer, even when it tried another tenant's resource: its
    /// name is its own tenant's to see, not the other's), else the target's (a cluster
    /// operator's access to a tenant is that tenant's to see), else none.
    pub fn from_event(kind: AuditKind, event: &AuditEvent) -> AuditEntry {
        let org = event.actor.roles.iter().find_map(|r| r.org()).or_else(|| event.target.org());
        let outcome = match &event.result {
            AuditResult::Allowed { .. } => AuditOutcome::Allowed,
            AuditResult::Denied { reason } => AuditOutcome::Denied { reason: reason.to_string() },
            AuditResult::Completed => AuditOutcome::Succeeded,
            AuditResult::Refused { error } => AuditOutcome::Failed { reason: error.to_string() },
        };
        let roles: Vec<String> = event.actor.roles.iter().map(ToString::to_string).collect();
        AuditEntry {
            time_unix_s: event.time_unix_s,
            kind,
            actor: event.actor.common_name.clone(),
            actor_key: event.actor.key_identity.clone(),
            role: roles.join(","),
            action: event.action.to_string(),
            target: match &event.target {
                Target::Cluster => "cluster".to_owned(),
                Target::Tenant(org) => format!("tenant {org}"),
            },
            tenant: org.map(|org| tenant_of_org(org).to_string()),
            outcome,
        }
    }

    /// A TLS handshake on a front end: `Ok(caller)` for a peer whose certificate verified
    /// (a tenant's peer's success is its tenant's record), `Err(reason)` for one refused (no
    /// identity then, `remote` is its address; a system record).
    pub fn handshake(outcome: Result<&Caller, &str>, remote: &str, now_unix_s: u64) -> AuditEntry {
        let action = format!("tls handshake from {remote}");
        let target = "cluster".to_owned();
        match outcome {
            Ok(caller) => AuditEntry {
                time_unix_s: now_unix_s,
                kind: AuditKind::AuthSuccess,
                actor: caller.common_name().to_owned(),
                actor_key: caller.key_identity().to_owned(),
                role: caller.roles().iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                action,
                target,
                tenant: caller.org().map(|org| tenant_of_org(org).to_string()),
                outcome: AuditOutcome::Succeeded,
            },
            Err(reason) => AuditEntry {
                time_unix_s: now_unix_s,
                kind: AuditKind::AuthFailure,
                actor: "unauthenticated peer".to_owned(),
                actor_key: String::new(),
                role: String::new(),
                action,
                target,
                tenant: None,
                outcome: AuditOutcome::Failed { reason: reason.to_owned() },
            },
        }
    }

    /// A local operator's action (the command line on a node), with no certificate.
    pub fn local(
        time_unix_s: u64,
        kind: AuditKind,
        action: &str,
        tenant: Option<TenantId>,
        outcome: AuditOutcome,
    ) -> AuditEntry {
        AuditEntry {
            time_unix_s,
            kind,
            actor: "local-operator".to_owned(),
            actor_key: String::new(),
            role: "node-operator".to_owned(),
            action: action.to_owned(),
            target: match tenant {
                Some(tenant) => format!("tenant {tenant}"),
                None => "cluster".to_owned(),
            },
            tenant: tenant.map(|tenant| tenant.to_string()),
            outcome,
        }
    }

    fn bounded(mut self) -> AuditEntry {
        for field in [&mut self.actor, &mut self.role, &mut self.action, &mut self.target] {
            *field = crate::authz::clean_for_audit(field, FIELD_MAX_BYTES);
        }
        if let AuditOutcome::Denied { reason } | AuditOutcome::Failed { reason } = &mut self.outcome
        {
            *reason = crate::authz::clean_for_audit(reason, FIELD_MAX_BYTES);
        }
        self
    }
}

impl AuditKind {
    /// System records every tenant's export includes.
    pub fn concerns_every_tenant(self) -> bool {
        matches!(self, AuditKind::KeyOperation | AuditKind::PolicyChange)
    }
}

/// What [`AuditLog::append_all`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Records written (sampling may have skipped some of the entries).
    pub count: usize,
    /// The sequence number of the last one.
    pub last: Option<u64>,
}

impl AuditLog {
    /// A log that records one data access in `every` (at least 1).
    pub fn with_data_access_sampling(every: u64) -> AuditLog {
        AuditLog { data_access_every: every.max(1), data_access_seen: 0 }
    }

    /// Appends `entry` as the next record; a data access may be skipped by sampling
    /// (`Ok(None)`). Returns the record's sequence number.
    pub fn append(
        &mut self,
        root: &dyn RootSealer,
        store: &mut dyn KeyStoreBackend,
        entry: AuditEntry,
    ) -> Result<Option<u64>, KeyManagerError> {
        let appended = self.append_all(root, store, vec![entry])?;
        Ok(appended.last)
    }

    /// Appends `entries` as the next records, in order, chained in memory and written
    /// together ([`KeyStoreBackend::append_audit_run`]: one proposal for the run where the
    /// store is consensus); data accesses may be skipped by sampling. A racing appender
    /// makes the rest of the run re-chain onto its records and retry.
    pub fn append_all(
        &mut self,
        root: &dyn RootSealer,
        store: &mut dyn KeyStoreBackend,
        entries: Vec<AuditEntry>,
    ) -> Result<Appended, KeyManagerError> {
        let mut pending = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.kind == AuditKind::DataAccess {
                self.data_access_seen += 1;
                if !(self.data_access_seen - 1).is_multiple_of(self.data_access_every) {
                    continue;
                }
            }
            let entry = entry.bounded();
            let tenant = match &entry.tenant {
                None => None,
                Some(text) => Some(parse_tenant(text).ok_or(KeyManagerError::CorruptRecord {
                    what: "audit entry tenant is not a UUID",
                })?),
            };
            pending.push((tenant, entry));
        }
        let mut appended = Appended::default();
        if pending.is_empty() {
            return Ok(appended);
        }
        let mut last_error = None;
        for _ in 0..APPEND_RETRIES {
            let first = store.audit_next()?;
            let mut prev = match first {
                1 => [0u8; 32],
                _ => {
                    let previous = store.audit_record(first - 1)?.ok_or_else(|| {
                        StoreError::Unavailable("previous audit record missing".into())
                    })?;
                    sha256(&previous.bytes)
                }
            };
            let mut run = Vec::with_capacity(pending.len());
            for (offset, (tenant, entry)) in pending.iter().enumerate() {
                let bytes = record_bytes(root, first + offset as u64, &prev, entry)?;
                prev = sha256(&bytes);
                run.push((*tenant, bytes));
            }
            let written = store.append_audit_run(first, run);
            let landed = match &written {
                Ok(()) => pending.len(),
                Err((landed, _)) => *landed,
            };
            if landed > 0 {
                appended.count += landed;
                appended.last = Some(first + landed as u64 - 1);
                pending.drain(..landed);
            }
            match written {
                Ok(()) => return Ok(appended),
                Err((_, StoreError::Conflict(why))) => last_error = Some(StoreError::Conflict(why)),
                Err((_, error)) => return Err(error.into()),
            }
        }
        Err(last_error.unwrap_or(StoreError::Conflict("audit append".into())).into())
    }

    /// Checks every record; see the module documentation for what it finds.
    pub fn verify(
        root: &dyn RootSealer,
        store: &dyn KeyStoreBackend,
    ) -> Result<ChainHead, AuditVerifyError> {
        let next = store.audit_next().map_err(AuditVerifyError::Store)?;
        let mut prev = [0u8; 32];
        for sequence in 1..next {
            let stored = store
                .audit_record(sequence)
                .map_err(AuditVerifyError::Store)?
                .ok_or(AuditVerifyError::Missing { sequence })?;
            let body = check_record(root, &stored, sequence)?;
            if body.prev != hex(&prev) {
                return Err(AuditVerifyError::ChainBroken { sequence });
            }
            prev = sha256(&stored.bytes);
        }
        Ok(ChainHead { records: next - 1, head_hash: hex(&prev) })
    }

    /// The tenant's own records and the system records that concern every tenant, each
    /// checked (MAC and place) as it is read.
    pub fn export_tenant(
        root: &dyn RootSealer,
        store: &dyn KeyStoreBackend,
        tenant: TenantId,
    ) -> Result<Vec<ExportedRecord>, AuditVerifyError> {
        let mut exported = Vec::new();
        Self::each(root, store, |stored, body| {
            let include = match stored.tenant {
                Some(owner) => owner == tenant,
                None => body.entry.kind.concerns_every_tenant(),
            };
            if include {
                exported.push(export(stored, body));
            }
        })?;
        Ok(exported)
    }

    /// What a cluster admin sees: system records only, and how many tenant records exist.
    pub fn cluster_view(
        root: &dyn RootSealer,
        store: &dyn KeyStoreBackend,
    ) -> Result<(Vec<ExportedRecord>, u64), AuditVerifyError> {
        let (mut exported, mut tenant_records) = (Vec::new(), 0);
        Self::each(root, store, |stored, body| match stored.tenant {
            Some(_) => tenant_records += 1,
            None => exported.push(export(stored, body)),
        })?;
        Ok((exported, tenant_records))
    }

    fn each(
        root: &dyn RootSealer,
        store: &dyn KeyStoreBackend,
        mut visit: impl FnMut(&StoredAudit, Body),
    ) -> Result<(), AuditVerifyError> {
        let next = store.audit_next().map_err(AuditVerifyError::Store)?;
        for sequence in 1..next {
            let stored = store
                .audit_record(sequence)
                .map_err(AuditVerifyError::Store)?
                .ok_or(AuditVerifyError::Missing { sequence })?;
            let body = check_record(root, &stored, sequence)?;
            visit(&stored, body);
        }
        Ok(())
    }
}

fn check_record(
    root: &dyn RootSealer,
    stored: &StoredAudit,
    sequence: u64,
) -> Result<Body, AuditVerifyError> {
    let malformed = AuditVerifyError::Malformed { sequence };
    let bytes = &stored.bytes;
    if bytes.len() < 65 || bytes[64] != b' ' {
        return Err(malformed);
    }
    let (mac_hex, body_bytes) = (&bytes[..64], &bytes[65..]);
    let mac = root.mac(body_bytes).map_err(AuditVerifyError::Key)?;
    if verify_slices_are_equal(hex(&mac).as_bytes(), mac_hex).is_err() {
        return Err(AuditVerifyError::Edited { sequence });
    }
    let body: Body = serde_json::from_slice(body_bytes).map_err(|_| malformed.clone())?;
    if body.v != RECORD_VERSION {
        return Err(malformed);
    }
    if body.seq != sequence {
        return Err(AuditVerifyError::OutOfPlace { sequence, claims: body.seq });
    }
    let stored_tenant = stored.tenant.map(|tenant| tenant.to_string());
    if body.entry.tenant != stored_tenant {
        return Err(AuditVerifyError::Edited { sequence });
    }
    Ok(body)
}

fn export(stored: &StoredAudit, body: Body) -> ExportedRecord {
    ExportedRecord { sequence: body.seq, hash: hex(&sha256(&stored.bytes)), entry: body.entry }
}

/// A record's bytes: the MAC of its body, a space, the body.
fn record_bytes(
    root: &dyn RootSealer,
    sequence: u64,
    prev: &[u8; 32],
    entry: &AuditEntry,
) -> Result<Vec<u8>, KeyManagerError> {
    let body = Body { v: RECORD_VERSION, seq: sequence, prev: hex(prev), entry: entry.clone() };
    let body = serde_json::to_vec(&body)
        .map_err(|_| KeyManagerError::CorruptRecord { what: "audit encoding" })?;
    let mac = root.mac(&body)?;
    let mut bytes = hex(&mac).into_bytes();
    bytes.push(b' ');
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A tenant id from its UUID text (8-4-4-4-12 hex).
pub(crate) fn parse_tenant(text: &str) -> Option<TenantId> {
    let uuid = uuid::Uuid::parse_str(text).ok()?;
    TenantId::new(*uuid.as_bytes())
}
