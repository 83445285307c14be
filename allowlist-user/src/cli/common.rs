//! What every verb shares: the configuration, the maps, readable directories, times and JSON.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};
use ipnet::IpNet;
use serde::Serialize;

use crate::{
    agent::{self},
    config::{self, Config},
    datapath::{self, Maps},
    observe::status::AgentStatus,
};

/// Fails in one line when this user may not read one of the agent's directories
/// (they are the agent's, 0700): which directory, whose it is, and what to run.
pub(super) fn check_readable(config: &Config) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    for (key, dir) in [
        ("state_dir", &config.state_dir),
        ("pin_dir", &config.pin_dir),
    ] {
        match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let owner = std::fs::metadata(dir)
                    .map(|m| format!(" (owner uid {}, mode {:04o})", m.uid(), m.mode() & 0o7777))
                    .unwrap_or_default();
                bail!(
                    "cannot read {key} {}{owner}: permission denied; the agent's directories are readable by its user only: run this command as root (sudo)",
                    dir.display()
                );
            }
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn open_maps(config: &Config) -> Result<Maps> {
    check_readable(config)?;
    if !datapath::has_pinned_maps(&config.pin_dir) {
        bail!(
            "no filter is pinned under {} (is the agent running with this --config?)",
            config.pin_dir.display()
        );
    }
    if !agent::can_use_bpf() {
        bail!(
            "reading the filter's pinned maps under {} needs CAP_BPF (or root), which this process lacks: run this command as root (sudo)",
            config.pin_dir.display()
        );
    }
    Ok(Maps::open_pinned(&config.pin_dir)?)
}

pub(super) fn age(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) => format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(d.as_secs()))
        ),
        None => "never".to_owned(),
    }
}

pub(super) fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The configuration, with `pin_dir` where the agent's pins really are (the host's
/// bpffs seen through `/proc/1/root` under `ip netns exec`).
pub(super) fn load_config(path: &Path) -> Result<Config> {
    let mut config = config::load(path)?;
    if let Some(location) = datapath::locate_pins(&config.pin_dir) {
        config.pin_dir = location.path;
    }
    Ok(config)
}

/// Prefix → provider name, from the live maps and the agent's rule table.
pub(super) fn live_table(config: &Config, maps: &Maps) -> Result<Vec<(IpNet, u32, String)>> {
    let agent = AgentStatus::read(&config.state_dir)?;
    let name = |rule: u32| {
        agent
            .as_ref()
            .and_then(|a| a.provider_name(rule).map(str::to_owned))
            .or_else(|| {
                config
                    .providers
                    .iter()
                    .find(|p| p.rule_id == rule)
                    .map(|p| p.name.clone())
            })
            .unwrap_or_else(|| format!("rule-{rule}"))
    };
    Ok(maps
        .live_entries()?
        .into_iter()
        .map(|(net, rule)| (net, rule, name(rule)))
        .collect())
}

/// A time as the history prints it: `2026-11-30 03:00:12Z` (UTC).
pub(super) fn when(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replacen('T', " ", 1)
}
