//! KES-style policies (seed 002): named sets of glob patterns over API paths, and the
//! binding of each identity (SHA-256 of its public key, 64 hex digits) to at most one.
//!
//! A policy has an `allow` list and a `deny` list. A path matched by a deny pattern is
//! denied, whatever else allows it; a path matched by an allow pattern and no deny pattern
//! is allowed; anything else is denied. An identity bound to no policy gets nothing here.
//!
//! The file, JSON (the crate reads no YAML):
//!
//! ```json
//! { "my-app": {
//!     "allow": ["/v1/key/create/my-app-*", "/v1/key/generate/my-app-*"],
//!     "deny": ["/v1/key/delete/*"],
//!     "identities": ["3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22"]
//! } }
//! ```
//!
//! Globs are the `glob` crate's with `require_literal_separator`: `*` matches any run of
//! characters within one segment, `?` one character, `[a-z]`/`[!a-z]` one character of a
//! class - none of them ever matches `/`, as with KES's Go `path.Match`. So `/v1/key/*`
//! matches `/v1/key/list` but not `/v1/key/create/k1`; `**` is refused rather than given
//! its cross-directory meaning. Matching is case-sensitive and by character, so `?`
//! matches one Unicode character, not one byte.
//!
//! What this module does not do: tenant scoping, the cluster admin's limits and the
//! certificate-granting confinement are applied by `authz.rs` around its answer.
//!
//! Invariants: a loaded [`ApiPattern`] starts with `/v1/`, has no empty segment, no `**`,
//! at most [`API_PATTERN_MAX_WILDCARDS`] stars, and literal API names it uses exist; every
//! bound identity is 64 lowercase hex digits and is bound to exactly one existing policy.

use std::collections::BTreeMap;
use std::fmt;

use glob::{MatchOptions, Pattern};

use crate::authz::api::{API_PATH_PREFIX, Api, ApiPath, Argument};
use crate::authz::error::{InvalidApiPattern, PolicyFileError, PolicyFileKind};
use crate::authz::error::{PolicyFileProblem, shorten};
use crate::authz::json::{FieldPath, FileReader, Json};
use crate::constants::{
    API_PATTERN_MAX_BYTES, API_PATTERN_MAX_WILDCARDS, KES_IDENTITIES_MAX, KES_POLICIES_MAX,
    KES_POLICY_PATTERNS_MAX,
};

/// One glob pattern over API paths, checked; see the module's invariants.
#[derive(Clone)]
pub struct ApiPattern {
    text: String,
    glob: Pattern,
}

/// One named policy.
#[derive(Debug, Clone)]
pub struct KesPolicy {
    name: String,
    allow: Vec<ApiPattern>,
    deny: Vec<ApiPattern>,
}

/// A policy's answer for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KesVerdict {
    /// A deny pattern matched: denied, whatever else allows it.
    Denied,
    /// An allow pattern matched and no deny pattern did.
    Allowed,
    /// No pattern matched.
    NotAllowed,
}

/// Every policy and every identity binding, as loaded from one file.
#[derive(Debug, Clone, Default)]
pub struct KesPolicies {
    policies: BTreeMap<String, KesPolicy>,
    /// Identity (64 lowercase hex) to policy name.
    bindings: BTreeMap<String, String>,
}

const MATCH_OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

const FIELD_ALLOW: &str = "allow";
const FIELD_DENY: &str = "deny";
const FIELD_IDENTITIES: &str = "identities";

impl ApiPattern {
    pub fn parse(text: &str) -> Result<ApiPattern, InvalidApiPattern> {
        check_pattern_shape(text)?;
        let glob = Pattern::new(text)
            .map_err(|error| InvalidApiPattern::Glob { position: error.pos, reason: error.msg })?;
        check_pattern_names(text)?;
        Ok(ApiPattern { text: text.to_owned(), glob })
    }

    pub fn matches(&self, path: &ApiPath) -> bool {
        self.glob.matches_with(path.as_str(), MATCH_OPTIONS)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for ApiPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiPattern({:?})", self.text)
    }
}

impl PartialEq for ApiPattern {
    fn eq(&self, other: &ApiPattern) -> bool {
        self.text == other.text
    }
}

