//! What a refresh reports: each source's outcome, and what the operator sees of it.

use std::{fmt, sync::Arc, time::SystemTime};

use reqwest::Url;
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

use super::guards::Refusal;
use crate::{
    config::SourceKind,
    prefixes::PrefixError,
    sources::{dns::DnsError, format::SourceError, http::FetchError},
    store::rfc3339,
};

/// Per-call overrides.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefreshOptions {
    /// Bypass the empty and shrink guards for every source (`--force`).
    pub force: bool,
}

/// Why a fetched list could not be taken: the fetch, the document or its entries.
#[derive(Debug, Error)]
pub enum Failure {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("{error}{}", redirect_note(.redirected_to.as_ref()))]
    Parse {
        error: SourceError,
        /// Where the document came from, when a redirect left the configured origin.
        redirected_to: Option<Url>,
    },
    #[error(transparent)]
    Invalid(#[from] PrefixError),
    #[error("304 Not Modified, but no document is stored")]
    NotModifiedWithoutDocument,
    #[error("the fetch task did not complete")]
    TaskLost,
}

pub(super) fn redirect_note(url: Option<&Url>) -> String {
    url.map(|url| format!(" (redirected to {url})"))
        .unwrap_or_default()
}

/// Failures are equal when they say the same: the I/O errors inside have no equality.
impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// The result of one source in one refresh.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// A static list: nothing to fetch.
    Static,
    /// The set in force changed (counts of prefixes added and removed).
    Updated { added: usize, removed: usize },
    /// Fetched, and the selected set is the one in force.
    Unchanged,
    /// 304 Not Modified; for a dns source, the last answer is within its TTL, so
    /// the name was not asked again.
    NotModified,
    /// Fetch, parse or validation failed; the set in force is kept.
    Failed {
        #[serde(serialize_with = "as_text")]
        error: Arc<Failure>,
    },
    /// A guard refused the update; the set in force is kept.
    Refused {
        #[serde(serialize_with = "as_text")]
        reason: Refusal,
    },
}

/// Errors are serialised as their message.
pub(super) fn as_text<T: fmt::Display, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceReport {
    pub id: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Entries normalised or dropped, state files that could not be written.
    pub warnings: Vec<String>,
    /// The list was accepted but its state file could not be written (a full or
    /// read-only `state_dir`): a restart would not find it.
    pub save_failed: bool,
    /// The update's history record, or its kept refused update, could not be written
    /// (the warnings say why); the refresh itself is not affected.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub history_failed: bool,
}

/// The result of a refresh.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct RefreshReport {
    pub sources: Vec<SourceReport>,
}

impl RefreshReport {
    /// Whether any source's set in force changed.
    pub fn changed(&self) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s.outcome, Outcome::Updated { .. }))
    }

    pub fn failed(&self) -> impl Iterator<Item = &SourceReport> {
        self.sources
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed { .. }))
    }

    pub fn refused(&self) -> impl Iterator<Item = &SourceReport> {
        self.sources
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Refused { .. }))
    }

    /// No source failed or was refused.
    pub fn is_ok(&self) -> bool {
        self.failed().next().is_none() && self.refused().next().is_none()
    }

    pub fn get(&self, id: &str) -> Option<&SourceReport> {
        self.sources.iter().find(|s| s.id == id)
    }
}

/// Where the set in force of a source came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetOrigin {
    /// Nothing yet (a URL source without snapshot, before its first fetch).
    None,
    /// The static list of the configuration or of a static preset.
    Static,
    /// A preset's embedded, dated snapshot.
    Snapshot,
    /// The last good set saved by an earlier run.
    State,
    /// A fetch accepted during this run.
    Fetched,
}

/// What the operator sees of one source, derived from its set in force and the
/// history of its refreshes (see [`super::Refresher`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub id: String,
    pub provider: String,
    pub kind: SourceKind,
    /// The URL or path (`static` for inline lists).
    pub location: String,
    pub in_force: SetOrigin,
    /// The date of the snapshot or static list in force, if that is what is in force.
    pub as_of: Option<String>,
    /// When the set in force was fetched (state or fetch).
    #[serde(with = "rfc3339::option")]
    pub fetched_at: Option<SystemTime>,
    #[serde(with = "rfc3339::option")]
    pub last_attempt: Option<SystemTime>,
    #[serde(with = "rfc3339::option")]
    pub last_success: Option<SystemTime>,
    /// When a fetch last changed the set in force.
    #[serde(with = "rfc3339::option")]
    pub last_change: Option<SystemTime>,
    /// The error of the last attempt (fetch, parse, validation or guard), if it failed,
    /// or why the list it accepted could not be saved.
    pub last_error: Option<String>,
    /// Attempts in a row that did not succeed (failures and refusals).
    pub consecutive_failures: u32,
    /// Whether the last attempt was refused by a guard.
    pub refused: bool,
    /// Updates refused by a guard since start-up.
    pub refusals: u64,
    /// Attempts that failed (fetch, parse, validation) since start-up.
    pub failures: u64,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    pub serial: Option<String>,
}
