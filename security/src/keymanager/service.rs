//! [`KeyService`]: the key manager's KES-style API. Every request is an API path
//! (`/v1/key/create/<name>`, `/v1/policy/write/<name>`, ...) that the
//! [`Authorizer`] must allow for the caller on the request's target, or it is denied;
//! every call leaves an audit record of the decision, and an allowed key or policy
//! operation a second one with its outcome.
//!
//! Key names: `master` is the system master key (target: the cluster); an organization id
//! names that tenant's KEK (target: the tenant). So a tenant admin reaches only its own
//! tenant's KEK (the authorizer's tenant rules), and the cluster admin never reaches a
//! tenant's key (the role table gives it none, and `generate`/`decrypt` on a tenant
//! target are storage nodes' only).
//!
//! What the caller is told: the result, or [`ServiceError::AccessDenied`] for anything
//! the authorizer refused or whose key is absent (the same shape), or a short reason that
//! names no secret. Everything else goes to the audit log.
//!
//! What it does not do: the network (the gateway serves it over mTLS and builds the
//! [`Caller`] from the verified certificate), or persist policy edits (they live in the
//! authorizer held here; replicating them through consensus is still to come).

use std::fmt;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::authz::{AuditEvent, Authorizer, Caller, KesPolicies, Target};
use crate::constants::KEY_LEN;
use crate::ids::TenantId;
use crate::keymanager::audit_log::{AuditEntry, AuditKind, AuditLog, AuditOutcome};
use crate::keymanager::error::KeyManagerError;
use crate::keymanager::manager::{KeyManager, KeyManagerStatus, RetentionHolds};
use crate::keymanager::store::{KeyScope, KeyStoreBackend};

/// What the root key's seal of the stored policies is bound to.
const POLICIES_AAD: &[u8] = b"kiseki key service policies v1";
use crate::role::OrgId;

/// The key name of the system master key.
pub const MASTER_KEY_NAME: &str = "master";
/// The context `generate` and `decrypt` bind their data keys to.
const DATA_KEY_CONTEXT: &[u8] = b"kiseki-kes-data-key-v1";
/// The namespace of tenant ids made from organization ids (UUID v5).
const TENANT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_bytes([
    0x6b, 0x69, 0x73, 0x65, 0x6b, 0x69, 0x2d, 0x74, 0x65, 0x6e, 0x61, 0x6e, 0x74, 0x2d, 0x69, 0x64,
]);

/// A tenant's id from its organization id: UUID v5 in Kiseki's tenant namespace.
pub fn tenant_of_org(org: &OrgId) -> TenantId {
    let uuid = uuid::Uuid::new_v5(&TENANT_NAMESPACE, org.as_str().as_bytes());
    TenantId::new(*uuid.as_bytes()).expect("a v5 UUID has version bits set, so it is not nil")
}

/// One call of the key service.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyRequest {
    /// The first epoch of a key (a tenant's KEK; `isolated` adds a tenant secret).
    Create {
        name: String,
        isolated: bool,
    },
    /// A new epoch from the caller's 32 bytes.
    Import {
        name: String,
        material: Zeroizing<Vec<u8>>,
    },
    /// A tenant's KEKs: crypto-shred (retention holds checked). The master key cannot be
    /// deleted, only its old epochs retired (`retire` is the node operator's).
    Delete {
        name: String,
    },
    List {
        pattern: Option<String>,
    },
    Rotate {
        name: String,
    },
    /// A fresh 32-byte data key and the same wrapped under the named key.
    Generate {
        name: String,
    },
    Decrypt {
        name: String,
        ciphertext: Vec<u8>,
    },
    Status,
    /// A system master key epoch (`None`: the current one), for a storage node: the only
    /// call that hands out a key the service holds. Tenant KEKs never leave it.
    FetchMaster {
        epoch: Option<u32>,
    },
    PolicyWrite {
        name: String,
        allow: Vec<String>,
        deny: Vec<String>,
    },
    PolicyRead {
        name: String,
    },
    PolicyList,
    PolicyDelete {
        name: String,
    },
    IdentityAssign {
        identity: String,
        policy: String,
    },
    IdentityDelete {
        identity: String,
    },
    IdentityDescribe {
        identity: String,
    },
    IdentityList,
}