impl Eq for ApiPattern {}

fn check_pattern_shape(text: &str) -> Result<(), InvalidApiPattern> {
    if text.is_empty() {
        return Err(InvalidApiPattern::Empty);
    }
    if text.len() > API_PATTERN_MAX_BYTES {
        let len_bytes = text.len();
        return Err(InvalidApiPattern::TooLong { len_bytes, max_bytes: API_PATTERN_MAX_BYTES });
    }
    if text.chars().any(char::is_control) {
        return Err(InvalidApiPattern::ControlCharacter);
    }
    let Some(rest) = text.strip_prefix(API_PATH_PREFIX) else {
        return Err(InvalidApiPattern::NotVersion1);
    };
    if text.contains("**") {
        return Err(InvalidApiPattern::DoubleStar);
    }
    let stars = text.matches('*').count();
    if stars > API_PATTERN_MAX_WILDCARDS {
        let max = API_PATTERN_MAX_WILDCARDS;
        return Err(InvalidApiPattern::TooManyWildcards { count: stars, max });
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|segment| segment.is_empty()) {
        return Err(InvalidApiPattern::EmptySegment);
    }
    match segments.len() {
        0 | 1 => Err(InvalidApiPattern::TooFewSegments),
        2 | 3 => Ok(()),
        _ => Err(InvalidApiPattern::TooManySegments),
    }
}

/// Where the `<api>` and `<op>` segments are literal, they must name the product's APIs:
/// a typo in a policy would otherwise silently allow nothing.
fn check_pattern_names(text: &str) -> Result<(), InvalidApiPattern> {
    let literal = |segment: &str| !segment.contains(['*', '?', '[']);
    let rest = &text[API_PATH_PREFIX.len()..];
    let segments: Vec<&str> = rest.split('/').collect();
    let (api, op, has_argument) = (segments[0], segments[1], segments.len() == 3);
    if !literal(api) {
        return Ok(());
    }
    if !Api::is_api_segment(api) {
        return Err(InvalidApiPattern::UnknownApi);
    }
    if !literal(op) {
        return Ok(());
    }
    let named = Api::from_segments(api, op).ok_or(InvalidApiPattern::UnknownOperation)?;
    let takes_argument = named.spec().argument != Argument::None;
    if has_argument && !takes_argument {
        return Err(InvalidApiPattern::ArgumentNotTaken);
    }
    Ok(())
}

impl KesPolicy {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn allow(&self) -> &[ApiPattern] {
        &self.allow
    }

    pub fn deny(&self) -> &[ApiPattern] {
        &self.deny
    }

    /// Deny wins; only an explicit allow allows.
    pub fn verdict(&self, path: &ApiPath) -> KesVerdict {
        if self.deny.iter().any(|pattern| pattern.matches(path)) {
            KesVerdict::Denied
        } else if self.allow.iter().any(|pattern| pattern.matches(path)) {
            KesVerdict::Allowed
        } else {
            KesVerdict::NotAllowed
        }
    }
}

impl KesPolicies {
    /// Reads a KES policy file; see the module documentation for its form.
    pub fn parse(bytes: &[u8]) -> Result<KesPolicies, PolicyFileError> {
        let reader = FileReader { file: PolicyFileKind::KesPolicy };
        let document = reader.parse(bytes)?;
        let root = FieldPath::root();
        let entries = reader.object(&document, &root, "policies", KES_POLICIES_MAX)?;
        let mut policies = KesPolicies::default();
        for (name, body) in entries {
            let at = root.key(name);
            reader.name(name, &at)?;
            let (policy, identities) = parse_policy(&reader, name, body, &at)?;
            for (index, identity) in identities.into_iter().enumerate() {
                policies.bind(&reader, identity, name, &at.key(FIELD_IDENTITIES).index(index))?;
            }
            policies.policies.insert(name.clone(), policy);
        }
        Ok(policies)
    }

    /// The policy bound to a KES identity (64 hex digits, either case).
    pub fn policy_of(&self, key_identity: &str) -> Option<&KesPolicy> {
        let name = self.bindings.get(&key_identity.to_ascii_lowercase())?;
        let policy = self.policies.get(name);
        assert!(policy.is_some(), "every binding names a loaded policy");
        policy
    }

