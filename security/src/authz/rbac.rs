//! Policy and scope files (seed 004): a policy file gives each named role permissions on
//! object types, a scope file gives identities (certificate common names) roles.
//!
//! Policy file: `{ "Auditor": { "Audit": ["Read"], "Device": ["All"] } }`. Object types are
//! [`ObjectType`]'s names; permissions are `All`, `Read` and `Write` (`All` is both). The
//! built-in roles' names (`cluster-admin`, `tenant-admin`, ...) cannot be redefined.
//!
//! Scope file: `{ "Auditor": ["ops-1"], "tenant-admin": ["acme-corp/alice"] }`. An identity
//! is a certificate common name, optionally qualified by its tenant as `<org>/<cn>`:
//! - `cn` matches a peer with that common name whose certificate names no tenant;
//! - `org/cn` matches a peer with that common name whose certificate is that tenant's.
//!
//! Common names are not unique across tenants (two tenants may both have an `alice`), so a
//! tenant's peer is only ever matched by a qualified entry. Of the built-in roles a scope
//! file may assign only `tenant-admin`, and only to qualified identities: it promotes a
//! tenant's own certificate to its tenant's admin; every other built-in role comes from a
//! certificate alone.
//!
//! What this module does not do: it says what a role's permissions are; `authz.rs`
//! applies them within the tenant rules (a policy-file role never takes a peer into
//! another tenant's content, nor a cluster admin into any).
//!
//! Invariants: every loaded file passed every check, and both files together passed the
//! cross-check (every role a scope file assigns is `tenant-admin` or defined in the policy
//! file). A role unknown at check time - possible only if that invariant were broken - is
//! denied everything.

use std::collections::BTreeMap;
use std::fmt;

use crate::authz::api::{Access, ObjectType};
use crate::authz::error::{PolicyFileError, PolicyFileKind, PolicyFileProblem, shorten};
use crate::authz::json::{FieldPath, FileReader};
use crate::authz::table::RoleKind;
use crate::constants::{COMMON_NAME_MAX_BYTES, POLICY_ROLES_MAX, SCOPE_IDENTITIES_MAX};
use crate::role::OrgId;

/// A permission on an object type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Read and write.
    All,
    Read,
    Write,
}

/// A policy file: role name to object type to what the role may do with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyFile {
    roles: BTreeMap<String, BTreeMap<ObjectType, Grants>>,
}

/// A scope file: role name to the identities holding it, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeFile {
    roles: BTreeMap<String, Vec<ScopeIdentity>>,
}

/// One identity of a scope file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopeIdentity {
    /// `Some` for `<org>/<cn>`: matches only that tenant's certificates.
    pub org: Option<OrgId>,
    pub common_name: String,
}

/// A policy file and a scope file that agree with each other.
#[derive(Debug, Clone, Default)]
pub struct RoleFiles {
    policy: PolicyFile,
    scope: ScopeFile,
}

/// What a scope file assigns one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned<'a> {
    /// The peer is its own tenant's admin.
    pub tenant_admin: bool,
    /// Policy-file roles, by name.
    pub roles: Vec<&'a str>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Grants {
    read: bool,
    write: bool,
}

impl Permission {
    pub const ALL: [Permission; 3] = [Permission::All, Permission::Read, Permission::Write];