/// What a call returns.
#[non_exhaustive]
pub enum KeyReply {
    Done,
    Epoch(u32),
    Names(Vec<String>),
    DataKey { plaintext: Zeroizing<Vec<u8>>, ciphertext: Vec<u8> },
    Plaintext(Zeroizing<Vec<u8>>),
    Status(KeyManagerStatus),
    Policy { allow: Vec<String>, deny: Vec<String> },
    Identity { policy: Option<String> },
    MasterKey { epoch: u32, current: u32, key: Zeroizing<[u8; KEY_LEN]> },
}

impl fmt::Debug for KeyReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyReply::Done => f.write_str("Done"),
            KeyReply::Epoch(epoch) => write!(f, "Epoch({epoch})"),
            KeyReply::Names(names) => write!(f, "Names({names:?})"),
            KeyReply::DataKey { ciphertext, .. } => {
                write!(f, "DataKey {{ ciphertext: {} bytes, .. }}", ciphertext.len())
            }
            KeyReply::Plaintext(plaintext) => write!(f, "Plaintext({} bytes)", plaintext.len()),
            KeyReply::Status(status) => write!(f, "Status({status:?})"),
            KeyReply::Policy { allow, deny } => write!(f, "Policy({allow:?}, {deny:?})"),
            KeyReply::Identity { policy } => write!(f, "Identity({policy:?})"),
            KeyReply::MasterKey { epoch, current, .. } => {
                write!(f, "MasterKey {{ epoch: {epoch}, current: {current}, .. }}")
            }
        }
    }
}

/// What the caller is told when a call fails.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceError {
    /// Not allowed, or no such key: the same answer.
    AccessDenied,
    /// The tenant was crypto-shredded.
    TenantKeysDestroyed,
    /// Allowed but refused by the state (exists already, retention hold, bad input).
    Refused(String),
    /// The audit log or the key store could not be written: nothing was done.
    Unavailable(String),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::AccessDenied => f.write_str("access denied"),
            ServiceError::TenantKeysDestroyed => f.write_str("tenant keys destroyed"),
            ServiceError::Refused(why) => write!(f, "refused: {why}"),
            ServiceError::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

impl std::error::Error for ServiceError {}

/// The key service of one node.
pub struct KeyService<S> {
    keys: KeyManager<S>,
    authorizer: Authorizer,
    audit: AuditLog,
    holds: Box<dyn RetentionHolds + Send>,
}

impl<S: KeyStoreBackend> KeyService<S> {
    pub fn new(
        keys: KeyManager<S>,
        authorizer: Authorizer,
        audit: AuditLog,
        holds: Box<dyn RetentionHolds + Send>,
    ) -> KeyService<S> {
        KeyService { keys, authorizer, audit, holds }
    }

    pub fn keys(&self) -> &KeyManager<S> {
        &self.keys
    }

    pub fn keys_mut(&mut self) -> &mut KeyManager<S> {
        &mut self.keys
    }

    pub fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// Stores the KES policies and bindings in force (sealed under the root key), so a
    /// restart, or another key server on the same store, finds them. Policy and identity
    /// edits through [`Self::call`] do this themselves.
    pub fn save_policies(&mut self) -> Result<(), KeyManagerError> {
        let bytes = self.authorizer.kes_policies().to_file_bytes();
        let sealed = self.keys.root().seal(POLICIES_AAD, &bytes)?;
        self.keys.store_mut().put_policies(sealed)?;
        Ok(())
    }

    /// Replaces the policies in force with the stored ones; false if none were stored.
    pub fn restore_policies(&mut self) -> Result<bool, KeyManagerError> {
        let Some(sealed) = self.keys.store().policies()? else { return Ok(false) };
        let bytes = self.keys.root().open(POLICIES_AAD, &sealed)?;
        let policies = KesPolicies::parse(&bytes)
            .map_err(|_| KeyManagerError::CorruptRecord { what: "stored key policies" })?;
        self.authorizer.replace_kes_policies(policies);
        Ok(true)
    }