    pub fn policy(&self, name: &str) -> Option<&KesPolicy> {
        self.policies.get(name)
    }

    pub fn policies(&self) -> impl Iterator<Item = &KesPolicy> {
        self.policies.values()
    }

    /// `(identity, policy name)` pairs, identities in lowercase hex.
    pub fn bindings(&self) -> impl Iterator<Item = (&str, &str)> {
        self.bindings.iter().map(|(identity, policy)| (identity.as_str(), policy.as_str()))
    }

    fn bind(
        &mut self,
        reader: &FileReader,
        identity: &str,
        policy: &str,
        at: &FieldPath,
    ) -> Result<(), PolicyFileError> {
        if !is_key_identity(identity) {
            let reason = "not 64 hex digits (SHA-256 of a public key)";
            let problem = PolicyFileProblem::BadIdentity { identity: shorten(identity), reason };
            return Err(reader.error(at, problem));
        }
        let identity = identity.to_ascii_lowercase();
        if self.bindings.len() >= KES_IDENTITIES_MAX {
            let problem =
                PolicyFileProblem::TooMany { what: "identities", max: KES_IDENTITIES_MAX };
            return Err(reader.error(at, problem));
        }
        if let Some(first) = self.bindings.get(&identity) {
            let problem = if first == policy {
                PolicyFileProblem::DuplicateEntry { entry: identity }
            } else {
                PolicyFileProblem::IdentityInTwoPolicies { identity, first_policy: first.clone() }
            };
            return Err(reader.error(at, problem));
        }
        self.bindings.insert(identity, policy.to_owned());
        Ok(())
    }
}

/// Why an edit of the policies through the key service was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KesEditError {
    /// A policy name outside `[A-Za-z0-9_.-]{1,128}`.
    BadName,
    BadPattern {
        index: usize,
        problem: InvalidApiPattern,
    },
    /// An allow list must name at least one pattern; lists are bounded.
    BadList,
    /// Not 64 hex digits.
    BadIdentity,
    NoSuchPolicy,
    TooMany,
}

impl fmt::Display for KesEditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KesEditError::BadName => f.write_str("policy names are 1-128 of [A-Za-z0-9_.-]"),
            KesEditError::BadPattern { index, problem } => {
                write!(f, "pattern {index}: {problem}")
            }
            KesEditError::BadList => f.write_str("an allow list of 1 to 128 distinct patterns"),
            KesEditError::BadIdentity => f.write_str("an identity is 64 hex digits"),
            KesEditError::NoSuchPolicy => f.write_str("no such policy"),
            KesEditError::TooMany => f.write_str("too many policies or identities"),
        }
    }
}

impl std::error::Error for KesEditError {}

