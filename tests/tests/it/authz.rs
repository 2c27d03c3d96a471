//! Authorization through the public API: every (role, API path, target) of the built-in
//! table against an expectation written here from the product's rules (seed 000's roles
//! table, the zero-trust admin boundary), not copied from the table; and the cluster
//! admin's access to every kind of tenant content, before, during and after a grant.

use kiseki_security::OrgId;
use kiseki_security::Role;
use kiseki_security::authz::{
    AllowedBy, Api, ApiPath, Argument, AuditAction, Authorizer, Caller, DenyReason, GrantScope,
    ObjectType, Permission, Target,
};

/// Where an expectation says a role may call a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    /// The cluster itself.
    Cluster,
    /// The role's own tenant.
    Own,
    /// Any tenant.
    AnyTenant,
    /// The cluster or any tenant.
    Anywhere,
}

use Where::*;

/// Every API path of the product, written out by hand.
const PRODUCT_PATHS: &[&str] = &[
    "/v1/storage/list",
    "/v1/storage/get",
    "/v1/storage/status",
    "/v1/storage/drain",
    "/v1/tenant/create",
    "/v1/tenant/delete",
    "/v1/tenant/list",
    "/v1/tenant/config",
    "/v1/tenant/configure",
    "/v1/s3-credentials/create",
    "/v1/s3-credentials/delete",
    "/v1/s3-credentials/list",
    "/v1/key/create",
    "/v1/key/import",
    "/v1/key/delete",
    "/v1/key/list",
    "/v1/key/rotate",
    "/v1/key/status",
    "/v1/key/fetch",
    "/v1/key/generate",
    "/v1/key/decrypt",
    "/v1/policy/list",
    "/v1/policy/read",
    "/v1/policy/write",
    "/v1/policy/delete",
    "/v1/identity/list",
    "/v1/identity/describe",
    "/v1/identity/assign",
    "/v1/identity/delete",
    "/v1/audit/export",
    "/v1/audit/append",
    "/v1/chunk/put",
    "/v1/chunk/get",
    "/v1/object/put",
    "/v1/object/get",
    "/v1/object/delete",
    "/v1/object/list",
    "/v1/replica/replicate",
    "/v1/replica/repair",
    "/v1/raft/append",
    "/v1/raft/vote",
    "/v1/raft/snapshot",
    "/v1/admission/mint",
    "/v1/admission/request",
    "/v1/admission/renew",
    "/v1/access/request",
    "/v1/access/approve",
    "/v1/access/deny",
    "/v1/access/list",
];

/// Infrastructure: devices, tenant lifecycle, the cluster's own keys, authorization
/// management, the system audit, admission tokens, and asking tenants for access. Never a
/// tenant's config, credentials, keys, audit or data.
const CLUSTER_ADMIN: &[(&str, Where)] = &[
    ("/v1/storage/list", Cluster),
    ("/v1/storage/get", Cluster),
    ("/v1/storage/status", Cluster),
    ("/v1/storage/drain", Cluster),
    ("/v1/tenant/create", AnyTenant),
    ("/v1/tenant/delete", AnyTenant),
    ("/v1/tenant/list", Cluster),
    ("/v1/key/create", Cluster),
    ("/v1/key/import", Cluster),
    ("/v1/key/delete", Cluster),
    ("/v1/key/list", Cluster),
    ("/v1/key/rotate", Cluster),
    ("/v1/key/status", Cluster),
    ("/v1/policy/list", Cluster),
    ("/v1/policy/read", Cluster),
    ("/v1/policy/write", Cluster),
    ("/v1/policy/delete", Cluster),
    ("/v1/identity/list", Cluster),
    ("/v1/identity/describe", Cluster),
    ("/v1/identity/assign", Cluster),
    ("/v1/identity/delete", Cluster),
    ("/v1/audit/export", Cluster),
    ("/v1/admission/mint", Cluster),
    ("/v1/access/request", AnyTenant),
    ("/v1/access/list", Cluster),
];

/// The cluster admin's read-only views (List*, Get*, Status).
const SRE: &[(&str, Where)] = &[
    ("/v1/storage/list", Cluster),
    ("/v1/storage/get", Cluster),
    ("/v1/storage/status", Cluster),
    ("/v1/tenant/list", Cluster),
    ("/v1/key/list", Cluster),
    ("/v1/key/status", Cluster),
    ("/v1/policy/list", Cluster),
    ("/v1/policy/read", Cluster),
    ("/v1/identity/list", Cluster),
    ("/v1/identity/describe", Cluster),
    ("/v1/audit/export", Cluster),
    ("/v1/access/list", Cluster),
];

/// Its own tenant's control plane, keys, credentials and audit; answers access requests.
/// Not the data path.
const TENANT_ADMIN: &[(&str, Where)] = &[
    ("/v1/tenant/config", Own),
    ("/v1/tenant/configure", Own),
    ("/v1/s3-credentials/create", Own),
    ("/v1/s3-credentials/delete", Own),
    ("/v1/s3-credentials/list", Own),
    ("/v1/key/create", Own),
    ("/v1/key/import", Own),
    ("/v1/key/delete", Own),
    ("/v1/key/list", Own),
    ("/v1/key/rotate", Own),
    ("/v1/audit/export", Own),
    ("/v1/access/approve", Own),
    ("/v1/access/deny", Own),
    ("/v1/access/list", Own),
];