    /// Decides, audits and, if allowed, runs one call.
    pub fn call(
        &mut self,
        caller: &Caller,
        request: KeyRequest,
        now_unix_s: u64,
    ) -> Result<KeyReply, ServiceError> {
        let (path, target) = request_path(&request);
        let kind = request_kind(&request);
        let decision = self.authorizer.authorize(caller, &path, &target, now_unix_s);
        let allowed = decision.is_allowed();
        let event = decision.into_audit_event();
        self.record(AuditEntry::from_event(kind, &event))?;
        if !allowed {
            return Err(ServiceError::AccessDenied);
        }
        let result = self.run(request, &target);
        let outcome = match &result {
            Ok(_) => AuditOutcome::Succeeded,
            Err(error) => AuditOutcome::Failed { reason: error.to_string() },
        };
        if kind != AuditKind::AdminOperation {
            let mut entry = AuditEntry::from_event(kind, &event);
            entry.outcome = outcome;
            self.record(entry)?;
        }
        result.map_err(service_error)
    }

    /// Records a peer's authentication (a handshake that succeeded, or failed and why).
    pub fn audit_authentication(
        &mut self,
        event: &AuditEvent,
        success: bool,
    ) -> Result<(), ServiceError> {
        let kind = if success { AuditKind::AuthSuccess } else { AuditKind::AuthFailure };
        self.record(AuditEntry::from_event(kind, event))
    }

    /// Records a TLS handshake: `Ok(caller)` for a peer whose certificate verified, or
    /// `Err(reason)` for one refused (no identity then; `remote` is its address). A
    /// tenant's peer's success is its tenant's record; a refusal is a system record.
    pub fn audit_handshake(
        &mut self,
        outcome: Result<&Caller, &str>,
        remote: &str,
        now_unix_s: u64,
    ) -> Result<(), ServiceError> {
        self.record(AuditEntry::handshake(outcome, remote, now_unix_s))
    }

    /// Records a data access (sampled as the audit log is configured).
    pub fn audit_data_access(&mut self, event: &AuditEvent) -> Result<(), ServiceError> {
        self.record(AuditEntry::from_event(AuditKind::DataAccess, event))
    }

    /// Records an admin operation done elsewhere (a device drained, a tenant created).
    pub fn audit_admin(&mut self, event: &AuditEvent) -> Result<(), ServiceError> {
        self.record(AuditEntry::from_event(AuditKind::AdminOperation, event))
    }

    fn record(&mut self, entry: AuditEntry) -> Result<(), ServiceError> {
        let (root, store) = self.keys.audit_parts();
        self.audit
            .append(root, store, entry)
            .map(|_| ())
            .map_err(|error| ServiceError::Unavailable(format!("audit log: {error}")))
    }

    fn run(&mut self, request: KeyRequest, target: &Target) -> Result<KeyReply, KeyManagerError> {
        let scope = match target {
            Target::Cluster => KeyScope::System,
            Target::Tenant(org) => KeyScope::Tenant(tenant_of_org(org)),
        };
        match request {
            KeyRequest::Create { isolated, .. } => match scope {
                KeyScope::System => self.keys.init_cluster().and_then(|(epoch, created)| {
                    if created { Ok(epoch) } else { Err(KeyManagerError::AlreadyExists { scope }) }
                }),
                KeyScope::Tenant(tenant) => self.keys.create_tenant_kek(tenant, isolated),
            }
            .map(KeyReply::Epoch),
            KeyRequest::Import { material, .. } => match scope {
                KeyScope::System => Err(KeyManagerError::AlreadyExists { scope }),
                KeyScope::Tenant(tenant) => {
                    self.keys.import_tenant_kek(tenant, &material).map(KeyReply::Epoch)
                }
            },
            KeyRequest::Delete { .. } => match scope {
                KeyScope::System => Err(KeyManagerError::RetireCurrent { epoch: 0 }),
                KeyScope::Tenant(tenant) => {
                    self.keys.shred_tenant(tenant, self.holds.as_ref()).map(|()| KeyReply::Done)
                }
            },
            KeyRequest::List { .. } => self.list(scope, target),
            KeyRequest::Rotate { .. } => match scope {
                KeyScope::System => self.keys.rotate_master(),
                KeyScope::Tenant(tenant) => self.keys.rotate_tenant_kek(tenant),
            }
            .map(KeyReply::Epoch),
            KeyRequest::Generate { .. } => {
                let mut plaintext = Zeroizing::new(vec![0u8; KEY_LEN]);
                SystemRandom::new()
                    .fill(&mut plaintext[..])
                    .map_err(|_| crate::CryptoError::Random)?;
                let ciphertext = self.keys.seal_under(scope, DATA_KEY_CONTEXT, &plaintext)?;
                Ok(KeyReply::DataKey { plaintext, ciphertext })
            }
            KeyRequest::Decrypt { ciphertext, .. } => {
                self.keys.open_under(scope, DATA_KEY_CONTEXT, &ciphertext).map(KeyReply::Plaintext)
            }
            KeyRequest::Status => Ok(KeyReply::Status(self.keys.status())),
            KeyRequest::FetchMaster { epoch } => {
                let current = self.keys.master_epoch()?;
                let key = self.keys.master_key(epoch.unwrap_or(current))?;
                let bytes = Zeroizing::new(*key.expose());
                Ok(KeyReply::MasterKey { epoch: key.epoch(), current, key: bytes })
            }
            request => self.policy_call(request),
        }
    }

