//! What the running agent tells the CLI and the metrics endpoint: a status file in
//! `state_dir`, rewritten atomically after every refresh and sync.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::{
    datapath::{InterfaceState, SyncReport},
    store::{self, StateError, rfc3339},
};

pub(crate) use crate::store::STATUS_FILE;

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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AgentStatus {
    pub version: String,
    pub pid: u32,
    pub config: PathBuf,
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub written_at: SystemTime,
    /// `enforce` or `monitor`.
    pub mode: String,
    pub ports: Vec<u16>,
    /// Every configured interface, and whether the filter is attached to it.
    pub interfaces: Vec<InterfaceState>,
    pub refresh_interval_secs: u64,
    pub providers: Vec<ProviderStatus>,
    pub map_entries_v4: usize,
    pub map_entries_v6: usize,
    pub last_sync: Option<SyncStatus>,
    /// Refresh results since start-up: source → result → count.
    pub refresh_results: BTreeMap<String, BTreeMap<String, u64>>,
    pub sources: Vec<SourceStatus>,
    /// Writes to `state_dir` (source lists, the change history, this status) that
    /// failed since start-up.
    #[serde(default)]
    pub state_write_failures: u64,
}

/// What the operator sees of one source, derived from its set in force and the
/// history of its refreshes (see [`crate::refresh`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub id: String,
    pub provider: String,
    /// `url`, `file` or `static`.
    pub kind: String,
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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ProviderStatus {
    pub name: String,
    pub rule_id: u32,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SyncStatus {
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    pub error: Option<String>,
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

impl SyncStatus {
    pub(crate) fn ok(report: &SyncReport) -> Self {
        Self {
            at: SystemTime::now(),
            error: None,
            added: report.added,
            changed: report.changed,
            removed: report.removed,
            unchanged: report.unchanged,
        }
    }

    pub(crate) fn failed(error: String) -> Self {
        Self {
            at: SystemTime::now(),
            error: Some(error),
            added: 0,
            changed: 0,
            removed: 0,
            unchanged: 0,
        }
    }
}

impl AgentStatus {
    pub(crate) fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(STATUS_FILE)
    }

    pub(crate) fn write(&self, state_dir: &Path) -> Result<(), StateError> {
        store::write_json_atomic(&Self::path(state_dir), self)
    }

    /// The agent's status, if it has written one; an error if `state_dir` is not safe
    /// (see [`store::check_dir`]) or the file is not the agent's.
    pub(crate) fn read(state_dir: &Path) -> Result<Option<Self>, StateError> {
        store::check_dir(state_dir)?;
        store::read_json(&Self::path(state_dir))
    }

    /// Provider name by rule id.
    pub(crate) fn provider_name(&self, rule: u32) -> Option<&str> {
        self.providers
            .iter()
            .find(|p| p.rule_id == rule)
            .map(|p| p.name.as_str())
    }

    /// How many hit counters (indexed by rule id) cover every provider.
    pub(crate) fn rule_slots(&self) -> usize {
        self.providers
            .iter()
            .map(|p| p.rule_id as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// What keeps the agent from being healthy, one line each.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .interfaces
            .iter()
            .filter(|i| !i.attached)
            .map(|i| {
                format!(
                    "interface {} is not filtered: {}",
                    i.name,
                    i.error.as_deref().unwrap_or("not attached")
                )
            })
            .collect();
        if self.interfaces.is_empty() {
            problems.push("the filter is attached to no interface".to_owned());
        }
        match &self.last_sync {
            Some(sync) if sync.error.is_some() => problems.push(format!(
                "the last map sync failed: {}",
                sync.error.as_deref().unwrap_or_default()
            )),
            Some(_) => {}
            None => problems.push("the maps were never synced".to_owned()),
        }
        problems
    }
}
