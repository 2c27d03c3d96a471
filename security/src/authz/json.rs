//! A JSON tree that keeps what `serde_json::Value` drops: every key of an object in file
//! order, duplicates included. The policy, scope and KES policy files are read into it
//! first and validated by hand, so that every error names the field it is about
//! (`$.Root.Device[1]`) and a duplicated key is an error rather than a silent overwrite.
//!
//! What it does not do: numbers are kept only as "a number" (no file here needs one), and
//! it reads no files (callers pass bytes, already bounded in size). serde_json's own
//! recursion limit (128 levels) bounds the nesting, so no input overflows the stack.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::authz::error::{PolicyFileError, PolicyFileKind, PolicyFileProblem, shorten};
use crate::constants::{POLICY_FILE_MAX_BYTES, POLICY_NAME_MAX_BYTES};

/// One JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    Null,
    Bool(bool),
    Number,
    String(String),
    Array(Vec<Json>),
    /// Keys in file order; a key may appear more than once.
    Object(Vec<(String, Json)>),
}

/// Where a syntax error is in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
}

impl Json {
    /// Parses a whole document; trailing non-space bytes are a syntax error.
    pub fn parse(bytes: &[u8]) -> Result<Json, SyntaxError> {
        serde_json::from_slice(bytes)
            .map_err(|error| SyntaxError { line: error.line(), column: error.column() })
    }

    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// A path into a document, `$` for the root, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root() -> FieldPath {
        FieldPath("$".to_owned())
    }

    /// The path of `key` under this one; keys are quoted when they are not plain words, so
    /// a key holding `.` or `[` cannot make the path ambiguous.
    pub fn key(&self, key: &str) -> FieldPath {
        let plain = !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if plain {
            FieldPath(format!("{}.{key}", self.0))
        } else {
            FieldPath(format!("{}[{:?}]", self.0, shorten(key)))
        }
    }

    pub fn index(&self, index: usize) -> FieldPath {
        FieldPath(format!("{}[{index}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json, E> {
        Ok(Json::Number)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json, E> {
        Ok(Json::Number)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Number)
    }

    fn visit_str<E>(self, value: &str) -> Result<Json, E> {
        Ok(Json::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Json, E> {
        Ok(Json::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

/// Reads one kind of file into checked pieces; every error names the file and the field.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileReader {
    pub file: PolicyFileKind,
}

impl FileReader {
    /// Checks the size, then parses the document.
    pub fn parse(&self, bytes: &[u8]) -> Result<Json, PolicyFileError> {
        let root = FieldPath::root();
        if bytes.len() > POLICY_FILE_MAX_BYTES {
            let problem = PolicyFileProblem::TooLarge {
                len_bytes: bytes.len(),
                max_bytes: POLICY_FILE_MAX_BYTES,
            };
            return Err(self.error(&root, problem));
        }
        Json::parse(bytes).map_err(|SyntaxError { line, column }| {
            self.error(&root, PolicyFileProblem::Syntax { line, column })
        })
    }

    /// The entries of an object, refusing a key that appears twice or more than `max`
    /// entries.
    pub fn object<'a>(
        &self,
        value: &'a Json,
        at: &FieldPath,
        what: &'static str,
        max: usize,
    ) -> Result<&'a [(String, Json)], PolicyFileError> {
        let Json::Object(entries) = value else {
            return Err(self.wrong_type(at, "an object", value));
        };
        if entries.len() > max {
            return Err(self.error(at, PolicyFileProblem::TooMany { what, max }));
        }
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        for (key, _) in entries {
            if !seen.insert(key.as_str()) {
                let problem = PolicyFileProblem::DuplicateKey { key: shorten(key) };
                return Err(self.error(&at.key(key), problem));
            }
        }
        Ok(entries)
    }

    /// The strings of an array of strings, at most `max` of them; empty is an error.
    pub fn strings<'a>(
        &self,
        value: &'a Json,
        at: &FieldPath,
        what: &'static str,
        max: usize,
    ) -> Result<Vec<&'a str>, PolicyFileError> {
        let Json::Array(items) = value else {
            return Err(self.wrong_type(at, "an array of strings", value));
        };
        if items.is_empty() {
            return Err(self.error(at, PolicyFileProblem::EmptyList));
        }
        if items.len() > max {
            return Err(self.error(at, PolicyFileProblem::TooMany { what, max }));
        }
        let mut strings = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match item {
                Json::String(text) => strings.push(text.as_str()),
                other => return Err(self.wrong_type(&at.index(index), "a string", other)),
            }
        }
        Ok(strings)
    }

    /// Refuses a role or policy name that is empty, over 128 bytes, or holds other than
    /// `[A-Za-z0-9_.-]`: names appear in logs and audit records and must stay plain.
    pub fn name(&self, name: &str, at: &FieldPath) -> Result<(), PolicyFileError> {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if name.is_empty() || name.len() > POLICY_NAME_MAX_BYTES || !name.chars().all(plain) {
            return Err(self.error(at, PolicyFileProblem::BadName { name: shorten(name) }));
        }
        Ok(())
    }

    pub fn error(&self, at: &FieldPath, problem: PolicyFileProblem) -> PolicyFileError {
        PolicyFileError::new(self.file, at, problem)
    }

    fn wrong_type(&self, at: &FieldPath, expected: &'static str, found: &Json) -> PolicyFileError {
        self.error(at, PolicyFileProblem::WrongType { expected, found: found.kind() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_duplicate_keys_in_order() {
        let json = Json::parse(br#"{"a": 1, "b": [true, null], "a": "x"}"#).unwrap();
        let Json::Object(entries) = json else { panic!("not an object") };
        let keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "a"]);
        assert_eq!(entries[1].1, Json::Array(vec![Json::Bool(true), Json::Null]));
        assert_eq!(entries[2].1, Json::String("x".to_owned()));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let error = Json::parse(b"{\n  \"a\": [1,\n}").unwrap_err();
        assert_eq!(error.line, 3);
        assert!(Json::parse(b"{} trailing").is_err());
        assert!(Json::parse(b"").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        assert!(Json::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn field_paths_quote_unusual_keys() {
        let root = FieldPath::root();
        assert_eq!(root.key("Root").key("Device").index(1).as_str(), "$.Root.Device[1]");
        assert_eq!(root.key("a.b").as_str(), "$[\"a.b\"]");
        assert_eq!(root.key("").as_str(), "$[\"\"]");
    }
}
