//! The audit record of one authorization decision or access-request step: who, with which
//! roles, did what, to what, with which result, when. The audit log (to come) stores these
//! values; this module only makes them.
//!
//! Invariants: a record holds names, identities, paths and reasons, never a key, a token
//! or a secret; a request path copied from a peer is bounded to [`API_PATH_MAX_BYTES`] and
//! has its control characters replaced, so a peer cannot forge log lines through it.

use std::fmt;

use crate::authz::api::{InvalidApiPath, Target};
use crate::authz::caller::Caller;
use crate::authz::error::GrantError;
use crate::constants::API_PATH_MAX_BYTES;
use crate::role::Role;

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub time_unix_s: u64,
    pub actor: AuditActor,
    pub action: AuditAction,
    pub target: Target,
    pub result: AuditResult,
}

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditActor {
    pub common_name: String,
    /// SHA-256 of the actor's public key, 64 hex digits.
    pub key_identity: String,
    /// The roles the actor's certificate gives (scope-file roles are in the result).
    pub roles: Vec<Role>,
}

/// What the actor did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditAction {
    /// Called an API path (bounded and cleaned; it may be malformed).
    Call {
        path: String,
    },
    /// A cluster admin asked for access to a tenant's resources (`None`: refused before
    /// it got an id).
    AccessRequest {
        request: Option<u64>,
    },
    AccessApprove {
        request: u64,
    },
    AccessDeny {
        request: u64,
    },
    AccessRevoke {
        request: u64,
    },
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditResult {
    Allowed {
        by: AllowedBy,
    },
    Denied {
        reason: DenyReason,
    },
    /// An access-request step that was carried out.
    Completed,
    /// An access-request step that was refused.
    Refused {
        error: GrantError,
    },
}

/// What allowed a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedBy {
    /// The built-in table, for this role.
    Role(Role),
    /// A policy-file role the scope file gives the caller.
    PolicyRole { role: String },
    /// The caller's KES policy.
    KesPolicy { policy: String },
    /// A cluster admin's approved, unexpired access grant.
    Grant { request: u64 },
}

/// Why a call was denied. The caller only ever sees "access denied".
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenyReason {
    InvalidPath(InvalidApiPath),
    /// The target does not fit the API (a tenant API on the cluster, or an org argument
    /// naming another tenant than the target).
    TargetMismatch,
    /// A certificate-granting certificate called other than `/v1/admission/...`.
    CertGrantingConfined,
    /// A deny pattern of the caller's KES policy matched.
    KesDenied {
        policy: String,
    },
    /// A tenant's peer addressed another tenant.
    OtherTenant,
    /// A cluster operator addressed a tenant's content without an active grant covering it.
    NoGrant,
    /// The scope file gives a role the policy file does not define.
    UnknownRole {
        role: String,
    },
    /// Nothing allows it.
    NotPermitted,
}

impl AuditEvent {
    pub(crate) fn new(
        time_unix_s: u64,
        caller: &Caller,
        action: AuditAction,
        target: Target,
        result: AuditResult,
    ) -> AuditEvent {
        let actor = AuditActor {
            common_name: clean(caller.common_name(), API_PATH_MAX_BYTES),
            key_identity: caller.key_identity().to_owned(),
            roles: caller.roles().to_vec(),
        };
        AuditEvent { time_unix_s, actor, action, target, result }
    }

    pub fn allowed(&self) -> bool {
        matches!(self.result, AuditResult::Allowed { .. } | AuditResult::Completed)
    }
}

/// A request path as an audit record keeps it: at most `max_bytes` (cut at a character
/// boundary, marked with `…`), control characters replaced by U+FFFD.
pub(crate) fn clean(text: &str, max_bytes: usize) -> String {
    let mut cleaned = String::with_capacity(text.len().min(max_bytes) + 3);
    for c in text.chars() {
        if cleaned.len() + c.len_utf8() > max_bytes {
            cleaned.push('…');
            break;
        }
        cleaned.push(if c.is_control() { char::REPLACEMENT_CHARACTER } else { c });
    }
    cleaned
}

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actor = &self.actor;
        let (time, name, key) = (self.time_unix_s, &actor.common_name, &actor.key_identity);
        write!(f, "t={time} actor={name:?} key={key} roles=[")?;
        for (index, role) in actor.roles.iter().enumerate() {
            let separator = if index == 0 { "" } else { "," };
            write!(f, "{separator}{role}")?;
        }
        write!(f, "] action={} target={} result={}", self.action, self.target, self.result)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditAction::Call { path } => write!(f, "call {path:?}"),
            AuditAction::AccessRequest { request: Some(request) } => {
                write!(f, "access-request #{request}")
            }
            AuditAction::AccessRequest { request: None } => f.write_str("access-request"),
            AuditAction::AccessApprove { request } => write!(f, "access-approve #{request}"),
            AuditAction::AccessDeny { request } => write!(f, "access-deny #{request}"),
            AuditAction::AccessRevoke { request } => write!(f, "access-revoke #{request}"),
        }
    }
}

impl fmt::Display for AuditResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditResult::Allowed { by } => write!(f, "allowed by {by}"),
            AuditResult::Denied { reason } => write!(f, "denied: {reason}"),
            AuditResult::Completed => f.write_str("completed"),
            AuditResult::Refused { error } => write!(f, "refused: {error}"),
        }
    }
}

impl fmt::Display for AllowedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedBy::Role(role) => write!(f, "role {role}"),
            AllowedBy::PolicyRole { role } => write!(f, "policy-file role {role:?}"),
            AllowedBy::KesPolicy { policy } => write!(f, "KES policy {policy:?}"),
            AllowedBy::Grant { request } => write!(f, "access grant #{request}"),
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::InvalidPath(invalid) => write!(f, "{invalid}"),
            DenyReason::TargetMismatch => f.write_str("target does not fit the API"),
            DenyReason::CertGrantingConfined => {
                f.write_str("a certificate-granting certificate may only request certificates")
            }
            DenyReason::KesDenied { policy } => write!(f, "KES policy {policy:?} denies it"),
            DenyReason::OtherTenant => f.write_str("another tenant's resource"),
            DenyReason::NoGrant => f.write_str("tenant content without an active access grant"),
            DenyReason::UnknownRole { role } => write!(f, "unknown role {role:?}"),
            DenyReason::NotPermitted => f.write_str("not permitted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_bounds_and_defuses_peer_text() {
        assert_eq!(clean("/v1/key/list", 100), "/v1/key/list");
        assert_eq!(clean("/v1/a\nforged line", 100), "/v1/a\u{fffd}forged line");
        let long = "я".repeat(1000);
        let cleaned = clean(&long, 11);
        assert_eq!(cleaned, format!("{}…", "я".repeat(5)));
        assert!(clean(&"x".repeat(1 << 20), API_PATH_MAX_BYTES).len() <= API_PATH_MAX_BYTES + 3);
    }
}
