//! Authorization, deny by default: may this peer call this API path on this target?
//!
//! Four sources can allow a call, each kept within the same rules:
//! 1. the built-in table (`table.rs`): each role's API paths and reach;
//! 2. policy-file roles the scope file gives the peer (`rbac.rs`, seed 004);
//! 3. the peer's KES policy, found by its key identity (`kes.rs`, seed 002);
//! 4. for a cluster admin only, an approved, unexpired access grant (`grant.rs`).
//!
//! [`Authorizer::authorize`] decides in this order, and the first rule that applies ends
//! it:
//! - a path that is not one of the product's ([`ApiPath`]) is denied;
//! - a target the API cannot act on (or an org argument naming another tenant than the
//!   target) is denied;
//! - a certificate-granting certificate is denied everything but `/v1/admission/request`
//!   and `/v1/admission/renew`, whatever any policy says;
//! - a deny pattern of the peer's KES policy denies, whatever else allows (deny wins);
//! - a scope-file role the policy file does not define denies everything;
//! - the built-in table allows;
//! - a policy-file role or the KES policy allows, but only within the tenant rules: on a
//!   tenant's target, a tenant's peer reaches only its own tenant, and a tenant's content
//!   (data, config, credentials, keys, audit) is reached only by that tenant's peers;
//! - an active grant covering the tenant, object type and access allows a cluster admin
//!   what the tenant's own admin or workloads could do (never what only storage nodes do:
//!   DEKs, audit appends);
//! - anything else is denied.
//!
//! So a cluster admin (or SRE) never reaches a tenant's content through the table, a
//! policy file or a KES policy: the table has no such entry (its tests check it) and the
//! tenant rules keep the other two out. Only a grant, approved by that tenant's admin,
//! lets a cluster admin in, for its scope and time window.
//!
//! Every decision carries an [`AuditEvent`] (who, roles, what, target, result, time); a
//! remote caller is told only [`RemoteError::AccessDenied`].
//!
//! What this module does not do: authenticate (a [`Caller`] comes from a verified
//! certificate), keep time (every call takes `now_unix_s`), read files (callers hand the
//! files' bytes to the parsers) or store the audit log.

mod api;
mod audit;
mod caller;
mod error;
mod grant;
mod json;
mod kes;
mod rbac;
mod table;

pub use api::{
    API_PATH_PREFIX, Access, Api, ApiPath, ApiSpec, Argument, InvalidApiPath, ObjectType, Target,
    Targets,
};
pub use audit::{AllowedBy, AuditAction, AuditActor, AuditEvent, AuditResult, DenyReason};
pub use caller::Caller;
pub use error::{
    GrantError, InvalidApiPattern, InvalidCaller, PolicyFileError, PolicyFileKind,
    PolicyFileProblem, RemoteError,
};
pub use grant::{AccessGrants, AccessRequest, Audited, GrantScope, RequestState};
pub use kes::{ApiPattern, KesEditError, KesPolicies, KesPolicy, KesVerdict};
pub use rbac::{Assigned, Permission, PolicyFile, RoleFiles, ScopeFile, ScopeIdentity};
pub use table::{Reach, RoleKind};

pub(crate) use audit::clean as clean_for_audit;
pub(crate) use error::shorten;

use crate::constants::API_PATH_MAX_BYTES;
use crate::role::{OrgId, Role};

/// The authorization state of one node: the loaded policy files and the access grants.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    role_files: RoleFiles,
    kes_policies: KesPolicies,
    grants: AccessGrants,
}

/// The answer to one call, with its audit record. Allowed only if it says so.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Decision {
    audit: AuditEvent,
}

impl Authorizer {
    /// An authorizer with the given policy files and no grants. `Authorizer::default()`
    /// has none: only the built-in table allows anything.
    pub fn new(role_files: RoleFiles, kes_policies: KesPolicies) -> Authorizer {
        Authorizer { role_files, kes_policies, grants: AccessGrants::default() }
    }

