//! What the running agent tells the CLI and the metrics endpoint: a status file in
//! `state_dir`, rewritten atomically after every refresh and sync.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::{
    datapath::SyncReport,
    refresh::SourceStatus,
    state::{self, StateError, rfc3339},
};

pub const STATUS_FILE: &str = "status.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentStatus {
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
    pub interfaces: Vec<InterfaceStatus>,
    pub refresh_interval_secs: u64,
    pub providers: Vec<ProviderStatus>,
    pub map_entries_v4: usize,
    pub map_entries_v6: usize,
    pub last_sync: Option<SyncStatus>,
    /// Refresh results since start-up: source → result → count.
    pub refresh_results: BTreeMap<String, BTreeMap<String, u64>>,
    pub sources: Vec<SourceStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub mode: String,
    /// The link was inherited from a previous agent.
    pub adopted: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProviderStatus {
    pub name: String,
    pub rule_id: u32,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncStatus {
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    pub error: Option<String>,
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

impl SyncStatus {
    pub fn ok(report: &SyncReport) -> Self {
        Self {
            at: SystemTime::now(),
            error: None,
            added: report.added,
            changed: report.changed,
            removed: report.removed,
            unchanged: report.unchanged,
        }
    }

    pub fn failed(error: String) -> Self {
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
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(STATUS_FILE)
    }

    pub fn write(&self, state_dir: &Path) -> Result<(), StateError> {
        state::write_json_atomic(&Self::path(state_dir), self)
    }

    /// The agent's status, if it has written one; an error if `state_dir` is not safe
    /// (see [`state::check_dir`]) or the file is not the agent's.
    pub fn read(state_dir: &Path) -> Result<Option<Self>, StateError> {
        state::check_dir(state_dir)?;
        state::read_json(&Self::path(state_dir))
    }

    /// Provider name by rule id.
    pub fn provider_name(&self, rule: u32) -> Option<&str> {
        self.providers
            .iter()
            .find(|p| p.rule_id == rule)
            .map(|p| p.name.as_str())
    }

    /// How many hit counters (indexed by rule id) cover every provider.
    pub fn rule_slots(&self) -> usize {
        self.providers
            .iter()
            .map(|p| p.rule_id as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// Healthy: attached somewhere and the last map sync succeeded.
    pub fn healthy(&self) -> bool {
        !self.interfaces.is_empty() && self.last_sync.as_ref().is_some_and(|s| s.error.is_none())
    }
}