impl KesPolicies {
    /// The policies and bindings in the file form [`KesPolicies::parse`] reads back.
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let mut file = serde_json::Map::new();
        for (name, policy) in &self.policies {
            fn texts(patterns: &[ApiPattern]) -> Vec<&str> {
                patterns.iter().map(ApiPattern::as_str).collect()
            }
            let identities: Vec<&str> = self
                .bindings
                .iter()
                .filter(|(_, bound)| *bound == name)
                .map(|(identity, _)| identity.as_str())
                .collect();
            // The file form has no empty lists: an empty deny or identity list is left out.
            let mut entry = serde_json::Map::new();
            entry.insert(FIELD_ALLOW.to_owned(), serde_json::json!(texts(&policy.allow)));
            if !policy.deny.is_empty() {
                entry.insert(FIELD_DENY.to_owned(), serde_json::json!(texts(&policy.deny)));
            }
            if !identities.is_empty() {
                entry.insert(FIELD_IDENTITIES.to_owned(), serde_json::json!(identities));
            }
            file.insert(name.clone(), serde_json::Value::Object(entry));
        }
        serde_json::to_vec(&serde_json::Value::Object(file)).unwrap_or_default()
    }

    /// Creates or replaces the policy `name`; identities bound to it stay bound.
    pub fn put_policy(
        &mut self,
        name: &str,
        allow: &[&str],
        deny: &[&str],
    ) -> Result<(), KesEditError> {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if name.is_empty()
            || name.len() > crate::constants::POLICY_NAME_MAX_BYTES
            || !name.chars().all(plain)
        {
            return Err(KesEditError::BadName);
        }
        if !self.policies.contains_key(name) && self.policies.len() >= KES_POLICIES_MAX {
            return Err(KesEditError::TooMany);
        }
        let parse_list = |texts: &[&str], may_be_empty: bool| {
            if (!may_be_empty && texts.is_empty()) || texts.len() > KES_POLICY_PATTERNS_MAX {
                return Err(KesEditError::BadList);
            }
            let mut patterns: Vec<ApiPattern> = Vec::with_capacity(texts.len());
            for (index, text) in texts.iter().enumerate() {
                let pattern = ApiPattern::parse(text)
                    .map_err(|problem| KesEditError::BadPattern { index, problem })?;
                if patterns.contains(&pattern) {
                    return Err(KesEditError::BadList);
                }
                patterns.push(pattern);
            }
            Ok(patterns)
        };
        let policy = KesPolicy {
            name: name.to_owned(),
            allow: parse_list(allow, false)?,
            deny: parse_list(deny, true)?,
        };
        self.policies.insert(name.to_owned(), policy);
        Ok(())
    }

    /// Removes a policy and unbinds every identity bound to it. False if it was absent.
    pub fn remove_policy(&mut self, name: &str) -> bool {
        let removed = self.policies.remove(name).is_some();
        self.bindings.retain(|_, policy| policy != name);
        removed
    }

    /// Binds `identity` to `policy`, replacing any earlier binding (an identity has at
    /// most one policy). Returns the policy it was bound to before.
    pub fn assign(&mut self, identity: &str, policy: &str) -> Result<Option<String>, KesEditError> {
        if !is_key_identity(identity) {
            return Err(KesEditError::BadIdentity);
        }
        if !self.policies.contains_key(policy) {
            return Err(KesEditError::NoSuchPolicy);
        }
        let identity = identity.to_ascii_lowercase();
        if !self.bindings.contains_key(&identity) && self.bindings.len() >= KES_IDENTITIES_MAX {
            return Err(KesEditError::TooMany);
        }
        Ok(self.bindings.insert(identity, policy.to_owned()))
    }

    /// Unbinds `identity`; returns the policy it was bound to.
    pub fn unassign(&mut self, identity: &str) -> Option<String> {
        self.bindings.remove(&identity.to_ascii_lowercase())
    }
}

fn parse_policy<'a>(
    reader: &FileReader,
    name: &str,
    body: &'a Json,
    at: &FieldPath,
) -> Result<(KesPolicy, Vec<&'a str>), PolicyFileError> {
    let fields = reader.object(body, at, "fields", 3)?;
    let mut policy = KesPolicy { name: name.to_owned(), allow: Vec::new(), deny: Vec::new() };
    let mut identities = Vec::new();
    for (field, value) in fields {
        let at = at.key(field);
        match field.as_str() {
            FIELD_ALLOW => policy.allow = parse_patterns(reader, value, &at)?,
            FIELD_DENY => policy.deny = parse_patterns(reader, value, &at)?,
            FIELD_IDENTITIES => {
                identities = reader.strings(value, &at, "identities", KES_IDENTITIES_MAX)?;
            }
            other => {
                let problem = PolicyFileProblem::UnknownField { name: shorten(other) };
                return Err(reader.error(&at, problem));
            }
        }
    }
    if !fields.iter().any(|(field, _)| field == FIELD_ALLOW) {
        return Err(reader.error(at, PolicyFileProblem::MissingField { name: FIELD_ALLOW }));
    }
    Ok((policy, identities))
}

fn parse_patterns(
    reader: &FileReader,
    value: &Json,
    at: &FieldPath,
) -> Result<Vec<ApiPattern>, PolicyFileError> {
    let texts = reader.strings(value, at, "patterns", KES_POLICY_PATTERNS_MAX)?;
    let mut patterns: Vec<ApiPattern> = Vec::with_capacity(texts.len());
    for (index, text) in texts.into_iter().enumerate() {
        let at = at.index(index);
        let pattern = ApiPattern::parse(text).map_err(|problem| {
            reader.error(&at, PolicyFileProblem::BadPattern { pattern: shorten(text), problem })
        })?;
        if patterns.contains(&pattern) {
            let problem = PolicyFileProblem::DuplicateEntry { entry: shorten(text) };
            return Err(reader.error(&at, problem));
        }
        patterns.push(pattern);
    }
    Ok(patterns)
}

