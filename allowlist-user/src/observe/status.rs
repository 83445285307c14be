//! What the running agent tells the CLI and the metrics endpoint: a status file in
//! `state_dir`, rewritten atomically after every refresh and sync.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    datapath::{InterfaceState, SyncReport},
    policy::SourceStatus,
    store::{self, StateError, rfc3339},
};

pub(crate) use crate::store::STATUS_FILE;

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

/// How often the running agent rewrites its status when nothing else changes it, so
/// that its age tells a live agent from a stopped or stuck one.
pub(crate) const STATUS_HEARTBEAT: Duration = Duration::from_secs(30);

impl AgentStatus {
    /// A status as an agent with one port and nothing else would write it at `at`.
    #[cfg(test)]
    pub(crate) fn example(at: SystemTime) -> Self {
        AgentStatus {
            version: "0".to_owned(),
            pid: 1,
            config: PathBuf::from("/etc/allowlist/allowlist.toml"),
            started_at: at,
            written_at: at,
            mode: "enforce".to_owned(),
            ports: vec![443],
            interfaces: Vec::new(),
            refresh_interval_secs: 3600,
            providers: Vec::new(),
            map_entries_v4: 0,
            map_entries_v6: 0,
            last_sync: None,
            refresh_results: BTreeMap::new(),
            sources: Vec::new(),
            state_write_failures: 0,
        }
    }

    /// Whether the status is older than three heartbeats at `now`: its agent is
    /// stopped (SIGSTOP), stuck, or cannot write to `state_dir`.
    pub(crate) fn is_stale(&self, now: SystemTime) -> bool {
        now.duration_since(self.written_at).unwrap_or_default() > 3 * STATUS_HEARTBEAT
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_stale_after_three_heartbeats_and_not_before() {
        let written_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let status = AgentStatus::example(written_at);
        assert!(!status.is_stale(written_at + 3 * STATUS_HEARTBEAT));
        assert!(status.is_stale(written_at + 3 * STATUS_HEARTBEAT + Duration::from_secs(1)));
        // A clock stepped back reads as fresh, not as an error.
        assert!(!status.is_stale(written_at - Duration::from_secs(60)));
    }
}
