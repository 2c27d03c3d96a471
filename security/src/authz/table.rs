//! The built-in table: which role may call which API, on which targets.
//!
//! A role not listed for an API is denied it; nothing here is a default allow. The reach
//! of an entry says which targets it covers: the cluster itself, the role's own tenant,
//! or any tenant (node-to-node work for every tenant, and tenant lifecycle).
//!
//! What this table does not do: it never lets a cluster admin or an SRE reach a tenant's
//! content (config, credentials, keys, audit, data) - the unit tests check that no entry
//! could - and it knows nothing of grants, policies or scope files (see `authz.rs`).

use crate::authz::api::{Api, Target};
use crate::role::Role;

/// A [`Role`] without its organization: the table's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoleKind {
    ClusterAdmin,
    Sre,
    TenantAdmin,
    Workload,
    Server,
    KeyServer,
    CertGranting,
}

/// Which targets a table entry covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Only [`Target::Cluster`].
    Cluster,
    /// Only the role's own tenant.
    OwnOrg,
    /// Any tenant (never the cluster).
    AnyOrg,
    /// The cluster or any tenant.
    ClusterOrAnyOrg,
}

/// The table, one row per role.
const TABLE: &[(RoleKind, &[(Api, Reach)])] = {
    use Api::*;
    use Reach::*;
    &[
        (
            RoleKind::ClusterAdmin,
            &[
                (StorageList, Cluster),
                (StorageGet, Cluster),
                (StorageStatus, Cluster),
                (StorageDrain, Cluster),
                (TenantCreate, AnyOrg),
                (TenantDelete, AnyOrg),
                (TenantList, Cluster),
                (KeyCreate, Cluster),
                (KeyImport, Cluster),
                (KeyDelete, Cluster),
                (KeyList, Cluster),
                (KeyRotate, Cluster),
                (KeyStatus, Cluster),
                (PolicyList, Cluster),
                (PolicyRead, Cluster),
                (PolicyWrite, Cluster),
                (PolicyDelete, Cluster),
                (IdentityList, Cluster),
                (IdentityDescribe, Cluster),
                (IdentityAssign, Cluster),
                (IdentityDelete, Cluster),
                (AuditExport, Cluster),
                (AdmissionMint, Cluster),
                (AccessRequest, AnyOrg),
                (AccessList, Cluster),
            ],
        ),
        (
            RoleKind::Sre,
            &[
                (StorageList, Cluster),
                (StorageGet, Cluster),
                (StorageStatus, Cluster),
                (TenantList, Cluster),
                (KeyList, Cluster),
                (KeyStatus, Cluster),
                (PolicyList, Cluster),
                (PolicyRead, Cluster),
                (IdentityList, Cluster),
                (IdentityDescribe, Cluster),
                (AuditExport, Cluster),
                (AccessList, Cluster),
            ],
        ),
        (
            RoleKind::TenantAdmin,
            &[
                (TenantConfigRead, OwnOrg),
                (TenantConfigure, OwnOrg),
                (S3CredentialsCreate, OwnOrg),
                (S3CredentialsDelete, OwnOrg),
                (S3CredentialsList, OwnOrg),
                (KeyCreate, OwnOrg),
                (KeyImport, OwnOrg),
                (KeyDelete, OwnOrg),
                (KeyList, OwnOrg),
                (KeyRotate, OwnOrg),
                (AuditExport, OwnOrg),
                (AccessApprove, OwnOrg),
                (AccessDeny, OwnOrg),
                (AccessList, OwnOrg),
            ],
        ),
        (
            RoleKind::Workload,
            &[
                (ChunkPut, OwnOrg),
                (ChunkGet, OwnOrg),
                (ObjectPut, OwnOrg),
                (ObjectGet, OwnOrg),
                (ObjectDelete, OwnOrg),
                (ObjectList, OwnOrg),
            ],
        ),
        (
            RoleKind::Server,
            &[
                (ReplicaReplicate, Cluster),
                (ReplicaRepair, Cluster),
                (RaftAppend, Cluster),
                (RaftVote, Cluster),
                (RaftSnapshot, Cluster),
                (AuditAppend, ClusterOrAnyOrg),
                (KeyGenerate, ClusterOrAnyOrg),
                (KeyDecrypt, ClusterOrAnyOrg),
                (KeyFetch, Cluster),
            ],
        ),
        (RoleKind::KeyServer, &[(AuditAppend, ClusterOrAnyOrg)]),
        (RoleKind::CertGranting, &[(AdmissionRequest, Cluster), (AdmissionRenew, Cluster)]),
    ]
};

impl RoleKind {
    pub const ALL: [RoleKind; 7] = [
        RoleKind::ClusterAdmin,
        RoleKind::Sre,
        RoleKind::TenantAdmin,
        RoleKind::Workload,
        RoleKind::Server,
        RoleKind::KeyServer,
        RoleKind::CertGranting,
    ];

    pub fn of(role: &Role) -> RoleKind {
        match role {
            Role::ClusterAdmin => RoleKind::ClusterAdmin,
            Role::Sre => RoleKind::Sre,
            Role::TenantAdmin { .. } => RoleKind::TenantAdmin,
            Role::Workload { .. } => RoleKind::Workload,
            Role::Server => RoleKind::Server,
            Role::KeyServer => RoleKind::KeyServer,
            Role::CertGranting => RoleKind::CertGranting,
        }
    }

