//! Authorization's errors, and the one generic answer a remote caller gets.
//!
//! The typed errors here are for the operator, the log and the audit record: a policy file
//! error names the file, the field and the problem; a grant error says which rule refused.
//! None carries a secret (these files and requests hold names and identities, never keys
//! or tokens), and names copied from input are shortened so an error stays one line. A
//! remote caller sees only [`RemoteError`]: "authentication failed" or "access denied",
//! the same for "absent" and "not yours".

use std::fmt;

use crate::authz::api::ObjectType;

/// What a remote caller is told, whatever the detail: nothing that helps probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteError {
    /// The peer could not prove who it is (certificate, token).
    AuthenticationFailed,
    /// The peer is known but may not do this, or the thing does not exist.
    AccessDenied,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RemoteError::AuthenticationFailed => "authentication failed",
            RemoteError::AccessDenied => "access denied",
        })
    }
}

impl std::error::Error for RemoteError {}

/// Which file a [`PolicyFileError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyFileKind {
    /// Roles to object types and permissions (seed 004).
    Policy,
    /// Roles to identities (seed 004).
    Scope,
    /// KES-style named policies of API path globs (seed 002).
    KesPolicy,
}

/// A policy, scope or KES policy file that cannot be used; nothing of it is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFileError {
    pub file: PolicyFileKind,
    /// Where in the file: `$` for the whole document, `$.Root.Device[1]` for a field.
    pub field: String,
    pub problem: PolicyFileProblem,
}

/// What is wrong at [`PolicyFileError::field`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyFileProblem {
    TooLarge {
        len_bytes: usize,
        max_bytes: usize,
    },
    Syntax {
        line: usize,
        column: usize,
    },
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    TooMany {
        what: &'static str,
        max: usize,
    },
    /// The same key twice in one object (JSON parsers usually keep the last silently).
    DuplicateKey {
        key: String,
    },
    /// A role, object type, permission or identity listed twice where once is the rule.
    DuplicateEntry {
        entry: String,
    },
    /// A key this file format does not define.
    UnknownField {
        name: String,
    },
    MissingField {
        name: &'static str,
    },
    /// A role or policy name that is empty, too long or holds other than `[A-Za-z0-9_.-]`.
    BadName {
        name: String,
    },
    /// A policy file may not redefine a built-in role's name.
    ReservedRoleName {
        role: String,
    },
    /// A scope file names a role the policy file does not define.
    UnknownRole {
        role: String,
    },
    /// A scope file may assign only `tenant-admin` of the built-in roles; the others come
    /// from certificates alone.
    RoleOnlyFromCertificate {
        role: String,
    },
    UnknownObjectType {
        name: String,
    },
    UnknownPermission {
        name: String,
    },
    EmptyList,
    /// An identity that is not of the form the field requires.
    BadIdentity {
        identity: String,
        reason: &'static str,
    },
    /// A KES identity bound to a second policy (each identity has at most one).
    IdentityInTwoPolicies {
        identity: String,
        first_policy: String,
    },
    BadPattern {
        pattern: String,
        problem: InvalidApiPattern,
    },
}

/// Why a string is not an API path pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidApiPattern {
    Empty,
    TooLong {
        len_bytes: usize,
        max_bytes: usize,
    },
    /// Patterns are over `/v1/...` paths; anything else (`*` alone included) could match no
    /// path, or be read as a wildcard over everything by a human.
    NotVersion1,
    /// `**` would let a pattern cross `/`; this crate's globs never do (KES's neither).
    DoubleStar,
    TooManyWildcards {
        count: usize,
        max: usize,
    },
    /// An empty segment or a trailing `/`: no API path has one, so the pattern would
    /// match nothing.
    EmptySegment,
    ControlCharacter,
    /// Fewer segments than `/v1/<api>/<op>`.
    TooFewSegments,
    /// More segments than `/v1/<api>/<op>/<argument>`.
    TooManySegments,
    /// The literal `<api>` segment names no API of the product.
    UnknownApi,
    /// The literal `<api>/<op>` pair names no API of the product.
    UnknownOperation,
    /// An argument segment after a literal API that takes none.
    ArgumentNotTaken,
    /// The glob crate refused it (an unclosed `[`, a misplaced `**`).
    Glob {
        position: usize,
        reason: &'static str,
    },
}