/// Its own tenant's data path.
const WORKLOAD: &[(&str, Where)] = &[
    ("/v1/chunk/put", Own),
    ("/v1/chunk/get", Own),
    ("/v1/object/put", Own),
    ("/v1/object/get", Own),
    ("/v1/object/delete", Own),
    ("/v1/object/list", Own),
];

/// Node to node: replication, repair, Raft; audit records; DEKs from the key manager for
/// the system and every tenant.
const SERVER: &[(&str, Where)] = &[
    ("/v1/replica/replicate", Cluster),
    ("/v1/replica/repair", Cluster),
    ("/v1/raft/append", Cluster),
    ("/v1/raft/vote", Cluster),
    ("/v1/raft/snapshot", Cluster),
    ("/v1/audit/append", Anywhere),
    ("/v1/key/generate", Anywhere),
    ("/v1/key/decrypt", Anywhere),
    // A master-key epoch into the node's own locked memory; tenant KEKs never leave.
    ("/v1/key/fetch", Cluster),
];

/// The key manager writes key-lifecycle audit records (the system's and tenants').
const KEYSERVER: &[(&str, Where)] = &[("/v1/audit/append", Anywhere)];

/// Admission: role certificates and renewals, nothing else.
const CERT_GRANTING: &[(&str, Where)] =
    &[("/v1/admission/request", Cluster), ("/v1/admission/renew", Cluster)];

/// What a cluster admin never reaches on a tenant without a grant: the tenant's config,
/// credentials, keys, audit and data.
const TENANT_CONTENT: &[&str] = &[
    "/v1/tenant/config",
    "/v1/tenant/configure",
    "/v1/s3-credentials/create",
    "/v1/s3-credentials/delete",
    "/v1/s3-credentials/list",
    "/v1/key/create",
    "/v1/key/import",
    "/v1/key/delete",
    "/v1/key/list",
    "/v1/key/rotate",
    "/v1/key/generate",
    "/v1/key/decrypt",
    "/v1/audit/export",
    "/v1/audit/append",
    "/v1/chunk/put",
    "/v1/chunk/get",
    "/v1/object/put",
    "/v1/object/get",
    "/v1/object/delete",
    "/v1/object/list",
];

const KEY_A: &str = "a000000000000000000000000000000000000000000000000000000000000000";
const KEY_B: &str = "b000000000000000000000000000000000000000000000000000000000000000";
const T0: u64 = 1_900_000_000;

fn org(name: &str) -> OrgId {
    OrgId::parse(name).unwrap()
}

fn targets() -> [Target; 3] {
    [Target::Cluster, Target::Tenant(org("acme")), Target::Tenant(org("globex"))]
}

/// A well-formed path for `api` on `target`: an org argument names the target's tenant.
fn path_for(api: Api, target: &Target) -> ApiPath {
    let argument = match (api.spec().argument, target) {
        (Argument::None, _) => None,
        (Argument::Name | Argument::OptionalName, _) => Some("item-1"),
        (Argument::Org, Target::Tenant(org)) => Some(org.as_str()),
        (Argument::Org, Target::Cluster) => Some("acme"),
    };
    ApiPath::new(api, argument).unwrap()
}

fn expected(rows: &[(&str, Where)], api: Api, target: &Target, own: Option<&OrgId>) -> bool {
    let prefix = api.path_prefix();
    let Some((_, place)) = rows.iter().find(|(path, _)| *path == prefix) else {
        return false;
    };
    match (place, target) {
        (Cluster | Anywhere, Target::Cluster) => true,
        (AnyTenant | Anywhere, Target::Tenant(_)) => true,
        (Own, Target::Tenant(org)) => Some(org) == own,
        _ => false,
    }
}

#[test]
fn the_product_paths_are_the_ones_written_here() {
    let mut from_api: Vec<String> = Api::ALL.iter().map(|api| api.path_prefix()).collect();
    let mut written: Vec<String> = PRODUCT_PATHS.iter().map(|path| path.to_string()).collect();
    from_api.sort();
    written.sort();
    assert_eq!(from_api, written);
    for rows in [CLUSTER_ADMIN, SRE, TENANT_ADMIN, WORKLOAD, SERVER, KEYSERVER, CERT_GRANTING] {
        for (path, _) in rows {
            assert!(PRODUCT_PATHS.contains(path), "{path} is not a product path");
        }
    }
}

