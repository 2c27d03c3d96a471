//! Who is asking: what authorization knows of an authenticated peer.
//!
//! A [`Caller`] is built by the server from a verified identity (the identity module's
//! work, not this one's): the certificate's common name, its key identity (SHA-256 of the
//! public key, the KES identity) and the roles its certificate gives. None of it is
//! secret; all of it goes into audit records.
//!
//! Invariants: the key identity is 64 lowercase hex digits; tenant roles all name one
//! organization; infrastructure roles (cluster admin, SRE, server, keyserver, cert-
//! granting) never sit beside tenant roles; no role is listed twice.

use std::fmt;

use crate::authz::error::InvalidCaller;
use crate::authz::kes::is_key_identity;
use crate::constants::COMMON_NAME_MAX_BYTES;
use crate::role::{OrgId, Role};

/// An authenticated peer as authorization sees it; see the module's invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    common_name: String,
    key_identity: String,
    roles: Vec<Role>,
}

impl Caller {
    pub fn new(
        common_name: &str,
        key_identity: &str,
        roles: impl IntoIterator<Item = Role>,
    ) -> Result<Caller, InvalidCaller> {
        if common_name.len() > COMMON_NAME_MAX_BYTES {
            return Err(InvalidCaller::CommonNameTooLong {
                len_bytes: common_name.len(),
                max_bytes: COMMON_NAME_MAX_BYTES,
            });
        }
        if !is_key_identity(key_identity) {
            return Err(InvalidCaller::BadKeyIdentity);
        }
        let mut unique: Vec<Role> = Vec::new();
        for role in roles {
            if !unique.contains(&role) {
                unique.push(role);
            }
        }
        let mut orgs = unique.iter().filter_map(Role::org);
        let first_org = orgs.next();
        if orgs.any(|org| Some(org) != first_org) {
            return Err(InvalidCaller::TwoOrganizations);
        }
        if first_org.is_some() && unique.iter().any(|role| role.org().is_none()) {
            return Err(InvalidCaller::InfrastructureAndTenant);
        }
        Ok(Caller {
            common_name: common_name.to_owned(),
            key_identity: key_identity.to_ascii_lowercase(),
            roles: unique,
        })
    }

    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// SHA-256 of the peer's public key, 64 lowercase hex digits.
    pub fn key_identity(&self) -> &str {
        &self.key_identity
    }

    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// The tenant the peer's certificate belongs to, if any.
    pub fn org(&self) -> Option<&OrgId> {
        self.roles.iter().find_map(Role::org)
    }

    pub fn has_role(&self, role: &Role) -> bool {
        self.roles.contains(role)
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self.common_name, &self.key_identity[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3ECFCDF38FCBE141AE26A1030F81E96B753365A46760AE6B578698A97C59FD22";

    fn org(name: &str) -> OrgId {
        OrgId::parse(name).unwrap()
    }

    #[test]
    fn key_identity_is_normalized_and_checked() {
        let caller = Caller::new("a", ID, [Role::Server]).unwrap();
        assert_eq!(caller.key_identity(), ID.to_ascii_lowercase());
        for bad in ["", "abc", &ID[1..], &format!("{ID}0"), &ID.replace('E', "g")] {
            assert_eq!(
                Caller::new("a", bad, [Role::Server]),
                Err(InvalidCaller::BadKeyIdentity),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn one_tenant_and_never_with_infrastructure() {
        let acme = org("acme");
        let roles = [Role::Workload { org: acme.clone() }, Role::TenantAdmin { org: acme.clone() }];
        assert_eq!(Caller::new("a", ID, roles).unwrap().org(), Some(&acme));
        let two = [Role::Workload { org: acme.clone() }, Role::TenantAdmin { org: org("b") }];
        assert_eq!(Caller::new("a", ID, two), Err(InvalidCaller::TwoOrganizations));
        let mixed = [Role::Workload { org: acme }, Role::ClusterAdmin];
        assert_eq!(Caller::new("a", ID, mixed), Err(InvalidCaller::InfrastructureAndTenant));
    }

    #[test]
    fn duplicate_roles_collapse_and_no_role_is_allowed() {
        let caller = Caller::new("a", ID, [Role::Sre, Role::Sre]).unwrap();
        assert_eq!(caller.roles(), [Role::Sre]);
        assert!(Caller::new("a", ID, []).unwrap().roles().is_empty());
        let long = "x".repeat(COMMON_NAME_MAX_BYTES + 1);
        assert!(matches!(Caller::new(&long, ID, []), Err(InvalidCaller::CommonNameTooLong { .. })));
    }
}