    fn list(&mut self, scope: KeyScope, target: &Target) -> Result<KeyReply, KeyManagerError> {
        let names = match (scope, target) {
            (KeyScope::System, _) => self
                .keys
                .master_epochs()?
                .into_iter()
                .map(|epoch| format!("{MASTER_KEY_NAME} epoch {epoch}"))
                .collect(),
            (KeyScope::Tenant(tenant), Target::Tenant(org)) => {
                let epoch = self.keys.tenant_epoch(tenant)?;
                vec![format!("{org} epoch {epoch}")]
            }
            (KeyScope::Tenant(_), Target::Cluster) => Vec::new(),
        };
        Ok(KeyReply::Names(names))
    }

    fn policy_call(&mut self, request: KeyRequest) -> Result<KeyReply, KeyManagerError> {
        let edits = matches!(
            request,
            KeyRequest::PolicyWrite { .. }
                | KeyRequest::PolicyDelete { .. }
                | KeyRequest::IdentityAssign { .. }
                | KeyRequest::IdentityDelete { .. }
        );
        let reply = self.policy_read_or_edit(request)?;
        if edits {
            // An edit the store did not take is reported as failed, though it holds in
            // this process until a restart: the caller must not count on it.
            self.save_policies()?;
        }
        Ok(reply)
    }

    fn policy_read_or_edit(&mut self, request: KeyRequest) -> Result<KeyReply, KeyManagerError> {
        let refused =
            |why: String| KeyManagerError::Store(crate::keymanager::StoreError::Refused(why));
        let policies: &mut KesPolicies = self.authorizer.kes_policies_mut();
        match request {
            KeyRequest::PolicyWrite { name, allow, deny } => {
                let allow: Vec<&str> = allow.iter().map(String::as_str).collect();
                let deny: Vec<&str> = deny.iter().map(String::as_str).collect();
                policies
                    .put_policy(&name, &allow, &deny)
                    .map(|()| KeyReply::Done)
                    .map_err(|error| refused(error.to_string()))
            }
            KeyRequest::PolicyRead { name } => match policies.policy(&name) {
                Some(policy) => Ok(KeyReply::Policy {
                    allow: policy.allow().iter().map(|p| p.as_str().to_owned()).collect(),
                    deny: policy.deny().iter().map(|p| p.as_str().to_owned()).collect(),
                }),
                None => Err(refused("no such policy".into())),
            },
            KeyRequest::PolicyList => {
                Ok(KeyReply::Names(policies.policies().map(|p| p.name().to_owned()).collect()))
            }
            KeyRequest::PolicyDelete { name } => match policies.remove_policy(&name) {
                true => Ok(KeyReply::Done),
                false => Err(refused("no such policy".into())),
            },
            KeyRequest::IdentityAssign { identity, policy } => policies
                .assign(&identity, &policy)
                .map(|_| KeyReply::Done)
                .map_err(|error| refused(error.to_string())),
            KeyRequest::IdentityDelete { identity } => match policies.unassign(&identity) {
                Some(_) => Ok(KeyReply::Done),
                None => Err(refused("identity has no policy".into())),
            },
            KeyRequest::IdentityDescribe { identity } => Ok(KeyReply::Identity {
                policy: policies.policy_of(&identity).map(|p| p.name().to_owned()),
            }),
            KeyRequest::IdentityList => Ok(KeyReply::Names(
                policies.bindings().map(|(id, policy)| format!("{id} {policy}")).collect(),
            )),
            _ => Err(refused("not a policy call".into())),
        }
    }
}

