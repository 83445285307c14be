//! Where a problem is: a byte span of the document turned into a line, a column
//! and a field path (`provider[0].source[1].url`), in one place.

use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use toml_edit::{ArrayOfTables, ImDocument, Item, Key, Table, Value};

use super::*;

pub(super) struct Located<'a>(
    pub(super) &'a PathBuf,
    pub(super) usize,
    pub(super) usize,
    pub(super) &'a String,
    pub(super) &'a String,
);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Located(path, line, column, field, message) = self;
        write!(f, "{}:{line}:{column}: ", path.display())?;
        if !field.is_empty() {
            write!(f, "{field}: ")?;
        }
        write!(f, "{message}")
    }
}

/// What is wrong, and where: the value, key or table at `span`, or its `key`.
pub(super) struct Problem {
    /// `None`: the document itself.
    pub(super) span: Option<Range<usize>>,
    /// A key of the table at `span`, set (the error points at its value) or missing.
    pub(super) key: Option<&'static str>,
    pub(super) message: String,
}

impl Problem {
    pub(super) fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        let (span, key, message) = (Some(span), None, message.into());
        Problem { span, key, message }
    }

    pub(super) fn key(
        table: Option<Range<usize>>,
        key: &'static str,
        message: impl Into<String>,
    ) -> Self {
        let (span, key, message) = (table, Some(key), message.into());
        Problem { span, key, message }
    }

    pub(super) fn locate(self, text: &str, origin: &Path) -> ConfigError {
        let document = ImDocument::parse(text).ok();
        let root = document.as_ref().map(|d| Node::Table(d.as_table()));
        let (mut field, node) = match (root, &self.span) {
            (Some(root), Some(span)) => find(root, span).unwrap_or((String::new(), root)),
            (root, _) => (String::new(), root.unwrap_or(Node::Other)),
        };
        let mut at = self.span;
        if let Some(key) = self.key {
            field = format!("{field}.{key}");
            at = node.value_span(key).or(at);
        }
        let field = field.strip_prefix('.').unwrap_or(&field).to_owned();
        let before = &text[..at.map_or(0, |span| span.start).min(text.len())];
        ConfigError::Invalid {
            path: origin.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
            field,
            message: self.message,
        }
    }
}

/// A child's path segment (`.key` or `[index]`), its spans (key, value) and itself.
pub(super) type Child<'a> = (String, [Option<Range<usize>>; 2], Node<'a>);

/// A part of the parsed document, as [`find`] walks it.
#[derive(Clone, Copy)]
pub(super) enum Node<'a> {
    Table(&'a Table),
    Tables(&'a ArrayOfTables),
    Value(&'a Value),
    Other,
}

impl<'a> Node<'a> {
    pub(super) fn of(item: &'a Item) -> Self {
        match item {
            Item::Table(table) => Node::Table(table),
            Item::ArrayOfTables(tables) => Node::Tables(tables),
            Item::Value(value) => Node::Value(value),
            Item::None => Node::Other,
        }
    }

    pub(super) fn children(self) -> Vec<Child<'a>> {
        let entry = |(key, item): (&Key, &'a Item)| {
            let spans = [key.span(), item.span()];
            (format!(".{}", key.get()), spans, Node::of(item))
        };
        match self {
            Node::Table(table) => (table.iter())
                .filter_map(|(k, _)| table.get_key_value(k))
                .map(entry)
                .collect(),
            Node::Value(Value::InlineTable(table)) => (table.iter())
                .filter_map(|(k, _)| table.get_key_value(k))
                .map(entry)
                .collect(),
            Node::Tables(tables) => (tables.iter().enumerate())
                .map(|(i, t)| (format!("[{i}]"), [None, t.span()], Node::Table(t)))
                .collect(),
            Node::Value(Value::Array(values)) => (values.iter().enumerate())
                .map(|(i, v)| (format!("[{i}]"), [None, v.span()], Node::Value(v)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The span of the value of `key`, if this is a table that has it.
    pub(super) fn value_span(self, key: &str) -> Option<Range<usize>> {
        match self {
            Node::Table(table) => table.get(key)?.span(),
            Node::Value(Value::InlineTable(table)) => table.get(key)?.span(),
            _ => None,
        }
    }
}

/// The deepest key, table or value below `node` whose span holds `span`, and its
/// path (`.provider[0].source[1].url`, `.ports[1]`: one style for every error).
pub(super) fn find<'a>(node: Node<'a>, span: &Range<usize>) -> Option<(String, Node<'a>)> {
    let holds = |s: &Range<usize>| s.start <= span.start && span.end <= s.end;
    node.children()
        .into_iter()
        .find_map(|(segment, spans, child)| match find(child, span) {
            Some((rest, found)) => Some((segment + &rest, found)),
            None => spans
                .iter()
                .flatten()
                .any(holds)
                .then_some((segment, child)),
        })
}