    /// Swaps in reloaded policy and scope files; grants are kept.
    pub fn replace_role_files(&mut self, role_files: RoleFiles) {
        self.role_files = role_files;
    }

    /// Swaps in a reloaded KES policy file; grants are kept.
    pub fn replace_kes_policies(&mut self, kes_policies: KesPolicies) {
        self.kes_policies = kes_policies;
    }

    /// May `caller` call `path` on `target` at `now_unix_s`? See the module's rules.
    pub fn authorize(
        &self,
        caller: &Caller,
        path: &str,
        target: &Target,
        now_unix_s: u64,
    ) -> Decision {
        let result = match self.decide(caller, path, target, now_unix_s) {
            Ok(by) => AuditResult::Allowed { by },
            Err(reason) => AuditResult::Denied { reason },
        };
        let action = AuditAction::Call { path: audit::clean(path, API_PATH_MAX_BYTES) };
        Decision { audit: AuditEvent::new(now_unix_s, caller, action, target.clone(), result) }
    }

    pub fn kes_policies(&self) -> &KesPolicies {
        &self.kes_policies
    }

    /// The KES policies, to edit through the key service's policy and identity APIs.
    pub fn kes_policies_mut(&mut self) -> &mut KesPolicies {
        &mut self.kes_policies
    }

    /// A cluster admin asks for access to a tenant's resources; see `grant.rs`.
    pub fn request_access(
        &mut self,
        requester: &Caller,
        scope: GrantScope,
        duration_s: u64,
        now_unix_s: u64,
    ) -> Audited<u64> {
        self.grants.request(requester, scope, duration_s, now_unix_s)
    }

    /// The tenant admin of the request's tenant approves it.
    pub fn approve_access(&mut self, id: u64, approver: &Caller, now_unix_s: u64) -> Audited<()> {
        let admin_of = self.tenant_admin_of(approver);
        self.grants.approve(id, approver, admin_of.as_ref(), now_unix_s)
    }

    /// The tenant admin of the request's tenant denies it.
    pub fn deny_access(&mut self, id: u64, approver: &Caller, now_unix_s: u64) -> Audited<()> {
        let admin_of = self.tenant_admin_of(approver);
        self.grants.deny(id, approver, admin_of.as_ref(), now_unix_s)
    }

    /// The tenant admin, or the requester, ends an active grant early.
    pub fn revoke_access(&mut self, id: u64, by: &Caller, now_unix_s: u64) -> Audited<()> {
        let admin_of = self.tenant_admin_of(by);
        self.grants.revoke(id, by, admin_of.as_ref(), now_unix_s)
    }

    pub fn grants(&self) -> &AccessGrants {
        &self.grants
    }

    pub fn grants_mut(&mut self) -> &mut AccessGrants {
        &mut self.grants
    }

    /// The built-in roles of a peer: its certificate's, and `tenant-admin` of its own
    /// tenant if the scope file gives it.
    pub fn builtin_roles(&self, caller: &Caller) -> Vec<Role> {
        let mut roles = caller.roles().to_vec();
        let assigned = self.role_files.assigned(caller.common_name(), caller.org());
        if let (true, Some(org)) = (assigned.tenant_admin, caller.org()) {
            let promoted = Role::TenantAdmin { org: org.clone() };
            if !roles.contains(&promoted) {
                roles.push(promoted);
            }
        }
        roles
    }

    fn tenant_admin_of(&self, caller: &Caller) -> Option<OrgId> {
        self.builtin_roles(caller).into_iter().find_map(|role| match role {
            Role::TenantAdmin { org } => Some(org),
            _ => None,
        })
    }