#[test]
fn every_role_and_api_path_of_the_built_in_table() {
    let authorizer = Authorizer::default();
    let acme = org("acme");
    let cases: [(Role, &[(&str, Where)]); 7] = [
        (Role::ClusterAdmin, CLUSTER_ADMIN),
        (Role::Sre, SRE),
        (Role::TenantAdmin { org: acme.clone() }, TENANT_ADMIN),
        (Role::Workload { org: acme.clone() }, WORKLOAD),
        (Role::Server, SERVER),
        (Role::KeyServer, KEYSERVER),
        (Role::CertGranting, CERT_GRANTING),
    ];
    let mut checked = 0;
    let mut allowed_count = 0;
    for (role, rows) in &cases {
        let caller = Caller::new("peer", KEY_A, [role.clone()]).unwrap();
        for api in Api::ALL {
            for target in targets() {
                let path = path_for(api, &target);
                let decision = authorizer.authorize(&caller, path.as_str(), &target, T0);
                let want = expected(rows, api, &target, role.org());
                assert_eq!(decision.is_allowed(), want, "{role} {path} on {target}");
                if want {
                    assert_eq!(decision.allowed_by(), Some(&AllowedBy::Role(role.clone())));
                    allowed_count += 1;
                } else {
                    assert!(decision.deny_reason().is_some());
                }
                // The record names the caller, the path and the target.
                let audit = decision.audit_event();
                assert_eq!(audit.time_unix_s, T0);
                assert_eq!(audit.actor.roles, std::slice::from_ref(role));
                assert_eq!(audit.target, target);
                assert_eq!(audit.action, AuditAction::Call { path: path.as_str().to_owned() });
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 7 * Api::ALL.len() * 3);
    // Rows times the targets each row covers among (cluster, acme, globex).
    let covered = |rows: &[(&str, Where)]| -> usize {
        rows.iter()
            .map(|(_, place)| match place {
                Cluster | Own => 1,
                AnyTenant => 2,
                Anywhere => 3,
            })
            .sum()
    };
    let want: usize = cases.iter().map(|(_, rows)| covered(rows)).sum();
    assert_eq!(allowed_count, want);
}

#[test]
fn a_tenant_peer_never_reaches_another_tenant() {
    let authorizer = Authorizer::default();
    let globex = Target::Tenant(org("globex"));
    for role in [Role::Workload { org: org("acme") }, Role::TenantAdmin { org: org("acme") }] {
        let caller = Caller::new("peer", KEY_A, [role.clone()]).unwrap();
        for api in Api::ALL {
            let path = path_for(api, &globex);
            let decision = authorizer.authorize(&caller, path.as_str(), &globex, T0);
            assert!(!decision.is_allowed(), "{role} {path}");
        }
        let own = Target::Tenant(org("acme"));
        let data = if matches!(role, Role::Workload { .. }) {
            "/v1/object/get/b"
        } else {
            "/v1/audit/export"
        };
        assert!(authorizer.authorize(&caller, data, &own, T0).is_allowed());
        let other = authorizer.authorize(&caller, data, &globex, T0);
        assert_eq!(other.deny_reason(), Some(&DenyReason::OtherTenant));
    }
}

#[test]
fn the_cluster_admin_and_every_kind_of_tenant_content() {
    let mut authorizer = Authorizer::default();
    let admin = Caller::new("root", KEY_A, [Role::ClusterAdmin]).unwrap();
    let acme_admin = Caller::new("boss", KEY_B, [Role::TenantAdmin { org: org("acme") }]).unwrap();
    let acme = Target::Tenant(org("acme"));
    let globex = Target::Tenant(org("globex"));
    let content: Vec<Api> = Api::ALL.into_iter().filter(|api| api.spec().tenant_content).collect();
    let mut content_paths: Vec<String> = content.iter().map(|api| api.path_prefix()).collect();
    content_paths.sort();
    let mut written: Vec<&str> = TENANT_CONTENT.to_vec();
    written.sort();
    assert_eq!(content_paths, written);

    let calls = |authorizer: &Authorizer, target: &Target, now: u64| -> Vec<bool> {
        let decide = |api: &Api| {
            let path = path_for(*api, target);
            authorizer.authorize(&admin, path.as_str(), target, now).is_allowed()
        };
        content.iter().map(decide).collect()
    };
    assert!(calls(&authorizer, &acme, T0).iter().all(|allowed| !allowed));

    let grantable: Vec<ObjectType> =
        ObjectType::ALL.into_iter().filter(|object| object.grantable()).collect();
    let scope = GrantScope::new(org("acme"), grantable, Permission::All);
    let id = authorizer.request_access(&admin, scope, 600, T0).result.unwrap();
    assert!(calls(&authorizer, &acme, T0 + 1).iter().all(|allowed| !allowed), "pending");
    authorizer.approve_access(id, &acme_admin, T0 + 1).result.unwrap();

    // During the grant: what the tenant's own admin and workloads can do to its content;
    // what only storage nodes do (DEKs, audit appends) stays theirs.
    for (api, allowed) in content.iter().zip(calls(&authorizer, &acme, T0 + 2)) {
        let server_only = matches!(api, Api::AuditAppend | Api::KeyGenerate | Api::KeyDecrypt);
        assert_eq!(allowed, !server_only, "{api} under an acme grant");
    }
    assert!(calls(&authorizer, &globex, T0 + 2).iter().all(|allowed| !allowed));
    // After it: denied again.
    assert!(calls(&authorizer, &acme, T0 + 1 + 600).iter().all(|allowed| !allowed));
}
