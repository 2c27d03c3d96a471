//! Fuzz entry points for the authorization files: the policy file, the scope file (seed
//! 004) and the KES policy file (seed 002). Each parses arbitrary bytes and, when they
//! parse, checks properties that must hold for every accepted file; it panics only when
//! one breaks. The stable-Rust test below runs them over seeded mutations of valid files.

use crate::authz::{Access, RoleKind};
use crate::authz::{
    Api, ApiPath, Argument, KesPolicies, KesVerdict, ObjectType, PolicyFile, PolicyFileError,
    RoleFiles, ScopeFile,
};

/// A policy file that parses writes back to normalized JSON that parses to the same file,
/// and answers for each of its roles on every object type and access.
pub fn parse_policy_file(data: &[u8]) -> Result<(), PolicyFileError> {
    let policy = PolicyFile::parse(data)?;
    let normalized = policy.to_json().to_string();
    let again = PolicyFile::parse(normalized.as_bytes()).expect("normalized JSON parses");
    assert_eq!(again, policy, "normalizing keeps every permission");
    for role in policy.role_names() {
        assert!(RoleKind::from_name(role).is_none(), "no built-in role is redefined");
        for object in ObjectType::ALL {
            for access in [Access::Read, Access::Write] {
                assert!(policy.permits(role, object, access).is_some(), "{role} is known");
            }
        }
    }
    Ok(())
}

/// A scope file that parses writes back to JSON that parses to the same file; against an
/// empty policy file it is accepted exactly when it assigns only `tenant-admin`.
pub fn parse_scope_file(data: &[u8]) -> Result<(), PolicyFileError> {
    let scope = ScopeFile::parse(data)?;
    let again = ScopeFile::parse(scope.to_json().to_string().as_bytes()).expect("JSON parses");
    assert_eq!(again, scope, "writing back keeps every identity");
    let only_tenant_admin = scope.role_names().all(|role| role == RoleKind::TenantAdmin.name());
    let crossed = RoleFiles::new(PolicyFile::default(), scope);
    assert_eq!(crossed.is_ok(), only_tenant_admin, "unknown roles are refused");
    Ok(())
}