    /// The name a scope file uses for this built-in role.
    pub const fn name(self) -> &'static str {
        match self {
            RoleKind::ClusterAdmin => "cluster-admin",
            RoleKind::Sre => "sre",
            RoleKind::TenantAdmin => "tenant-admin",
            RoleKind::Workload => "workload",
            RoleKind::Server => "server",
            RoleKind::KeyServer => "keyserver",
            RoleKind::CertGranting => "cert-granting",
        }
    }

    pub fn from_name(name: &str) -> Option<RoleKind> {
        RoleKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// True for the infrastructure administrators, who never reach tenant content
    /// without an access grant.
    pub fn is_cluster_operator(self) -> bool {
        matches!(self, RoleKind::ClusterAdmin | RoleKind::Sre)
    }
}

/// The table's answer for one role: `Some(reach)` if the role may call `api` somewhere.
pub fn reach_of(kind: RoleKind, api: Api) -> Option<Reach> {
    let (_, row) = TABLE.iter().find(|(row_kind, _)| *row_kind == kind)?;
    row.iter().find(|(row_api, _)| *row_api == api).map(|(_, reach)| *reach)
}

/// True if a tenant's own roles (its admin or its workloads) may call `api`: what an
/// access grant can ever extend to a cluster admin.
pub fn tenant_roles_reach(api: Api) -> bool {
    [RoleKind::TenantAdmin, RoleKind::Workload]
        .into_iter()
        .any(|kind| reach_of(kind, api).is_some())
}

/// True if the built-in table lets `role` call `api` on `target`.
pub fn allows(role: &Role, api: Api, target: &Target) -> bool {
    let kind = RoleKind::of(role);
    let Some(reach) = reach_of(kind, api) else { return false };
    let covered = match (reach, target) {
        (Reach::Cluster | Reach::ClusterOrAnyOrg, Target::Cluster) => true,
        (Reach::AnyOrg | Reach::ClusterOrAnyOrg, Target::Tenant(_)) => true,
        (Reach::OwnOrg, Target::Tenant(org)) => role.org() == Some(org),
        _ => false,
    };
    // The zero-trust rule, checked again where it matters most.
    let operator_on_content = kind.is_cluster_operator()
        && api.spec().tenant_content
        && matches!(target, Target::Tenant(_));
    covered && !operator_on_content
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::api::Targets;

    #[test]
    fn one_row_per_role_and_no_api_twice_in_a_row() {
        for kind in RoleKind::ALL {
            let rows = TABLE.iter().filter(|(row_kind, _)| *row_kind == kind).count();
            assert_eq!(rows, 1, "{kind:?}");
            assert_eq!(RoleKind::from_name(kind.name()), Some(kind));
        }
        for (kind, row) in TABLE {
            for (index, (api, _)) in row.iter().enumerate() {
                let again = row[index + 1..].iter().any(|(other, _)| other == api);
                assert!(!again, "{kind:?} lists {api} twice");
            }
        }
    }

    #[test]
    fn every_entry_fits_its_api_targets() {
        for (kind, row) in TABLE {
            for (api, reach) in *row {
                let targets = api.spec().targets;
                let fits = match reach {
                    Reach::Cluster => targets.admit(&Target::Cluster),
                    Reach::OwnOrg | Reach::AnyOrg => {
                        targets == Targets::Tenant || targets == Targets::ClusterOrTenant
                    }
                    Reach::ClusterOrAnyOrg => targets == Targets::ClusterOrTenant,
                };
                assert!(fits, "{kind:?} {api} {reach:?} against {targets:?}");
                // Only tenant roles have an org of their own.
                let tenant_role = matches!(kind, RoleKind::TenantAdmin | RoleKind::Workload);
                assert_eq!(*reach == Reach::OwnOrg, tenant_role, "{kind:?} {api}");
            }
        }
    }

    #[test]
    fn no_entry_lets_an_operator_reach_tenant_content() {
        for kind in [RoleKind::ClusterAdmin, RoleKind::Sre] {
            for api in Api::ALL {
                if let Some(reach) = reach_of(kind, api) {
                    let tenant_reach = matches!(reach, Reach::AnyOrg | Reach::ClusterOrAnyOrg);
                    assert!(
                        !(tenant_reach && api.spec().tenant_content),
                        "{kind:?} reaches tenant content through {api}"
                    );
                }
            }
        }
    }

    #[test]
    fn sre_only_reads() {
        for api in Api::ALL {
            if reach_of(RoleKind::Sre, api).is_some() {
                assert_eq!(api.spec().access, crate::authz::api::Access::Read, "{api}");
            }
        }
    }

    #[test]
    fn cert_granting_reaches_only_admission_certificates() {
        for api in Api::ALL {
            let allowed = reach_of(RoleKind::CertGranting, api).is_some();
            let expected = matches!(api, Api::AdmissionRequest | Api::AdmissionRenew);
            assert_eq!(allowed, expected, "{api}");
        }
    }
}
