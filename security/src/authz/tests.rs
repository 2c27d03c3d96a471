//! The authorizer's rules, source by source: grants and the cluster admin's limit, KES
//! policies, policy and scope files, the certificate-granting confinement, audit records.
//! The full (role, API path) matrix of the built-in table is in the integration tests
//! (`tests/tests/it/authz.rs`), written from the product's rules, not from the table.

use super::*;

const ADMIN_KEY: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ADMIN2_KEY: &str = "abababababababababababababababababababababababababababababababab";
const ACME_ADMIN_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const GLOBEX_ADMIN_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const WORKLOAD_KEY: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const APP_KEY: &str = "4444444444444444444444444444444444444444444444444444444444444444";
const CGC_KEY: &str = "5555555555555555555555555555555555555555555555555555555555555555";

const HOUR_S: u64 = 3600;
const T0: u64 = 1_800_000_000;

fn org(name: &str) -> OrgId {
    OrgId::parse(name).unwrap()
}

fn acme() -> Target {
    Target::Tenant(org("acme"))
}

fn globex() -> Target {
    Target::Tenant(org("globex"))
}

fn cluster_admin() -> Caller {
    Caller::new("root", ADMIN_KEY, [Role::ClusterAdmin]).unwrap()
}

fn tenant_admin(name: &str, key: &str) -> Caller {
    Caller::new("boss", key, [Role::TenantAdmin { org: org(name) }]).unwrap()
}

fn workload(name: &str) -> Caller {
    Caller::new("job-1", WORKLOAD_KEY, [Role::Workload { org: org(name) }]).unwrap()
}

fn allowed(authorizer: &Authorizer, caller: &Caller, path: &str, target: &Target) -> bool {
    authorizer.authorize(caller, path, target, T0).is_allowed()
}

fn scope(objects: &[ObjectType], permission: Permission) -> GrantScope {
    GrantScope::new(org("acme"), objects.iter().copied(), permission)
}

/// A pending request from the cluster admin for acme's objects, for `duration_s`.
fn requested(authorizer: &mut Authorizer, scope: GrantScope, duration_s: u64) -> u64 {
    let step = authorizer.request_access(&cluster_admin(), scope, duration_s, T0);
    assert!(step.audit.allowed(), "{}", step.audit);
    step.result.unwrap()
}

#[test]
fn cluster_admin_reaches_tenant_content_only_through_an_approved_grant() {
    let mut authorizer = Authorizer::default();
    let admin = cluster_admin();
    let read_object = "/v1/object/get/bucket";
    let denied = authorizer.authorize(&admin, read_object, &acme(), T0);
    assert!(!denied.is_allowed());
    assert_eq!(denied.deny_reason(), Some(&DenyReason::NoGrant));
    assert_eq!(denied.remote_result(), Err(RemoteError::AccessDenied));

    let id = requested(&mut authorizer, scope(&[ObjectType::Object], Permission::Read), HOUR_S);
    // Pending is not approved.
    assert!(!allowed(&authorizer, &admin, read_object, &acme()));

    let approval = authorizer.approve_access(id, &tenant_admin("acme", ACME_ADMIN_KEY), T0 + 10);
    assert_eq!(approval.result, Ok(()));
    assert!(approval.audit.allowed());

    let at = |t: u64| authorizer.authorize(&admin, read_object, &acme(), t);
    assert_eq!(at(T0 + 10).allowed_by(), Some(&AllowedBy::Grant { request: id }));
    assert!(at(T0 + 10 + HOUR_S - 1).is_allowed());
    // Expired at exactly approval + duration, and after.
    assert_eq!(at(T0 + 10 + HOUR_S).deny_reason(), Some(&DenyReason::NoGrant));
    assert!(!at(T0 + 100 * HOUR_S).is_allowed());
    // Before the approval (a clock read earlier) it is not active either.
    assert!(!at(T0 + 9).is_allowed());
}