/// Why a [`crate::authz::Caller`] cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidCaller {
    /// The key identity is not 64 hex digits (SHA-256 of the public key).
    BadKeyIdentity,
    CommonNameTooLong {
        len_bytes: usize,
        max_bytes: usize,
    },
    /// Tenant roles naming two organizations: one certificate is one tenant.
    TwoOrganizations,
    /// Infrastructure roles beside tenant roles: one certificate is one or the other.
    InfrastructureAndTenant,
}

/// Why an access request operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrantError {
    /// Only a cluster admin requests access to a tenant's resources.
    RequesterNotClusterAdmin,
    EmptyScope,
    /// The scope names an object type no tenant content has.
    NotGrantable {
        object: ObjectType,
    },
    ZeroDuration,
    DurationTooLong {
        duration_s: u64,
        max_s: u64,
    },
    TooManyRequests {
        max: usize,
    },
    UnknownRequest {
        id: u64,
    },
    /// The request was already approved, denied, revoked, or its pending time ran out.
    NotPending {
        id: u64,
    },
    /// Approving, denying or revoking takes the tenant admin of the request's tenant.
    NotTenantAdminOfOrg,
    /// A cluster operator cannot approve anything, even holding another role too.
    ApproverIsOperator,
    /// The requester's own identity cannot approve its request.
    SelfApproval,
    /// Only an approved, unexpired grant can be revoked.
    NotActive {
        id: u64,
    },
}

/// Shortens a name copied from input for an error message: at most 64 characters.
pub(crate) fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    if text.chars().count() <= MAX_CHARS {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(MAX_CHARS).collect();
    short.push('…');
    short
}

impl fmt::Display for PolicyFileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyFileKind::Policy => "policy file",
            PolicyFileKind::Scope => "scope file",
            PolicyFileKind::KesPolicy => "KES policy file",
        })
    }
}

impl fmt::Display for PolicyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, field {}: {}", self.file, self.field, self.problem)
    }
}

impl std::error::Error for PolicyFileError {}

impl fmt::Display for PolicyFileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PolicyFileProblem::*;
        match self {
            TooLarge { len_bytes, max_bytes } => {
                write!(f, "{len_bytes} bytes, over the {max_bytes}-byte limit")
            }
            Syntax { line, column } => write!(f, "not JSON (line {line}, column {column})"),
            WrongType { expected, found } => write!(f, "expected {expected}, found {found}"),
            TooMany { what, max } => write!(f, "more than {max} {what}"),
            DuplicateKey { key } => write!(f, "key {key:?} appears twice"),
            DuplicateEntry { entry } => write!(f, "{entry:?} is listed twice"),
            UnknownField { name } => write!(f, "unknown field {name:?}"),
            MissingField { name } => write!(f, "missing field {name:?}"),
            BadName { name } => {
                write!(f, "name {name:?} is not 1 to 128 characters of A-Z a-z 0-9 _ . -")
            }
            ReservedRoleName { role } => write!(f, "{role:?} is a built-in role's name"),
            UnknownRole { role } => write!(f, "unknown role {role:?}"),
            RoleOnlyFromCertificate { role } => {
                write!(f, "built-in role {role:?} comes only from a certificate")
            }
            UnknownObjectType { name } => write!(f, "unknown object type {name:?}"),
            UnknownPermission { name } => {
                write!(f, "unknown permission {name:?} (expected All, Read or Write)")
            }
            EmptyList => f.write_str("empty list"),
            BadIdentity { identity, reason } => write!(f, "identity {identity:?}: {reason}"),
            IdentityInTwoPolicies { identity, first_policy } => {
                write!(f, "identity {identity} is already bound to policy {first_policy:?}")
            }
            BadPattern { pattern, problem } => write!(f, "pattern {pattern:?}: {problem}"),
        }
    }
}