/// True for 64 hex digits, the form of a SHA-256 identity.
pub(crate) fn is_key_identity(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether an error's problem is the one a case expects.
    type ProblemCheck = fn(&PolicyFileProblem) -> bool;

    const ID_A: &str = "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22";
    const ID_B: &str = "0000000000000000000000000000000000000000000000000000000000000b0b";

    #[test]
    fn policies_written_out_read_back_the_same() {
        let mut policies = KesPolicies::default();
        policies.put_policy("app", &["/v1/key/generate/app-*"], &["/v1/key/delete/*"]).unwrap();
        policies.put_policy("ops", &["/v1/key/status"], &[]).unwrap();
        policies.assign(ID_A, "app").unwrap();
        policies.assign(ID_B, "ops").unwrap();
        let again = KesPolicies::parse(&policies.to_file_bytes()).unwrap();
        assert_eq!(again.to_file_bytes(), policies.to_file_bytes());
        assert_eq!(again.policy_of(ID_A).map(KesPolicy::name), Some("app"));
        assert_eq!(again.policy_of(ID_B).map(KesPolicy::name), Some("ops"));
        let app = again.policy("app").unwrap();
        assert_eq!(app.allow()[0].as_str(), "/v1/key/generate/app-*");
        assert_eq!(app.deny()[0].as_str(), "/v1/key/delete/*");
        // A policy nobody is bound to survives too; none at all is an empty file.
        assert!(again.policy("ops").is_some());
        let none = KesPolicies::parse(&KesPolicies::default().to_file_bytes()).unwrap();
        assert_eq!(none.policies().count(), 0);
    }

    fn path(text: &str) -> ApiPath {
        ApiPath::parse(text).unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    fn matches(pattern: &str, text: &str) -> bool {
        ApiPattern::parse(pattern).unwrap().matches(&path(text))
    }

    #[test]
    fn star_stays_within_one_segment() {
        assert!(matches("/v1/key/create/my-key-*", "/v1/key/create/my-key-1"));
        assert!(matches("/v1/key/create/my-key-*", "/v1/key/create/my-key-"));
        assert!(!matches("/v1/key/create/my-key-*", "/v1/key/create/other"));
        assert!(!matches("/v1/key/create/my-key-*", "/v1/key/delete/my-key-1"));
        // `*` in the op position matches one op, never the op and its argument.
        assert!(matches("/v1/key/*", "/v1/key/list"));
        assert!(!matches("/v1/key/*", "/v1/key/create/k1"));
        assert!(matches("/v1/key/*/*", "/v1/key/create/k1"));
        assert!(!matches("/v1/key/*/*", "/v1/key/list"));
        assert!(matches("/v1/*/list", "/v1/storage/list"));
        assert!(!matches("/v1/*/list", "/v1/key/list/x"));
    }

    #[test]
    fn question_mark_and_brackets() {
        assert!(matches("/v1/key/create/k?", "/v1/key/create/k1"));
        assert!(!matches("/v1/key/create/k?", "/v1/key/create/k12"));
        assert!(!matches("/v1/key/create/k?", "/v1/key/create/k"));
        assert!(matches("/v1/key/create/k[0-9]", "/v1/key/create/k7"));
        assert!(!matches("/v1/key/create/k[0-9]", "/v1/key/create/kx"));
        assert!(matches("/v1/key/create/k[!0-9]", "/v1/key/create/kx"));
        assert!(!matches("/v1/key/create/k[!0-9]", "/v1/key/create/k7"));
        // A bracketed star is a literal star.
        assert!(matches("/v1/key/list/[*]", "/v1/key/list/*"));
        assert!(!matches("/v1/key/list/[*]", "/v1/key/list/a"));
        // Neither `?` nor a negated class crosses a separator.
        assert!(!matches("/v1/key/create?k1", "/v1/key/create/k1"));
        assert!(!matches("/v1/key/create[!a]k1", "/v1/key/create/k1"));
        assert!(!matches("/v1/key/create*", "/v1/key/create/k1"));
    }

    #[test]
    fn matching_is_case_sensitive_and_by_character() {
        assert!(!matches("/v1/key/create/My-*", "/v1/key/create/my-1"));
        assert!(matches("/v1/key/create/ключ-?", "/v1/key/create/ключ-я"));
        assert!(matches("/v1/key/create/?", "/v1/key/create/я"));
        assert!(!matches("/v1/key/create/??", "/v1/key/create/я"));
        assert!(matches("/v1/key/create/*-🔑", "/v1/key/create/x-🔑"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        use InvalidApiPattern::*;
        let long = format!("/v1/key/create/{}", "k".repeat(API_PATTERN_MAX_BYTES));
        let cases: Vec<(&str, InvalidApiPattern)> = vec![
            ("", Empty),
            ("*", NotVersion1),
            ("/*", NotVersion1),
            ("v1/key/list", NotVersion1),
            ("/v2/key/list", NotVersion1),
            ("/v1/**", DoubleStar),
            ("/v1/key/**", DoubleStar),
            ("/v1/key/create/a**", DoubleStar),
            ("/v1/key/create/", EmptySegment),
            ("/v1/key/list/", EmptySegment),
            ("/v1//list", EmptySegment),
            ("/v1/", EmptySegment),
            ("/v1/key", TooFewSegments),
            ("/v1/*", TooFewSegments),
            ("/v1/key/create/a/b", TooManySegments),
            ("/v1/key/create/[/]", TooManySegments),
            ("/v1/key/create/a\n", ControlCharacter),
            ("/v1/kye/create/*", UnknownApi),
            ("/v1/key/craete/*", UnknownOperation),
            ("/v1/storage/list/*", ArgumentNotTaken),
            (&long, TooLong { len_bytes: long.len(), max_bytes: API_PATTERN_MAX_BYTES }),
        ];
        for (text, expected) in cases {
            assert_eq!(ApiPattern::parse(text), Err(expected), "{text:?}");
        }
        assert!(matches!(ApiPattern::parse("/v1/key/create/[a-"), Err(Glob { .. })));
        let stars = format!("/v1/key/create/{}", "a*".repeat(API_PATTERN_MAX_WILDCARDS + 1));
        assert!(matches!(ApiPattern::parse(&stars), Err(TooManyWildcards { .. })));
    }

    #[test]
    fn wildcards_in_api_positions_are_not_name_checked() {
        assert!(ApiPattern::parse("/v1/*/list").is_ok());
        assert!(ApiPattern::parse("/v1/k?y/create/*").is_ok());
        assert!(ApiPattern::parse("/v1/key/*/my-*").is_ok());
    }

    #[test]
    fn worst_case_backtracking_stays_bounded() {
        // As many stars as allowed against the longest argument that never matches.
        let pattern = format!("/v1/key/create/{}b", "a*".repeat(API_PATTERN_MAX_WILDCARDS));
        let pattern = ApiPattern::parse(&pattern).unwrap();
        let argument = "a".repeat(crate::constants::API_ARGUMENT_MAX_BYTES);
        let started = std::time::Instant::now();
        assert!(!pattern.matches(&path(&format!("/v1/key/create/{argument}"))));
        let elapsed = started.elapsed();
        assert!(elapsed < std::time::Duration::from_secs(1), "took {elapsed:?}");
    }

    fn policies(json: &str) -> KesPolicies {
        KesPolicies::parse(json.as_bytes()).unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn deny_wins_over_allow() {
        let json = format!(
            r#"{{"app": {{"allow": ["/v1/key/*/*"], "deny": ["/v1/key/delete/*"],
                "identities": ["{ID_A}"]}}}}"#
        );
        let loaded = policies(&json);
        let policy = loaded.policy_of(ID_A).unwrap();
        assert_eq!(policy.verdict(&path("/v1/key/create/k")), KesVerdict::Allowed);
        assert_eq!(policy.verdict(&path("/v1/key/delete/k")), KesVerdict::Denied);
        assert_eq!(policy.verdict(&path("/v1/key/list")), KesVerdict::NotAllowed);
        assert_eq!(policy.verdict(&path("/v1/storage/list")), KesVerdict::NotAllowed);
        // The identity matches in either case; another identity has no policy.
        assert!(loaded.policy_of(&ID_A.to_ascii_uppercase()).is_some());
        assert!(loaded.policy_of(ID_B).is_none());
    }

    #[test]
    fn each_identity_has_at_most_one_policy() {
        let json = format!(
            r#"{{"a": {{"allow": ["/v1/key/list"], "identities": ["{ID_A}"]}},
                "b": {{"allow": ["/v1/key/list"], "identities": ["{}"]}}}}"#,
            ID_A.to_ascii_uppercase()
        );
        let error = KesPolicies::parse(json.as_bytes()).unwrap_err();
        assert_eq!(error.field, "$.b.identities[0]");
        assert!(matches!(
            error.problem,
            PolicyFileProblem::IdentityInTwoPolicies { ref first_policy, .. } if first_policy == "a"
        ));
    }

    #[test]
    fn file_errors_name_their_field() {
        use PolicyFileProblem as P;
        let cases: Vec<(String, &str, ProblemCheck)> = vec![
            ("[]".into(), "$", |p| matches!(p, P::WrongType { .. })),
            ("{\"a\": {}}".into(), "$.a", |p| matches!(p, P::MissingField { name: "allow" })),
            (
                r#"{"a": {"allow": ["/v1/key/list"]}, "a": {"allow": ["/v1/key/list"]}}"#.into(),
                "$.a",
                |p| matches!(p, P::DuplicateKey { .. }),
            ),
            (r#"{"a": {"allow": ["/v1/key/list"], "allw": []}}"#.into(), "$.a.allw", |p| {
                matches!(p, P::UnknownField { .. })
            }),
            (r#"{"a": {"allow": []}}"#.into(), "$.a.allow", |p| matches!(p, P::EmptyList)),
            (r#"{"a": {"allow": ["/v1/key/list", "*"]}}"#.into(), "$.a.allow[1]", |p| {
                matches!(p, P::BadPattern { problem: InvalidApiPattern::NotVersion1, .. })
            }),
            (r#"{"a": {"allow": ["/v1/key/list", "/v1/key/list"]}}"#.into(), "$.a.allow[1]", |p| {
                matches!(p, P::DuplicateEntry { .. })
            }),
            (
                r#"{"a": {"allow": ["/v1/key/list"], "identities": ["abc"]}}"#.into(),
                "$.a.identities[0]",
                |p| matches!(p, P::BadIdentity { .. }),
            ),
            (
                format!(
                    r#"{{"a": {{"allow": ["/v1/key/list"], "identities": ["{ID_A}", "{ID_A}"]}}}}"#
                ),
                "$.a.identities[1]",
                |p| matches!(p, P::DuplicateEntry { .. }),
            ),
            (r#"{"a b": {"allow": ["/v1/key/list"]}}"#.into(), "$[\"a b\"]", |p| {
                matches!(p, P::BadName { .. })
            }),
            (r#"{"a": {"allow": [1]}}"#.into(), "$.a.allow[0]", |p| {
                matches!(p, P::WrongType { found: "a number", .. })
            }),
            ("{\"a\": ".into(), "$", |p| matches!(p, P::Syntax { .. })),
        ];
        for (json, field, expected) in cases {
            let error = KesPolicies::parse(json.as_bytes()).unwrap_err();
            assert_eq!(error.file, PolicyFileKind::KesPolicy, "{json}");
            assert_eq!(error.field, field, "{json}: {error}");
            assert!(expected(&error.problem), "{json}: {error}");
            assert!(error.to_string().starts_with("KES policy file, field "), "{error}");
        }
    }

    #[test]
    fn a_policy_without_identities_binds_nobody() {
        let loaded = policies(r#"{"spare": {"allow": ["/v1/key/list"], "deny": ["/v1/*/*"]}}"#);
        assert!(loaded.policy("spare").is_some());
        assert_eq!(loaded.bindings().count(), 0);
    }
}