#[test]
fn a_grant_covers_only_its_scope() {
    let mut authorizer = Authorizer::default();
    let admin = cluster_admin();
    let id = requested(&mut authorizer, scope(&[ObjectType::Object], Permission::Read), HOUR_S);
    let step = authorizer.approve_access(id, &tenant_admin("acme", ACME_ADMIN_KEY), T0);
    assert_eq!(step.result, Ok(()));
    let now = T0 + 1;
    let check = |path: &str, target: &Target| authorizer.authorize(&admin, path, target, now);
    assert!(check("/v1/object/get/b", &acme()).is_allowed());
    assert!(check("/v1/object/list/b", &acme()).is_allowed());
    // Write to the same object type: the grant is read-only.
    assert!(!check("/v1/object/put/b", &acme()).is_allowed());
    assert!(!check("/v1/object/delete/b", &acme()).is_allowed());
    // Another object type of the same tenant.
    assert!(!check("/v1/chunk/get/c", &acme()).is_allowed());
    assert!(!check("/v1/tenant/config/acme", &acme()).is_allowed());
    assert!(!check("/v1/audit/export", &acme()).is_allowed());
    // The same object type of another tenant.
    assert_eq!(check("/v1/object/get/b", &globex()).deny_reason(), Some(&DenyReason::NoGrant));
    // Another cluster admin does not share the grant.
    let other = Caller::new("root2", ADMIN2_KEY, [Role::ClusterAdmin]).unwrap();
    assert!(!authorizer.authorize(&other, "/v1/object/get/b", &acme(), now).is_allowed());
    // An SRE never uses grants.
    let sre = Caller::new("sre", ADMIN_KEY, [Role::Sre]).unwrap();
    assert!(!authorizer.authorize(&sre, "/v1/object/get/b", &acme(), now).is_allowed());
}

#[test]
fn write_and_all_grants() {
    let mut authorizer = Authorizer::default();
    let admin = cluster_admin();
    let objects = [ObjectType::TenantConfig, ObjectType::Audit];
    let id = requested(&mut authorizer, scope(&objects, Permission::Write), HOUR_S);
    assert_eq!(
        authorizer.approve_access(id, &tenant_admin("acme", ACME_ADMIN_KEY), T0).result,
        Ok(())
    );
    assert!(allowed(&authorizer, &admin, "/v1/tenant/configure/acme", &acme()));
    assert!(!allowed(&authorizer, &admin, "/v1/tenant/config/acme", &acme()));
    let id = requested(&mut authorizer, scope(&[ObjectType::Audit], Permission::All), HOUR_S);
    assert_eq!(
        authorizer.approve_access(id, &tenant_admin("acme", ACME_ADMIN_KEY), T0).result,
        Ok(())
    );
    assert!(allowed(&authorizer, &admin, "/v1/audit/export", &acme()));
    // The grant does not widen the org argument check: acme's grant, globex's config.
    assert!(!allowed(&authorizer, &admin, "/v1/tenant/configure/globex", &acme()));
}

#[test]
fn only_the_tenants_own_admin_approves() {
    let mut authorizer = Authorizer::default();
    let id = requested(&mut authorizer, scope(&[ObjectType::Object], Permission::Read), HOUR_S);
    let refusals = [
        (tenant_admin("globex", GLOBEX_ADMIN_KEY), GrantError::NotTenantAdminOfOrg),
        (cluster_admin(), GrantError::ApproverIsOperator),
        (
            Caller::new("other-root", ADMIN2_KEY, [Role::ClusterAdmin]).unwrap(),
            GrantError::ApproverIsOperator,
        ),
        (
            Caller::new("sre", GLOBEX_ADMIN_KEY, [Role::Sre]).unwrap(),
            GrantError::ApproverIsOperator,
        ),
        (workload("acme"), GrantError::NotTenantAdminOfOrg),
        // The tenant admin's role, but the requester's own key.
        (tenant_admin("acme", ADMIN_KEY), GrantError::SelfApproval),
    ];
    for (approver, expected) in refusals {
        let step = authorizer.approve_access(id, &approver, T0 + 1);
        assert_eq!(step.result, Err(expected.clone()), "{approver}");
        assert_eq!(step.audit.result, AuditResult::Refused { error: expected });
        assert!(!allowed(&authorizer, &cluster_admin(), "/v1/object/get/b", &acme()));
    }
    assert_eq!(authorizer.grants().request_by_id(id).unwrap().state, RequestState::Pending);
    // Denying takes the same approver.
    let step = authorizer.deny_access(id, &tenant_admin("globex", GLOBEX_ADMIN_KEY), T0 + 1);
    assert_eq!(step.result, Err(GrantError::NotTenantAdminOfOrg));
    assert_eq!(
        authorizer.deny_access(id, &tenant_admin("acme", ACME_ADMIN_KEY), T0 + 2).result,
        Ok(())
    );
    // Denied stays denied.
    let late = authorizer.approve_access(id, &tenant_admin("acme", ACME_ADMIN_KEY), T0 + 3);
    assert_eq!(late.result, Err(GrantError::NotPending { id }));
    assert!(!allowed(&authorizer, &cluster_admin(), "/v1/object/get/b", &acme()));
}