    fn decide(
        &self,
        caller: &Caller,
        path: &str,
        target: &Target,
        now_unix_s: u64,
    ) -> Result<AllowedBy, DenyReason> {
        let path = ApiPath::parse(path).map_err(DenyReason::InvalidPath)?;
        let api = path.api();
        let spec = api.spec();
        if !spec.targets.admit(target) {
            return Err(DenyReason::TargetMismatch);
        }
        if spec.argument == Argument::Org && path.argument() != target.org().map(OrgId::as_str) {
            return Err(DenyReason::TargetMismatch);
        }
        let admission = matches!(api, Api::AdmissionRequest | Api::AdmissionRenew);
        if caller.has_role(&Role::CertGranting) && !admission {
            return Err(DenyReason::CertGrantingConfined);
        }
        let kes_policy = self.kes_policies.policy_of(caller.key_identity());
        let kes_verdict = kes_policy.map(|policy| (policy.name(), policy.verdict(&path)));
        if let Some((policy, KesVerdict::Denied)) = kes_verdict {
            return Err(DenyReason::KesDenied { policy: policy.to_owned() });
        }
        let assigned = self.role_files.assigned(caller.common_name(), caller.org());
        let unknown = assigned.roles.iter().find(|role| !self.role_files.policy().has_role(role));
        if let Some(role) = unknown {
            return Err(DenyReason::UnknownRole { role: (*role).to_owned() });
        }

        for role in self.builtin_roles(caller) {
            if table::allows(&role, api, target) {
                return Ok(AllowedBy::Role(role));
            }
        }
        if within_tenant_rules(caller, spec.tenant_content, target) {
            for role in &assigned.roles {
                if self.role_files.permits(role, spec.object, spec.access) == Some(true) {
                    return Ok(AllowedBy::PolicyRole { role: (*role).to_owned() });
                }
            }
            if let Some((policy, KesVerdict::Allowed)) = kes_verdict {
                return Ok(AllowedBy::KesPolicy { policy: policy.to_owned() });
            }
        }
        if let (true, Target::Tenant(org)) = (spec.tenant_content, target)
            && table::tenant_roles_reach(api)
            && caller.has_role(&Role::ClusterAdmin)
        {
            let key = caller.key_identity();
            let grant = self.grants.covering(key, org, spec.object, spec.access, now_unix_s);
            if let Some(request) = grant {
                return Ok(AllowedBy::Grant { request });
            }
        }
        Err(deny_reason(caller, spec.tenant_content, target))
    }
}

/// The tenant rules for policy-file roles and KES policies: the cluster is open to them;
/// a tenant's target only to that tenant's peers, or to peers of no tenant for what is
/// not the tenant's content (lifecycle, access requests).
fn within_tenant_rules(caller: &Caller, tenant_content: bool, target: &Target) -> bool {
    match (target, caller.org()) {
        (Target::Cluster, _) => true,
        (Target::Tenant(org), Some(own)) => org == own,
        (Target::Tenant(_), None) => !tenant_content && !is_operator(caller),
    }
}

fn is_operator(caller: &Caller) -> bool {
    caller.roles().iter().any(|role| RoleKind::of(role).is_cluster_operator())
}

fn deny_reason(caller: &Caller, tenant_content: bool, target: &Target) -> DenyReason {
    match (target, caller.org()) {
        (Target::Tenant(org), Some(own)) if org != own => DenyReason::OtherTenant,
        (Target::Tenant(_), None) if tenant_content && is_operator(caller) => DenyReason::NoGrant,
        _ => DenyReason::NotPermitted,
    }
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self.audit.result, AuditResult::Allowed { .. })
    }

    pub fn allowed_by(&self) -> Option<&AllowedBy> {
        match &self.audit.result {
            AuditResult::Allowed { by } => Some(by),
            _ => None,
        }
    }

    pub fn deny_reason(&self) -> Option<&DenyReason> {
        match &self.audit.result {
            AuditResult::Denied { reason } => Some(reason),
            _ => None,
        }
    }

    pub fn audit_event(&self) -> &AuditEvent {
        &self.audit
    }

    pub fn into_audit_event(self) -> AuditEvent {
        self.audit
    }

    /// What the remote caller gets: `Ok` or a generic "access denied".
    pub fn remote_result(&self) -> Result<(), RemoteError> {
        if self.is_allowed() { Ok(()) } else { Err(RemoteError::AccessDenied) }
    }
}

#[cfg(test)]
mod tests;