impl fmt::Display for InvalidApiPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use InvalidApiPattern::*;
        match self {
            Empty => f.write_str("empty pattern"),
            TooLong { len_bytes, max_bytes } => {
                write!(f, "{len_bytes} bytes, over the {max_bytes}-byte limit")
            }
            NotVersion1 => f.write_str("does not start with /v1/"),
            DoubleStar => f.write_str("'**' is not allowed: '*' never crosses '/'"),
            TooManyWildcards { count, max } => write!(f, "{count} wildcards, over {max}"),
            EmptySegment => f.write_str("empty segment or trailing '/'"),
            ControlCharacter => f.write_str("holds a control character"),
            TooFewSegments => f.write_str("fewer segments than /v1/<api>/<op>"),
            TooManySegments => f.write_str("more segments than /v1/<api>/<op>/<argument>"),
            UnknownApi => f.write_str("names no API of the product"),
            UnknownOperation => f.write_str("names no operation of its API"),
            ArgumentNotTaken => f.write_str("gives an argument to an API that takes none"),
            Glob { position, reason } => write!(f, "at character {position}: {reason}"),
        }
    }
}

impl std::error::Error for InvalidApiPattern {}

impl fmt::Display for InvalidCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use InvalidCaller::*;
        match self {
            BadKeyIdentity => f.write_str("key identity is not 64 hex digits"),
            CommonNameTooLong { len_bytes, max_bytes } => {
                write!(f, "common name of {len_bytes} bytes is over {max_bytes}")
            }
            TwoOrganizations => f.write_str("roles name two organizations"),
            InfrastructureAndTenant => f.write_str("infrastructure and tenant roles together"),
        }
    }
}

impl std::error::Error for InvalidCaller {}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GrantError::*;
        match self {
            RequesterNotClusterAdmin => f.write_str("only a cluster admin requests access"),
            EmptyScope => f.write_str("access request names no object type"),
            NotGrantable { object } => write!(f, "object type {object} cannot be granted"),
            ZeroDuration => f.write_str("access request of zero duration"),
            DurationTooLong { duration_s, max_s } => {
                write!(f, "access of {duration_s} s is over the {max_s} s limit")
            }
            TooManyRequests { max } => write!(f, "more than {max} open access requests"),
            UnknownRequest { id } => write!(f, "no access request {id}"),
            NotPending { id } => write!(f, "access request {id} is not pending"),
            NotTenantAdminOfOrg => f.write_str("not the tenant admin of the request's tenant"),
            ApproverIsOperator => f.write_str("a cluster operator cannot approve access"),
            SelfApproval => f.write_str("the requester cannot approve its own request"),
            NotActive { id } => write!(f, "access grant {id} is not active"),
        }
    }
}

impl std::error::Error for GrantError {}

impl GrantError {
    /// What the remote caller is told.
    pub fn remote(&self) -> RemoteError {
        RemoteError::AccessDenied
    }
}

impl PolicyFileError {
    pub(crate) fn new(
        file: PolicyFileKind,
        field: &crate::authz::json::FieldPath,
        problem: PolicyFileProblem,
    ) -> PolicyFileError {
        PolicyFileError { file, field: field.as_str().to_owned(), problem }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_errors_say_nothing_more() {
        assert_eq!(RemoteError::AuthenticationFailed.to_string(), "authentication failed");
        assert_eq!(RemoteError::AccessDenied.to_string(), "access denied");
        assert_eq!(GrantError::UnknownRequest { id: 7 }.remote(), RemoteError::AccessDenied);
    }

    #[test]
    fn shorten_keeps_errors_one_short_line() {
        assert_eq!(shorten("abc"), "abc");
        let long = "ж".repeat(1000);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), 65);
        assert!(short.ends_with('…'));
    }
}