#[test]
fn a_scope_file_tenant_admin_approves_for_its_own_tenant() {
    let policy = PolicyFile::parse(b"{}").unwrap();
    let scope_file = ScopeFile::parse(br#"{"tenant-admin": ["acme/alice"]}"#).unwrap();
    let files = RoleFiles::new(policy, scope_file).unwrap();
    let mut authorizer = Authorizer::new(files, KesPolicies::default());
    let id = requested(&mut authorizer, scope(&[ObjectType::Chunk], Permission::Read), HOUR_S);
    let bob = Caller::new("bob", APP_KEY, [Role::Workload { org: org("acme") }]).unwrap();
    assert_eq!(
        authorizer.approve_access(id, &bob, T0).result,
        Err(GrantError::NotTenantAdminOfOrg)
    );
    let alice = Caller::new("alice", APP_KEY, [Role::Workload { org: org("acme") }]).unwrap();
    assert_eq!(authorizer.approve_access(id, &alice, T0).result, Ok(()));
    assert!(authorizer.authorize(&cluster_admin(), "/v1/chunk/get/c", &acme(), T0).is_allowed());
}

#[test]
fn requests_are_checked_and_pending_requests_go_stale() {
    let mut authorizer = Authorizer::default();
    let admin = cluster_admin();
    let refusals = [
        (workload("acme"), scope(&[ObjectType::Object], Permission::Read), HOUR_S, {
            GrantError::RequesterNotClusterAdmin
        }),
        (admin.clone(), scope(&[], Permission::Read), HOUR_S, GrantError::EmptyScope),
        (
            admin.clone(),
            scope(&[ObjectType::Object], Permission::Read),
            0,
            GrantError::ZeroDuration,
        ),
        (
            admin.clone(),
            scope(&[ObjectType::Object], Permission::Read),
            crate::constants::ACCESS_GRANT_MAX_DURATION_S + 1,
            GrantError::DurationTooLong {
                duration_s: crate::constants::ACCESS_GRANT_MAX_DURATION_S + 1,
                max_s: crate::constants::ACCESS_GRANT_MAX_DURATION_S,
            },
        ),
        (
            admin.clone(),
            scope(&[ObjectType::Object, ObjectType::AccessRequest], Permission::All),
            HOUR_S,
            GrantError::NotGrantable { object: ObjectType::AccessRequest },
        ),
        (
            admin.clone(),
            scope(&[ObjectType::Policy], Permission::All),
            HOUR_S,
            GrantError::NotGrantable { object: ObjectType::Policy },
        ),
    ];
    for (requester, scope, duration_s, expected) in refusals {
        let step = authorizer.request_access(&requester, scope, duration_s, T0);
        assert_eq!(step.result, Err(expected), "{requester}");
        assert!(!step.audit.allowed());
        assert_eq!(step.audit.action, AuditAction::AccessRequest { request: None });
    }
    assert_eq!(authorizer.grants().requests().count(), 0);

    let id = requested(&mut authorizer, scope(&[ObjectType::Object], Permission::Read), HOUR_S);
    let stale = T0 + crate::constants::ACCESS_REQUEST_PENDING_MAX_S;
    let step = authorizer.approve_access(id, &tenant_admin("acme", ACME_ADMIN_KEY), stale);
    assert_eq!(step.result, Err(GrantError::NotPending { id }));
    assert!(!authorizer.authorize(&admin, "/v1/object/get/b", &acme(), stale).is_allowed());
    let unknown = authorizer.approve_access(999, &tenant_admin("acme", ACME_ADMIN_KEY), T0);
    assert_eq!(unknown.result, Err(GrantError::UnknownRequest { id: 999 }));
}

#[test]
fn revoking_ends_a_grant_early() {
    let mut authorizer = Authorizer::default();
    let admin = cluster_admin();
    let id = requested(&mut authorizer, scope(&[ObjectType::Object], Permission::Read), HOUR_S);
    let acme_admin = tenant_admin("acme", ACME_ADMIN_KEY);
    assert_eq!(authorizer.approve_access(id, &acme_admin, T0).result, Ok(()));
    let globex_admin = tenant_admin("globex", GLOBEX_ADMIN_KEY);
    let refused = authorizer.revoke_access(id, &globex_admin, T0 + 5);
    assert_eq!(refused.result, Err(GrantError::NotTenantAdminOfOrg));
    assert!(authorizer.authorize(&admin, "/v1/object/get/b", &acme(), T0 + 5).is_allowed());
    assert_eq!(authorizer.revoke_access(id, &acme_admin, T0 + 6).result, Ok(()));
    assert!(!authorizer.authorize(&admin, "/v1/object/get/b", &acme(), T0 + 7).is_allowed());
    assert_eq!(
        authorizer.revoke_access(id, &acme_admin, T0 + 8).result,
        Err(GrantError::NotActive { id })
    );
    // The requester may give its grant up too.
    let id = requested(&mut authorizer, scope(&[ObjectType::Object], Permission::Read), HOUR_S);
    assert_eq!(authorizer.approve_access(id, &acme_admin, T0).result, Ok(()));
    assert_eq!(authorizer.revoke_access(id, &admin, T0 + 1).result, Ok(()));
    assert!(!authorizer.authorize(&admin, "/v1/object/get/b", &acme(), T0 + 2).is_allowed());
    // Pruning forgets what is no longer open.
    authorizer.grants_mut().prune(T0 + 3);
    assert_eq!(authorizer.grants().requests().count(), 0);
}

fn kes_authorizer(json: &str) -> Authorizer {
    Authorizer::new(RoleFiles::default(), KesPolicies::parse(json.as_bytes()).unwrap())
}

#[test]
fn kes_policies_allow_by_glob_and_deny_wins() {
    let json = format!(
        r#"{{"app": {{"allow": ["/v1/key/create/app-*", "/v1/key/generate/app-*", "/v1/key/list"],
                     "deny": ["/v1/key/create/app-root*"], "identities": ["{APP_KEY}"]}}}}"#
    );
    let authorizer = kes_authorizer(&json);
    // A peer whose certificate names no role: only its policy speaks for it.
    let app = Caller::new("app", APP_KEY, []).unwrap();
    let check = |path: &str| authorizer.authorize(&app, path, &Target::Cluster, T0);
    let by_policy = Some(&AllowedBy::KesPolicy { policy: "app".into() });
    assert_eq!(check("/v1/key/create/app-1").allowed_by(), by_policy);
    assert!(check("/v1/key/generate/app-1").is_allowed());
    assert!(check("/v1/key/list").is_allowed());
    assert!(!check("/v1/key/list/app-*").is_allowed());
    assert!(!check("/v1/key/create/other").is_allowed());
    assert!(!check("/v1/key/delete/app-1").is_allowed());
    let denied = check("/v1/key/create/app-root-2");
    assert_eq!(denied.deny_reason(), Some(&DenyReason::KesDenied { policy: "app".into() }));
    // An identity bound to no policy gets nothing.
    let stranger = Caller::new("app", WORKLOAD_KEY, []).unwrap();
    let nothing = authorizer.authorize(&stranger, "/v1/key/create/app-1", &Target::Cluster, T0);
    assert_eq!(nothing.deny_reason(), Some(&DenyReason::NotPermitted));
}

