//! The roles a peer can hold, shared by identities (which derive a role from a certificate)
//! and authorization (which decides what a role may call).

use std::fmt;

/// The organizational units of the cluster CA's certificate hierarchy (seed 000).
pub mod ou {
    /// Storage nodes; node-to-node operations.
    pub const SERVER: &str = "kiseki-server";
    /// The key manager.
    pub const KEYSERVER: &str = "kiseki-keyserver";
    /// Cluster administrators.
    pub const ADMIN: &str = "kiseki-admin";
    /// Read-only site reliability engineers.
    pub const SRE: &str = "kiseki-sre";
    /// Certificate-granting certificates from admission (seed 003): may only request
    /// role certificates and renewals.
    pub const CERT_GRANTING: &str = "kiseki-cgc";
    /// Tenant certificates are `tenant-{org}`.
    pub const TENANT_PREFIX: &str = "tenant-";
}

/// A tenant organization's id as it appears in OUs, SPIFFE ids and S3 credentials:
/// 1 to 63 bytes of lowercase ASCII letters, digits and inner hyphens (a DNS label), so
/// it can never smuggle a path separator or a glob character into an API path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(String);

/// Why a string is not an [`OrgId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidOrgId {
    Empty,
    TooLong { len_bytes: usize, max_bytes: usize },
    BadCharacter,
    EdgeHyphen,
}

impl OrgId {
    pub const MAX_BYTES: usize = 63;

    pub fn parse(text: &str) -> Result<OrgId, InvalidOrgId> {
        if text.is_empty() {
            return Err(InvalidOrgId::Empty);
        }
        if text.len() > Self::MAX_BYTES {
            return Err(InvalidOrgId::TooLong {
                len_bytes: text.len(),
                max_bytes: Self::MAX_BYTES,
            });
        }
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
        if !text.bytes().all(allowed) {
            return Err(InvalidOrgId::BadCharacter);
        }
        if text.starts_with('-') || text.ends_with('-') {
            return Err(InvalidOrgId::EdgeHyphen);
        }
        Ok(OrgId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for InvalidOrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidOrgId::Empty => f.write_str("empty organization id"),
            InvalidOrgId::TooLong { len_bytes, max_bytes } => {
                write!(f, "organization id of {len_bytes} bytes is over {max_bytes}")
            }
            InvalidOrgId::BadCharacter => {
                f.write_str("organization id may hold only a-z, 0-9 and '-'")
            }
            InvalidOrgId::EdgeHyphen => f.write_str("organization id starts or ends with '-'"),
        }
    }
}

impl std::error::Error for InvalidOrgId {}

/// What a peer is allowed to be. A certificate gives one of these through its OU (or a
/// SPIFFE id gives `Workload`); `TenantAdmin` comes only from a scope file or the
/// tenant's configuration naming a tenant certificate's identity, never from the
/// certificate alone. A peer whose certificate names no known OU still has an identity
/// (its fingerprint) but no role: everything is denied to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// `kiseki-admin`: infrastructure; never tenant data, config or audit without a grant.
    ClusterAdmin,
    /// `kiseki-sre`: the cluster admin's read-only views.
    Sre,
    /// A tenant's administrator: tenant-scoped control and audit export.
    TenantAdmin { org: OrgId },
    /// `tenant-{org}` or a SPIFFE workload: the tenant's data path.
    Workload { org: OrgId },
    /// `kiseki-server`: node-to-node operations.
    Server,
    /// `kiseki-keyserver`: the key manager.
    KeyServer,
    /// `kiseki-cgc`: a certificate-granting certificate from admission.
    CertGranting,
}

impl Role {
    /// The tenant this role acts for, if any.
    pub fn org(&self) -> Option<&OrgId> {
        match self {
            Role::TenantAdmin { org } | Role::Workload { org } => Some(org),
            _ => None,
        }
    }

    /// The role a certificate's OU gives, or `None` for an OU the hierarchy does not name.
    pub fn from_ou(unit: &str) -> Option<Role> {
        match unit {
            ou::SERVER => Some(Role::Server),
            ou::KEYSERVER => Some(Role::KeyServer),
            ou::ADMIN => Some(Role::ClusterAdmin),
            ou::SRE => Some(Role::Sre),
            ou::CERT_GRANTING => Some(Role::CertGranting),
            _ => {
                let org = unit.strip_prefix(ou::TENANT_PREFIX)?;
                OrgId::parse(org).ok().map(|org| Role::Workload { org })
            }
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::ClusterAdmin => f.write_str("cluster-admin"),
            Role::Sre => f.write_str("sre"),
            Role::TenantAdmin { org } => write!(f, "tenant-admin({org})"),
            Role::Workload { org } => write!(f, "workload({org})"),
            Role::Server => f.write_str("server"),
            Role::KeyServer => f.write_str("keyserver"),
            Role::CertGranting => f.write_str("cert-granting"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ou_maps_to_role() {
        assert_eq!(Role::from_ou("kiseki-server"), Some(Role::Server));
        assert_eq!(Role::from_ou("kiseki-keyserver"), Some(Role::KeyServer));
        assert_eq!(Role::from_ou("kiseki-admin"), Some(Role::ClusterAdmin));
        assert_eq!(Role::from_ou("kiseki-sre"), Some(Role::Sre));
        assert_eq!(Role::from_ou("kiseki-cgc"), Some(Role::CertGranting));
        let acme = OrgId::parse("acme-corp").unwrap();
        assert_eq!(Role::from_ou("tenant-acme-corp"), Some(Role::Workload { org: acme }));
    }

    #[test]
    fn unknown_or_malformed_ou_has_no_role() {
        for unit in ["", "kiseki", "tenant-", "tenant-Acme", "tenant-a/b", "tenant--x", "admin"] {
            assert_eq!(Role::from_ou(unit), None, "{unit:?}");
        }
    }

    #[test]
    fn org_id_rules() {
        assert!(OrgId::parse("a").is_ok());
        assert_eq!(OrgId::parse(""), Err(InvalidOrgId::Empty));
        assert!(matches!(OrgId::parse(&"a".repeat(64)), Err(InvalidOrgId::TooLong { .. })));
        assert_eq!(OrgId::parse("a*"), Err(InvalidOrgId::BadCharacter));
        assert_eq!(OrgId::parse("-a"), Err(InvalidOrgId::EdgeHyphen));
    }
}