impl<S> fmt::Debug for KeyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyService").field("keys", &self.keys).finish_non_exhaustive()
    }
}

/// The API path of a request and its target. A key name that is neither `master` nor an
/// organization id gets a cluster target and the path as given, which the authorizer
/// then judges (and the run finds no such key).
fn request_path(request: &KeyRequest) -> (String, Target) {
    let key = |op: &str, name: &str| (format!("/v1/key/{op}/{name}"), key_target(name));
    let cluster = |path: String| (path, Target::Cluster);
    match request {
        KeyRequest::Create { name, .. } => key("create", name),
        KeyRequest::Import { name, .. } => key("import", name),
        KeyRequest::Delete { name } => key("delete", name),
        KeyRequest::Rotate { name } => key("rotate", name),
        KeyRequest::Generate { name } => key("generate", name),
        KeyRequest::Decrypt { name, .. } => key("decrypt", name),
        KeyRequest::List { pattern: Some(pattern) } => {
            (format!("/v1/key/list/{pattern}"), key_target(pattern))
        }
        KeyRequest::List { pattern: None } => cluster("/v1/key/list".into()),
        KeyRequest::Status => cluster("/v1/key/status".into()),
        KeyRequest::FetchMaster { .. } => cluster(format!("/v1/key/fetch/{MASTER_KEY_NAME}")),
        KeyRequest::PolicyWrite { name, .. } => cluster(format!("/v1/policy/write/{name}")),
        KeyRequest::PolicyRead { name } => cluster(format!("/v1/policy/read/{name}")),
        KeyRequest::PolicyList => cluster("/v1/policy/list".into()),
        KeyRequest::PolicyDelete { name } => cluster(format!("/v1/policy/delete/{name}")),
        KeyRequest::IdentityAssign { identity, .. } => {
            cluster(format!("/v1/identity/assign/{identity}"))
        }
        KeyRequest::IdentityDelete { identity } => {
            cluster(format!("/v1/identity/delete/{identity}"))
        }
        KeyRequest::IdentityDescribe { identity } => {
            cluster(format!("/v1/identity/describe/{identity}"))
        }
        KeyRequest::IdentityList => cluster("/v1/identity/list".into()),
    }
}

fn key_target(name: &str) -> Target {
    match OrgId::parse(name) {
        Ok(org) if name != MASTER_KEY_NAME => Target::Tenant(org),
        _ => Target::Cluster,
    }
}

fn request_kind(request: &KeyRequest) -> AuditKind {
    match request {
        KeyRequest::PolicyWrite { .. }
        | KeyRequest::PolicyDelete { .. }
        | KeyRequest::IdentityAssign { .. }
        | KeyRequest::IdentityDelete { .. } => AuditKind::PolicyChange,
        KeyRequest::PolicyRead { .. }
        | KeyRequest::PolicyList
        | KeyRequest::IdentityDescribe { .. }
        | KeyRequest::IdentityList
        | KeyRequest::Status => AuditKind::AdminOperation,
        _ => AuditKind::KeyOperation,
    }
}

fn service_error(error: KeyManagerError) -> ServiceError {
    match error {
        KeyManagerError::TenantKeysDestroyed { .. } => ServiceError::TenantKeysDestroyed,
        KeyManagerError::NoKey { .. } | KeyManagerError::UnknownEpoch { .. } => {
            ServiceError::AccessDenied
        }
        KeyManagerError::Store(crate::keymanager::StoreError::Unavailable(why)) => {
            ServiceError::Unavailable(why)
        }
        KeyManagerError::AlreadyExists { .. } => ServiceError::Refused("key exists".into()),
        KeyManagerError::RetentionHold { .. } => {
            ServiceError::Refused("tenant has a retention hold".into())
        }
        KeyManagerError::RetireCurrent { .. } => {
            ServiceError::Refused("the master key is rotated and retired, not deleted".into())
        }
        KeyManagerError::BadKeyMaterial { .. } => {
            ServiceError::Refused("key material must be 32 bytes".into())
        }
        KeyManagerError::Store(crate::keymanager::StoreError::Refused(why)) => {
            ServiceError::Refused(why)
        }
        KeyManagerError::OpenFailed => ServiceError::Refused("ciphertext does not open".into()),
        _ => ServiceError::Unavailable("key manager".into()),
    }
}