#[test]
fn a_kes_deny_beats_the_built_in_table() {
    let json = format!(
        r#"{{"no-drain": {{"allow": ["/v1/storage/list"], "deny": ["/v1/storage/drain/*"],
            "identities": ["{ADMIN_KEY}"]}}}}"#
    );
    let authorizer = kes_authorizer(&json);
    let admin = cluster_admin();
    assert!(!allowed(&authorizer, &admin, "/v1/storage/drain/nvme0", &Target::Cluster));
    assert!(allowed(&authorizer, &admin, "/v1/storage/get/nvme0", &Target::Cluster));
}

#[test]
fn kes_policies_stay_within_the_tenant_rules() {
    let json = format!(
        r#"{{"wide": {{"allow": ["/v1/object/*/*", "/v1/key/*/*"],
            "identities": ["{WORKLOAD_KEY}", "{ADMIN_KEY}"]}}}}"#
    );
    let authorizer = kes_authorizer(&json);
    let job = workload("acme");
    // Its own tenant: the table already allows objects; the policy adds keys.
    assert!(allowed(&authorizer, &job, "/v1/key/create/k", &acme()));
    // Another tenant: no policy reaches it.
    let other = authorizer.authorize(&job, "/v1/object/get/b", &globex(), T0);
    assert_eq!(other.deny_reason(), Some(&DenyReason::OtherTenant));
    assert!(!allowed(&authorizer, &job, "/v1/key/create/k", &globex()));
    // The cluster admin matched by the same policy still needs a grant.
    let admin = cluster_admin();
    let denied = authorizer.authorize(&admin, "/v1/object/get/b", &acme(), T0);
    assert_eq!(denied.deny_reason(), Some(&DenyReason::NoGrant));
    assert!(!allowed(&authorizer, &admin, "/v1/key/decrypt/k", &acme()));
    // On the cluster's own keys the policy applies.
    assert!(allowed(&authorizer, &admin, "/v1/key/generate/k", &Target::Cluster));
}