    pub const fn name(self) -> &'static str {
        match self {
            Permission::All => "All",
            Permission::Read => "Read",
            Permission::Write => "Write",
        }
    }

    pub fn from_name(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|permission| permission.name() == name)
    }

    pub fn permits(self, access: Access) -> bool {
        match self {
            Permission::All => true,
            Permission::Read => access == Access::Read,
            Permission::Write => access == Access::Write,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PolicyFile {
    pub fn parse(bytes: &[u8]) -> Result<PolicyFile, PolicyFileError> {
        let reader = FileReader { file: PolicyFileKind::Policy };
        let document = reader.parse(bytes)?;
        let root = FieldPath::root();
        let mut policy = PolicyFile::default();
        for (role, objects) in reader.object(&document, &root, "roles", POLICY_ROLES_MAX)? {
            let at = root.key(role);
            reader.name(role, &at)?;
            if RoleKind::from_name(role).is_some() {
                let problem = PolicyFileProblem::ReservedRoleName { role: role.clone() };
                return Err(reader.error(&at, problem));
            }
            let mut grants = BTreeMap::new();
            for (object, permissions) in
                reader.object(objects, &at, "object types", ObjectType::ALL.len())?
            {
                let at = at.key(object);
                let Some(object_type) = ObjectType::from_name(object) else {
                    let problem = PolicyFileProblem::UnknownObjectType { name: shorten(object) };
                    return Err(reader.error(&at, problem));
                };
                grants.insert(object_type, parse_permissions(&reader, permissions, &at)?);
            }
            policy.roles.insert(role.clone(), grants);
        }
        Ok(policy)
    }

    /// `Some(true)` if `role` may have `access` to `object`; `None` if no such role.
    pub fn permits(&self, role: &str, object: ObjectType, access: Access) -> Option<bool> {
        let grants = self.roles.get(role)?;
        let Some(grant) = grants.get(&object) else { return Some(false) };
        Some(match access {
            Access::Read => grant.read,
            Access::Write => grant.write,
        })
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    /// The document again, normalized: `All` for read and write, keys sorted.
    pub fn to_json(&self) -> serde_json::Value {
        let roles = self.roles.iter().map(|(role, grants)| {
            let objects = grants.iter().map(|(object, grant)| {
                let names: Vec<&str> = match (grant.read, grant.write) {
                    (true, true) => vec![Permission::All.name()],
                    (true, false) => vec![Permission::Read.name()],
                    (false, true) => vec![Permission::Write.name()],
                    (false, false) => unreachable!("a parsed permission list is not empty"),
                };
                (object.name().to_owned(), serde_json::json!(names))
            });
            (role.clone(), serde_json::Value::Object(objects.collect()))
        });
        serde_json::Value::Object(roles.collect())
    }
}

fn parse_permissions(
    reader: &FileReader,
    value: &crate::authz::json::Json,
    at: &FieldPath,
) -> Result<Grants, PolicyFileError> {
    let names = reader.strings(value, at, "permissions", Permission::ALL.len())?;
    let mut seen = Vec::with_capacity(names.len());
    let mut grants = Grants::default();
    for (index, name) in names.into_iter().enumerate() {
        let at = at.index(index);
        let Some(permission) = Permission::from_name(name) else {
            let problem = PolicyFileProblem::UnknownPermission { name: shorten(name) };
            return Err(reader.error(&at, problem));
        };
        if seen.contains(&permission) {
            let problem = PolicyFileProblem::DuplicateEntry { entry: name.to_owned() };
            return Err(reader.error(&at, problem));
        }
        seen.push(permission);
        grants.read |= permission.permits(Access::Read);
        grants.write |= permission.permits(Access::Write);
    }
    Ok(grants)
}

impl ScopeIdentity {
    /// Reads `cn` or `<org>/<cn>`.
    pub fn parse(text: &str) -> Result<ScopeIdentity, &'static str> {
        let (org, common_name) = match text.split_once('/') {
            Some((org, common_name)) => {
                let org = OrgId::parse(org).map_err(|_| "the part before '/' is not an org id")?;
                (Some(org), common_name)
            }
            None => (None, text),
        };
        if common_name.is_empty() {
            return Err("empty common name");
        }
        if common_name.len() > COMMON_NAME_MAX_BYTES {
            return Err("common name over 256 bytes");
        }
        if common_name.chars().any(char::is_control) {
            return Err("common name holds a control character");
        }
        Ok(ScopeIdentity { org, common_name: common_name.to_owned() })
    }

    /// True if a peer with this common name and certificate tenant is this identity.
    pub fn matches(&self, common_name: &str, org: Option<&OrgId>) -> bool {
        self.common_name == common_name && self.org.as_ref() == org
    }
}

impl fmt::Display for ScopeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.org {
            Some(org) => write!(f, "{org}/{}", self.common_name),
            None => f.write_str(&self.common_name),
        }
    }
}