/// A KES policy file that parses binds each identity (64 lowercase hex) to one loaded
/// policy; its patterns never let `*`, `?` or a class match `/` (a matched path has as many
/// segments as the pattern), and a matching deny pattern always wins.
pub fn parse_kes_policy_file(data: &[u8]) -> Result<(), PolicyFileError> {
    let policies = KesPolicies::parse(data)?;
    for (identity, name) in policies.bindings() {
        assert_eq!(identity.len(), 64);
        assert!(identity.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let policy = policies.policy_of(identity).expect("a bound identity has a policy");
        assert_eq!(policy.name(), name);
    }
    let paths = sample_paths();
    for policy in policies.policies() {
        for path in &paths {
            let segments = path.as_str().matches('/').count();
            let matching = |patterns: &[crate::authz::ApiPattern]| {
                let mut any = false;
                for pattern in patterns.iter().filter(|pattern| pattern.matches(path)) {
                    assert_eq!(pattern.as_str().matches('/').count(), segments, "{pattern:?}");
                    any = true;
                }
                any
            };
            let denied = matching(policy.deny());
            let allowed = matching(policy.allow());
            let expected = match (denied, allowed) {
                (true, _) => KesVerdict::Denied,
                (false, true) => KesVerdict::Allowed,
                (false, false) => KesVerdict::NotAllowed,
            };
            assert_eq!(policy.verdict(path), expected, "{path}");
        }
    }
    Ok(())
}

/// Every API of the product with a few arguments, and paths whose arguments look like
/// globs or hold Unicode.
fn sample_paths() -> Vec<ApiPath> {
    let mut paths = Vec::new();
    for api in Api::ALL {
        let arguments: &[Option<&str>] = match api.spec().argument {
            Argument::None => &[None],
            Argument::OptionalName => &[None, Some("a"), Some("my-key-1"), Some("*")],
            Argument::Name => &[Some("a"), Some("my-key-1"), Some("ключ"), Some("[x]")],
            Argument::Org => &[Some("acme")],
        };
        for argument in arguments {
            paths.push(ApiPath::new(api, *argument).expect("sample paths are well formed"));
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    //! 6,000 seeded mutations of valid files per parser. A failure prints its case and seed;
    //! `KISEKI_FUZZ_SEED=<seed>` replays another sequence.

    use super::*;

    const CASES: u64 = 6_000;
    const DEFAULT_SEED: u64 = 0x4b53_4b45_0000_0004;

    const POLICY: &str = r#"{"Root": {"Device": ["All"], "Tenant": ["Read", "Write"]},
        "Auditor": {"Audit": ["Read"], "Key": ["Read"]}, "Writer": {"Object": ["Write"]}}"#;
    const SCOPE: &str = r#"{"tenant-admin": ["acme/alice", "globex/bob"],
        "Root": ["root", "ops-ñ"], "Auditor": ["acme/carol"]}"#;
    const KES: &str = r#"{"app": {"allow": ["/v1/key/create/my-key-*", "/v1/key/*/k?",
        "/v1/*/list", "/v1/key/generate/[a-z]*"], "deny": ["/v1/key/delete/*"],
        "identities": ["3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22"]},
        "ops": {"allow": ["/v1/storage/*", "/v1/storage/*/*"], "deny": ["/v1/storage/drain/*"]}}"#;

    /// Fragments a mutation splices in: the file formats' own words and JSON's syntax.
    const FRAGMENTS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\"\"",
        "null",
        "1",
        "\"All\"",
        "\"Read\"",
        "\"Device\"",
        "\"tenant-admin\"",
        "\"cluster-admin\"",
        "\"/v1/*\"",
        "\"*\"",
        "**",
        "\"/v1/key/create/\"",
        "\\u0000",
        "\"acme/\"",
        "\"allow\"",
        "\"deny\"",
        "ü",
        "/",
    ];

    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    fn mutate(rng: &mut SplitMix64, valid: &[u8]) -> Vec<u8> {
        let mut data = valid.to_vec();
        for _ in 0..=rng.below(3) {
            let at = rng.below(data.len() + 1);
            match rng.below(4) {
                0 if !data.is_empty() => {
                    let at = at.min(data.len() - 1);
                    data[at] = rng.next() as u8;
                }
                1 => data.truncate(at),
                2 => {
                    let end = (at + rng.below(16)).min(data.len());
                    data.drain(at..end);
                }
                _ => {
                    let fragment = FRAGMENTS[rng.below(FRAGMENTS.len())];
                    data.splice(at..at, fragment.bytes());
                }
            }
        }
        data
    }

    fn run(name: &str, valid: &str, parse: fn(&[u8]) -> Result<(), PolicyFileError>) {
        let seed = std::env::var("KISEKI_FUZZ_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or(DEFAULT_SEED);
        assert_eq!(parse(valid.as_bytes()), Ok(()), "{name}: the valid file parses");
        let mut rng = SplitMix64(seed);
        let (mut accepted, mut rejected) = (0u32, 0u32);
        for case in 0..CASES {
            let input = mutate(&mut rng, valid.as_bytes());
            let outcome = std::panic::catch_unwind(|| parse(&input));
            let Ok(result) = outcome else {
                panic!("{name}: case {case}, seed {seed}: {:?}", String::from_utf8_lossy(&input));
            };
            if result.is_ok() { accepted += 1 } else { rejected += 1 }
        }
        // Both answers must come up, or the mutations prove little.
        assert!(accepted > 0 && rejected > 0, "{name}: {accepted} accepted, {rejected} rejected");
    }

    #[test]
    fn policy_file_mutations() {
        run("policy", POLICY, parse_policy_file);
    }

    #[test]
    fn scope_file_mutations() {
        run("scope", SCOPE, parse_scope_file);
    }

    #[test]
    fn kes_policy_file_mutations() {
        run("kes", KES, parse_kes_policy_file);
    }
}