fn role_files_authorizer(policy: &str, scope: &str) -> Authorizer {
    let files = RoleFiles::parse(policy.as_bytes(), scope.as_bytes()).unwrap();
    Authorizer::new(files, KesPolicies::default())
}

#[test]
fn policy_file_roles_by_object_type_and_permission() {
    let authorizer = role_files_authorizer(
        r#"{"Auditor": {"Audit": ["Read"], "Device": ["Read"]}, "Keys": {"Key": ["All"]}}"#,
        r#"{"Auditor": ["ops-1", "acme/carol"], "Keys": ["acme/carol"]}"#,
    );
    let ops = Caller::new("ops-1", APP_KEY, []).unwrap();
    let by_auditor = Some(&AllowedBy::PolicyRole { role: "Auditor".into() });
    let check = |caller: &Caller, path: &str, target: &Target| {
        authorizer.authorize(caller, path, target, T0)
    };
    assert_eq!(check(&ops, "/v1/storage/list", &Target::Cluster).allowed_by(), by_auditor);
    assert!(check(&ops, "/v1/audit/export", &Target::Cluster).is_allowed());
    assert!(!check(&ops, "/v1/storage/drain/d", &Target::Cluster).is_allowed());
    // Tenant content is out of reach of a peer of no tenant, whatever its roles.
    assert!(!check(&ops, "/v1/audit/export", &acme()).is_allowed());
    // A tenant's peer: its own tenant only.
    let carol = Caller::new("carol", WORKLOAD_KEY, [Role::Workload { org: org("acme") }]).unwrap();
    assert!(check(&carol, "/v1/audit/export", &acme()).is_allowed());
    assert!(check(&carol, "/v1/key/delete/k", &acme()).is_allowed());
    assert!(!check(&carol, "/v1/audit/export", &globex()).is_allowed());
    assert!(!check(&carol, "/v1/key/delete/k", &globex()).is_allowed());
    // Same common name, other tenant: the qualified entry does not match.
    let other_carol =
        Caller::new("carol", WORKLOAD_KEY, [Role::Workload { org: org("globex") }]).unwrap();
    assert!(!check(&other_carol, "/v1/audit/export", &globex()).is_allowed());
}