impl ScopeFile {
    pub fn parse(bytes: &[u8]) -> Result<ScopeFile, PolicyFileError> {
        let reader = FileReader { file: PolicyFileKind::Scope };
        let document = reader.parse(bytes)?;
        let root = FieldPath::root();
        let mut scope = ScopeFile::default();
        let mut total = 0usize;
        for (role, identities) in reader.object(&document, &root, "roles", POLICY_ROLES_MAX)? {
            let at = root.key(role);
            reader.name(role, &at)?;
            let builtin = RoleKind::from_name(role);
            if builtin.is_some_and(|kind| kind != RoleKind::TenantAdmin) {
                let problem = PolicyFileProblem::RoleOnlyFromCertificate { role: role.clone() };
                return Err(reader.error(&at, problem));
            }
            let texts = reader.strings(identities, &at, "identities", SCOPE_IDENTITIES_MAX)?;
            total += texts.len();
            if total > SCOPE_IDENTITIES_MAX {
                let problem =
                    PolicyFileProblem::TooMany { what: "identities", max: SCOPE_IDENTITIES_MAX };
                return Err(reader.error(&at, problem));
            }
            let mut parsed: Vec<ScopeIdentity> = Vec::with_capacity(texts.len());
            for (index, text) in texts.into_iter().enumerate() {
                let at = at.index(index);
                let bad =
                    |reason| PolicyFileProblem::BadIdentity { identity: shorten(text), reason };
                let identity = ScopeIdentity::parse(text).map_err(|r| reader.error(&at, bad(r)))?;
                if builtin == Some(RoleKind::TenantAdmin) && identity.org.is_none() {
                    let reason = "tenant-admin takes only <org>/<common name>";
                    return Err(reader.error(&at, bad(reason)));
                }
                if parsed.contains(&identity) {
                    let problem = PolicyFileProblem::DuplicateEntry { entry: shorten(text) };
                    return Err(reader.error(&at, problem));
                }
                parsed.push(identity);
            }
            scope.roles.insert(role.clone(), parsed);
        }
        Ok(scope)
    }

    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    /// The document again, in the same form.
    pub fn to_json(&self) -> serde_json::Value {
        let roles = self.roles.iter().map(|(role, identities)| {
            let texts: Vec<String> = identities.iter().map(ToString::to_string).collect();
            (role.clone(), serde_json::json!(texts))
        });
        serde_json::Value::Object(roles.collect())
    }
}

impl RoleFiles {
    /// Both files, cross-checked: every role the scope file assigns must be `tenant-admin`
    /// or a role of the policy file.
    pub fn new(policy: PolicyFile, scope: ScopeFile) -> Result<RoleFiles, PolicyFileError> {
        let reader = FileReader { file: PolicyFileKind::Scope };
        for role in scope.role_names() {
            let builtin = RoleKind::from_name(role) == Some(RoleKind::TenantAdmin);
            if !builtin && !policy.has_role(role) {
                let problem = PolicyFileProblem::UnknownRole { role: role.to_owned() };
                return Err(reader.error(&FieldPath::root().key(role), problem));
            }
        }
        Ok(RoleFiles { policy, scope })
    }

    /// Parses and cross-checks both files.
    pub fn parse(policy_json: &[u8], scope_json: &[u8]) -> Result<RoleFiles, PolicyFileError> {
        RoleFiles::new(PolicyFile::parse(policy_json)?, ScopeFile::parse(scope_json)?)
    }

