//! Document formats of published IP lists: one module per format.
//!
//! A source document is turned into raw entries (strings such as `"192.0.2.1"` or
//! `"2001:db8::/48"`); `prefixes` validates them. Parsing never depends on the
//! content type (some providers serve JSON as `binary/octet-stream`); it only
//! explains a failure: HTML where a list was expected (a captive portal, an error
//! page) is named as such, with its content type.

pub(crate) mod json;
pub(crate) mod text;

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
    #[error(
        "source {source_id}: the server sent HTML ({}; a captive portal or an error page?) instead of {expected}",
        content_type.as_deref().map_or_else(|| "no Content-Type".to_owned(), |t| format!("Content-Type: {t}"))
    )]
    Html {
        source_id: String,
        content_type: Option<String>,
        /// `JSON` or `a text list`.
        expected: &'static str,
    },
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

/// Reads a fetched document like [`parse_document`]; when it fails on what is HTML
/// (by its Content-Type or its first character), says so instead.
pub(crate) fn parse_fetched(
    format: &Format,
    body: &[u8],
    source_id: &str,
    content_type: Option<&str>,
) -> Result<Parsed, SourceError> {
    let html = |expected| SourceError::Html {
        source_id: source_id.to_owned(),
        content_type: content_type.map(str::to_owned),
        expected,
    };
    match format {
        // No line of a text list starts with '<'.
        Format::Text if starts_with_markup(body) => Err(html("a text list")),
        Format::Json(_) => parse_document(format, body, source_id).map_err(|err| match err {
            SourceError::InvalidJson { .. }
                if starts_with_markup(body) || content_type.is_some_and(is_html_type) =>
            {
                html("JSON")
            }
            other => other,
        }),
        Format::Text => parse_document(format, body, source_id),
    }
}

/// Whether the body, after a BOM and white space, starts with '<'.
fn starts_with_markup(body: &[u8]) -> bool {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<')
}

fn is_html_type(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("text/html") || mime.eq_ignore_ascii_case("application/xhtml+xml")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn json() -> Format {
        Format::Json(json::Selector {
            items: vec!["hooks".into()],
            ..json::Selector::default()
        })
    }

    #[test]
    fn html_is_named_only_when_parsing_fails() {
        let page = b"\xEF\xBB\xBF\n <!doctype html><html></html>";
        let err =
            parse_fetched(&json(), page, "p/0", Some("text/html; charset=UTF-8")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "source p/0: the server sent HTML (Content-Type: text/html; charset=UTF-8; a captive portal or an error page?) instead of JSON"
        );
        let err = parse_fetched(&json(), page, "p/0", None).unwrap_err();
        assert!(
            err.to_string().contains("(no Content-Type; a captive"),
            "{err}"
        );
        // Not markup, but labelled HTML.
        let err =
            parse_fetched(&json(), b"Service Unavailable", "p/0", Some("TEXT/HTML")).unwrap_err();
        assert!(matches!(err, SourceError::Html { .. }), "{err}");
        // Labelled HTML, but valid JSON: the label is not trusted either way.
        let ok = parse_fetched(
            &json(),
            br#"{"hooks": ["192.0.2.1"]}"#,
            "p/0",
            Some("text/html"),
        );
        assert_eq!(ok.unwrap().entries, ["192.0.2.1"]);
        // Broken JSON that isn't HTML keeps the parser's message.
        let err =
            parse_fetched(&json(), b"{\"hooks\": [", "p/0", Some("application/json")).unwrap_err();
        assert!(matches!(err, SourceError::InvalidJson { .. }), "{err}");

        let err = parse_fetched(&Format::Text, page, "p/0", Some("text/html")).unwrap_err();
        assert!(err.to_string().ends_with("instead of a text list"), "{err}");
        assert_eq!(
            parse_fetched(&Format::Text, b"192.0.2.1\n", "p/0", Some("text/html"))
                .unwrap()
                .entries,
            ["192.0.2.1"]
        );
    }
}
