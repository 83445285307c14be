//! Document formats of published IP lists: one module per format.
//!
//! A source document is turned into raw entries (strings such as `"192.0.2.1"` or
//! `"2001:db8::/48"`); `prefixes` validates them. Parsing never looks at the
//! content type: some providers serve JSON as `binary/octet-stream`.

pub mod json;
pub mod text;

use serde::Serialize;
use thiserror::Error;

/// How a fetched document is read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum Format {
    /// A JSON document, with a selection of the records that hold the prefixes.
    Json(json::Selector),
    /// One address or prefix a line, `#` comments, blank lines.
    Text,
}

impl Format {
    /// The short name used in the configuration (`json`, `text`).
    pub fn name(&self) -> &'static str {
        match self {
            Format::Json(_) => "json",
            Format::Text => "text",
        }
    }
}

/// Raw entries read from a document, and the provider's version of it if it has one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    pub entries: Vec<String>,
    /// The provider-side serial (Atlassian `syncToken`, Datadog `version`, ...).
    pub serial: Option<String>,
}

/// Why a document could not be read. Every variant names the source.
#[derive(Debug, Error, PartialEq)]
pub enum SourceError {
    #[error("source {source_id}: the document is not valid JSON: {detail}")]
    InvalidJson { source_id: String, detail: String },
    #[error("source {source_id}: the document is not UTF-8 text (line {line})")]
    NotUtf8 { source_id: String, line: usize },
    #[error(
        "source {source_id}: path `{path}` does not exist in the document (missing key `{missing}`)"
    )]
    PathNotFound {
        source_id: String,
        path: String,
        missing: String,
    },
    #[error("source {source_id}: path `{path}` is {found}, expected an array")]
    NotAnArray {
        source_id: String,
        path: String,
        found: &'static str,
    },
    #[error("source {source_id}: `{path}[{index}]` is {found}, expected {expected}")]
    BadItem {
        source_id: String,
        path: String,
        index: usize,
        found: &'static str,
        expected: &'static str,
    },
    #[error("source {source_id}: record `{path}[{index}]` has no field {fields}")]
    MissingField {
        source_id: String,
        path: String,
        index: usize,
        fields: String,
    },
}

/// Reads the raw entries of a document.
pub fn parse(format: &Format, body: &[u8], source_id: &str) -> Result<Vec<String>, SourceError> {
    parse_document(format, body, source_id).map(|parsed| parsed.entries)
}

/// Reads the raw entries of a document and its serial, if the format selects one.
pub fn parse_document(
    format: &Format,
    body: &[u8],
    source_id: &str,
) -> Result<Parsed, SourceError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    match format {
        Format::Json(selector) => json::parse(selector, body, source_id),
        Format::Text => text::parse(body, source_id).map(|entries| Parsed {
            entries,
            serial: None,
        }),
    }
}

/// A short description of a JSON value's type, for error messages.
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