    /// The roles the scope file gives a peer with this common name and certificate tenant.
    pub fn assigned(&self, common_name: &str, org: Option<&OrgId>) -> Assigned<'_> {
        let mut assigned = Assigned::default();
        for (role, identities) in &self.scope.roles {
            if !identities.iter().any(|identity| identity.matches(common_name, org)) {
                continue;
            }
            if RoleKind::from_name(role) == Some(RoleKind::TenantAdmin) {
                assigned.tenant_admin = true;
            } else {
                assigned.roles.push(role);
            }
        }
        assigned
    }

    /// `Some(true)` if the policy-file role permits `access` to `object`; `None` for a role
    /// the policy file does not define (denied by the caller).
    pub fn permits(&self, role: &str, object: ObjectType, access: Access) -> Option<bool> {
        self.policy.permits(role, object, access)
    }

    pub fn policy(&self) -> &PolicyFile {
        &self.policy
    }

    pub fn scope(&self) -> &ScopeFile {
        &self.scope
    }

    /// Both files without the cross-check, to test that an unknown role is denied at
    /// check time.
    #[cfg(test)]
    pub(crate) fn unchecked(policy: PolicyFile, scope: ScopeFile) -> RoleFiles {
        RoleFiles { policy, scope }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether an error's problem is the one a case expects.
    type ProblemCheck = fn(&PolicyFileProblem) -> bool;

    const POLICY: &str = r#"{
        "Root": {"Device": ["All"], "Tenant": ["All"], "Policy": ["Read", "Write"]},
        "Auditor": {"Audit": ["Read"]},
        "Writer": {"Object": ["Write"]}
    }"#;

    const SCOPE: &str = r#"{
        "Root": ["root"],
        "Auditor": ["ops-1", "acme-corp/alice"],
        "tenant-admin": ["acme-corp/alice"]
    }"#;

    fn acme() -> OrgId {
        OrgId::parse("acme-corp").unwrap()
    }

    #[test]
    fn permissions_by_object_type() {
        let policy = PolicyFile::parse(POLICY.as_bytes()).unwrap();
        let cases = [
            ("Root", ObjectType::Device, Access::Read, Some(true)),
            ("Root", ObjectType::Device, Access::Write, Some(true)),
            ("Root", ObjectType::Policy, Access::Write, Some(true)),
            ("Root", ObjectType::Object, Access::Read, Some(false)),
            ("Auditor", ObjectType::Audit, Access::Read, Some(true)),
            ("Auditor", ObjectType::Audit, Access::Write, Some(false)),
            ("Writer", ObjectType::Object, Access::Write, Some(true)),
            ("Writer", ObjectType::Object, Access::Read, Some(false)),
            ("root", ObjectType::Device, Access::Read, None),
            ("Nobody", ObjectType::Device, Access::Read, None),
        ];
        for (role, object, access, expected) in cases {
            assert_eq!(policy.permits(role, object, access), expected, "{role} {object}");
        }
    }

    #[test]
    fn scope_assigns_by_common_name_and_tenant() {
        let files = RoleFiles::parse(POLICY.as_bytes(), SCOPE.as_bytes()).unwrap();
        let alice = files.assigned("alice", Some(&acme()));
        assert!(alice.tenant_admin);
        assert_eq!(alice.roles, ["Auditor"]);
        // The same common name in another tenant, or with no tenant, is someone else.
        let other = OrgId::parse("globex").unwrap();
        assert_eq!(files.assigned("alice", Some(&other)), Assigned::default());
        assert_eq!(files.assigned("alice", None), Assigned::default());
        // An unqualified entry never matches a tenant's certificate.
        assert_eq!(files.assigned("root", Some(&acme())), Assigned::default());
        assert_eq!(files.assigned("root", None).roles, ["Root"]);
        assert_eq!(files.assigned("Root", None), Assigned::default());
    }

    fn policy_error(json: &str) -> PolicyFileError {
        PolicyFile::parse(json.as_bytes()).unwrap_err()
    }

    fn scope_error(json: &str) -> PolicyFileError {
        ScopeFile::parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn policy_file_errors_name_the_field() {
        use PolicyFileProblem as P;
        let cases: &[(&str, &str, ProblemCheck)] = &[
            (
                r#"{"R": {"Dvice": ["All"]}}"#,
                "$.R.Dvice",
                |p| matches!(p, P::UnknownObjectType { name } if name == "Dvice"),
            ),
            (
                r#"{"R": {"Device": ["Admin"]}}"#,
                "$.R.Device[0]",
                |p| matches!(p, P::UnknownPermission { name } if name == "Admin"),
            ),
            (r#"{"R": {"Device": ["read"]}}"#, "$.R.Device[0]", |p| {
                matches!(p, P::UnknownPermission { .. })
            }),
            (r#"{"R": {"Device": ["Read", "Read"]}}"#, "$.R.Device[1]", |p| {
                matches!(p, P::DuplicateEntry { .. })
            }),
            (r#"{"R": {"Device": []}}"#, "$.R.Device", |p| matches!(p, P::EmptyList)),
            (r#"{"R": {"Device": "All"}}"#, "$.R.Device", |p| {
                matches!(p, P::WrongType { found: "a string", .. })
            }),
            (r#"{"R": {"Device": ["All"], "Device": ["Read"]}}"#, "$.R.Device", |p| {
                matches!(p, P::DuplicateKey { .. })
            }),
            (r#"{"R": {}, "R": {}}"#, "$.R", |p| matches!(p, P::DuplicateKey { .. })),
            (r#"{"cluster-admin": {"Device": ["All"]}}"#, "$.cluster-admin", |p| {
                matches!(p, P::ReservedRoleName { .. })
            }),
            (r#"{"tenant-admin": {}}"#, "$.tenant-admin", |p| {
                matches!(p, P::ReservedRoleName { .. })
            }),
            (r#"{"": {}}"#, "$[\"\"]", |p| matches!(p, P::BadName { .. })),
            (r#"{"R": []}"#, "$.R", |p| matches!(p, P::WrongType { .. })),
            (r#"["R"]"#, "$", |p| matches!(p, P::WrongType { .. })),
            (r#"{"R": {"Device": ["All"]}"#, "$", |p| matches!(p, P::Syntax { .. })),
        ];
        for (json, field, expected) in cases {
            let error = policy_error(json);
            assert_eq!(error.file, PolicyFileKind::Policy);
            assert_eq!(error.field, *field, "{json}: {error}");
            assert!(expected(&error.problem), "{json}: {error}");
        }
    }

    #[test]
    fn scope_file_errors_name_the_field() {
        use PolicyFileProblem as P;
        let cases: &[(&str, &str, ProblemCheck)] = &[
            (r#"{"R": ["a", "b", "a"]}"#, "$.R[2]", |p| matches!(p, P::DuplicateEntry { .. })),
            (r#"{"R": ["acme/a", "acme/a"]}"#, "$.R[1]", |p| matches!(p, P::DuplicateEntry { .. })),
            (r#"{"R": [""]}"#, "$.R[0]", |p| matches!(p, P::BadIdentity { .. })),
            (r#"{"R": ["acme/"]}"#, "$.R[0]", |p| matches!(p, P::BadIdentity { .. })),
            (r#"{"R": ["Acme/x"]}"#, "$.R[0]", |p| matches!(p, P::BadIdentity { .. })),
            (r#"{"R": ["a\u0000"]}"#, "$.R[0]", |p| matches!(p, P::BadIdentity { .. })),
            (r#"{"tenant-admin": ["alice"]}"#, "$.tenant-admin[0]", |p| {
                matches!(p, P::BadIdentity { .. })
            }),
            (r#"{"cluster-admin": ["root"]}"#, "$.cluster-admin", |p| {
                matches!(p, P::RoleOnlyFromCertificate { .. })
            }),
            (r#"{"workload": ["acme/x"]}"#, "$.workload", |p| {
                matches!(p, P::RoleOnlyFromCertificate { .. })
            }),
            (r#"{"R": []}"#, "$.R", |p| matches!(p, P::EmptyList)),
            (r#"{"R": [7]}"#, "$.R[0]", |p| matches!(p, P::WrongType { .. })),
            (r#"{"R": ["a"], "R": ["b"]}"#, "$.R", |p| matches!(p, P::DuplicateKey { .. })),
        ];
        for (json, field, expected) in cases {
            let error = scope_error(json);
            assert_eq!(error.file, PolicyFileKind::Scope);
            assert_eq!(error.field, *field, "{json}: {error}");
            assert!(expected(&error.problem), "{json}: {error}");
        }
    }

    #[test]
    fn scope_naming_an_unknown_role_is_refused() {
        let error = RoleFiles::parse(POLICY.as_bytes(), br#"{"Operator": ["ops-1"]}"#).unwrap_err();
        assert_eq!(error.field, "$.Operator");
        assert_eq!(error.problem, PolicyFileProblem::UnknownRole { role: "Operator".into() });
        assert_eq!(error.to_string(), "scope file, field $.Operator: unknown role \"Operator\"");
        // Role names are case-sensitive: "root" is not "Root".
        assert!(RoleFiles::parse(POLICY.as_bytes(), br#"{"root": ["x"]}"#).is_err());
    }

    #[test]
    fn oversized_files_are_refused_before_parsing() {
        let big = vec![b' '; crate::constants::POLICY_FILE_MAX_BYTES + 1];
        let error = PolicyFile::parse(&big).unwrap_err();
        assert!(matches!(error.problem, PolicyFileProblem::TooLarge { .. }));
        assert!(matches!(
            ScopeFile::parse(&big).unwrap_err().problem,
            PolicyFileProblem::TooLarge { .. }
        ));
    }

    #[test]
    fn normalized_json_parses_back_to_the_same_files() {
        let policy = PolicyFile::parse(POLICY.as_bytes()).unwrap();
        let again = PolicyFile::parse(policy.to_json().to_string().as_bytes()).unwrap();
        assert_eq!(again, policy);
        let scope = ScopeFile::parse(SCOPE.as_bytes()).unwrap();
        let again = ScopeFile::parse(scope.to_json().to_string().as_bytes()).unwrap();
        assert_eq!(again, scope);
    }
}