#[test]
fn an_unknown_role_at_check_time_is_denied() {
    let policy = PolicyFile::parse(br#"{"Auditor": {"Audit": ["Read"]}}"#).unwrap();
    let scope_file = ScopeFile::parse(br#"{"Auditor": ["ops-1"], "Ghost": ["ops-1"]}"#).unwrap();
    // The checked constructor refuses this pair...
    assert!(RoleFiles::new(policy.clone(), scope_file.clone()).is_err());
    // ...and should such a pair ever be in force, the role's holder is denied everything.
    let authorizer =
        Authorizer::new(RoleFiles::unchecked(policy, scope_file), KesPolicies::default());
    let ops = Caller::new("ops-1", APP_KEY, []).unwrap();
    let decision = authorizer.authorize(&ops, "/v1/audit/export", &Target::Cluster, T0);
    assert_eq!(decision.deny_reason(), Some(&DenyReason::UnknownRole { role: "Ghost".into() }));
}

#[test]
fn a_scope_file_promotes_a_tenant_peer_to_its_tenant_admin() {
    let authorizer = role_files_authorizer("{}", r#"{"tenant-admin": ["acme/alice"]}"#);
    let alice = Caller::new("alice", APP_KEY, [Role::Workload { org: org("acme") }]).unwrap();
    let decision = authorizer.authorize(&alice, "/v1/tenant/configure/acme", &acme(), T0);
    assert_eq!(
        decision.allowed_by(),
        Some(&AllowedBy::Role(Role::TenantAdmin { org: org("acme") }))
    );
    assert!(!allowed(&authorizer, &alice, "/v1/tenant/configure/globex", &globex()));
    // A tenant-admin entry never matches a peer of no tenant with the same name.
    let root_alice = Caller::new("alice", ADMIN_KEY, [Role::ClusterAdmin]).unwrap();
    assert!(!allowed(&authorizer, &root_alice, "/v1/tenant/configure/acme", &acme()));
}

#[test]
fn a_cert_granting_certificate_only_requests_certificates() {
    let everything =
        format!(r#"{{"all": {{"allow": ["/v1/*/*", "/v1/*/*/*"], "identities": ["{CGC_KEY}"]}}}}"#);
    let authorizer = kes_authorizer(&everything);
    let cgc = Caller::new("node-7", CGC_KEY, [Role::CertGranting]).unwrap();
    for api in Api::ALL {
        let argument = match api.spec().argument {
            Argument::None => None,
            Argument::Name | Argument::OptionalName => Some("x"),
            Argument::Org => Some("acme"),
        };
        let path = ApiPath::new(api, argument).unwrap();
        let expected = matches!(api, Api::AdmissionRequest | Api::AdmissionRenew);
        for target in [Target::Cluster, acme()] {
            let decision = authorizer.authorize(&cgc, path.as_str(), &target, T0);
            let fits = api.spec().targets.admit(&target)
                && (api.spec().argument != Argument::Org || target == acme());
            assert_eq!(decision.is_allowed(), expected && fits, "{path} on {target}");
            if !expected && fits {
                assert_eq!(decision.deny_reason(), Some(&DenyReason::CertGrantingConfined));
            }
        }
    }
}

#[test]
fn malformed_paths_and_mismatched_targets_are_denied() {
    let authorizer = Authorizer::default();
    let admin = cluster_admin();
    let job = workload("acme");
    let cases = [
        (&admin, "/v1/storage/list/", Target::Cluster),
        (&admin, "/v1/storage//list", Target::Cluster),
        (&admin, "/v1/storage/list?x=1", Target::Cluster),
        (&admin, "/v1/storage/drain/../x", Target::Cluster),
        (&admin, "/V1/storage/list", Target::Cluster),
        (&admin, "", Target::Cluster),
        (&job, "/v1/object/get", acme()),
        (&job, "/v1/object/get/a/b", acme()),
    ];
    for (caller, path, target) in cases {
        let decision = authorizer.authorize(caller, path, &target, T0);
        assert!(!decision.is_allowed(), "{path:?}");
    }
    let mismatches = [
        (&admin, "/v1/storage/list", acme()),
        (&job, "/v1/object/get/b", Target::Cluster),
        (&admin, "/v1/tenant/create/globex", acme()),
        (&admin, "/v1/tenant/create/acme", Target::Cluster),
    ];
    for (caller, path, target) in mismatches {
        let decision = authorizer.authorize(caller, path, &target, T0);
        assert_eq!(decision.deny_reason(), Some(&DenyReason::TargetMismatch), "{path}");
    }
    assert!(allowed(&authorizer, &admin, "/v1/tenant/create/acme", &acme()));
}

#[test]
fn every_decision_has_an_audit_record_without_secrets() {
    let authorizer = Authorizer::default();
    let job = workload("acme");
    let allowed_call = authorizer.authorize(&job, "/v1/object/get/b", &acme(), T0);
    let event = allowed_call.audit_event();
    assert_eq!(event.time_unix_s, T0);
    assert_eq!(event.actor.common_name, "job-1");
    assert_eq!(event.actor.key_identity, WORKLOAD_KEY);
    assert_eq!(event.actor.roles, [Role::Workload { org: org("acme") }]);
    assert_eq!(event.action, AuditAction::Call { path: "/v1/object/get/b".into() });
    assert_eq!(event.target, acme());
    assert_eq!(
        event.result,
        AuditResult::Allowed { by: AllowedBy::Role(Role::Workload { org: org("acme") }) }
    );
    let denied = authorizer.authorize(&job, "/v1/object/get/b\n[forged] allowed", &globex(), T0);
    let line = denied.audit_event().to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(line.contains("denied"), "{line}");
    let huge = format!("/v1/object/get/{}", "x".repeat(1 << 16));
    let denied = authorizer.authorize(&job, &huge, &acme(), T0);
    let AuditAction::Call { path } = &denied.audit_event().action else { panic!("not a call") };
    assert!(path.len() <= API_PATH_MAX_BYTES + '…'.len_utf8());
    assert_eq!(denied.remote_result(), Err(RemoteError::AccessDenied));
    assert_eq!(RemoteError::AccessDenied.to_string(), "access denied");
}
