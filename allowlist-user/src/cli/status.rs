//! `allowlist status`: interfaces, mode, counters, providers and every source.

use std::{collections::BTreeMap, fmt::Write as _, time::SystemTime};

use allowlist_common::Reason;
use anyhow::Result;
use serde::Serialize;

use crate::{
    agent::{self, LockHolder},
    config::{Config, SourceKind},
    datapath::{self, Counters, Maps},
    observe::status::{AgentStatus, STATUS_HEARTBEAT},
    policy::SourceStatus,
};

use super::common::{age, check_readable, open_maps, print_json};

#[derive(Serialize)]
struct StatusOutput {
    agent_pid: Option<i32>,
    /// An agent holds the lock but runs in another PID namespace (a container).
    agent_elsewhere: bool,
    /// Interfaces whose pinned link is attached to a device.
    attached: Vec<String>,
    /// Pinned links that filter nothing (their device was deleted, or they were
    /// detached).
    defunct: Vec<String>,
    counters: Option<CountersOutput>,
    providers: Vec<ProviderOutput>,
    agent: Option<AgentStatus>,
}

#[derive(Serialize)]
struct CountersOutput {
    /// reason → {pass|drop|would_drop → packets}
    packets: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    observed: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct ProviderOutput {
    name: String,
    rule_id: u32,
    prefixes_v4: usize,
    prefixes_v6: usize,
    hits: u64,
}

fn counters_output(c: &Counters) -> CountersOutput {
    let mut packets = BTreeMap::new();
    for r in Reason::ALL {
        let mut row = BTreeMap::new();
        row.insert(if r.drops() { "drop" } else { "pass" }, c.exit(r));
        if r.drops() {
            row.insert("would_drop", c.would_drop(r));
        }
        packets.insert(r.name(), row);
    }
    CountersOutput {
        packets,
        observed: c.observed.clone(),
    }
}

pub(super) fn status(config: &Config, json: bool) -> Result<()> {
    check_readable(config)?;
    let agent = AgentStatus::read(&config.state_dir)?;
    let holder = agent::lock_holder(&config.state_dir);
    let pid = match holder {
        LockHolder::Agent(pid) => Some(pid),
        LockHolder::Nobody | LockHolder::Elsewhere { .. } => None,
    };
    let agent_elsewhere = matches!(holder, LockHolder::Elsewhere { .. });
    let pinned = datapath::pinned_links(&config.pin_dir).unwrap_or_default();
    let (attached, defunct): (Vec<String>, Vec<String>) = pinned.into_iter().partition(|name| {
        datapath::read_link(&datapath::link_pin(&config.pin_dir, name))
            .is_ok_and(|link| link.ifindex.is_some())
    });
    let maps = if attached.is_empty() && !datapath::has_pinned_maps(&config.pin_dir) {
        None
    } else {
        Some(open_maps(config)?)
    };
    let counters = maps.as_ref().map(Maps::counters).transpose()?;
    let providers: Vec<ProviderOutput> = match (&agent, &maps) {
        (Some(agent), Some(maps)) => {
            let hits = maps.hits(agent.rule_slots())?;
            agent
                .providers
                .iter()
                .map(|p| ProviderOutput {
                    name: p.name.clone(),
                    rule_id: p.rule_id,
                    prefixes_v4: p.prefixes_v4,
                    prefixes_v6: p.prefixes_v6,
                    hits: hits.get(p.rule_id as usize).copied().unwrap_or(0),
                })
                .collect()
        }
        _ => Vec::new(),
    };
    let out = StatusOutput {
        agent_pid: pid,
        agent_elsewhere,
        attached,
        defunct,
        counters: counters.as_ref().map(counters_output),
        providers,
        agent,
    };
    if json {
        return print_json(&out);
    }
    print!("{}", render_status(&out));
    Ok(())
}

fn render_status(out: &StatusOutput) -> String {
    let mut s = String::new();
    render_agent(&mut s, out);
    if let Some(a) = &out.agent {
        render_settings(&mut s, a);
    }
    if let Some(c) = &out.counters {
        render_counters(&mut s, c);
    }
    if !out.providers.is_empty() {
        let _ = writeln!(
            s,
            "\nproviders            {:>6} {:>8} {:>8} {:>12}",
            "rule", "ipv4", "ipv6", "hits"
        );
        for p in &out.providers {
            let _ = writeln!(
                s,
                "  {:<18} {:>6} {:>8} {:>8} {:>12}",
                p.name, p.rule_id, p.prefixes_v4, p.prefixes_v6, p.hits
            );
        }
    }
    if let Some(a) = &out.agent {
        let _ = writeln!(s, "\nsources");
        for src in &a.sources {
            render_source(&mut s, src);
        }
    }
    s
}

/// Whether the agent runs, and where the filter is attached.
fn render_agent(s: &mut String, out: &StatusOutput) {
    match (out.agent_pid, &out.agent) {
        (Some(pid), Some(a)) => {
            let _ = writeln!(
                s,
                "agent:      running (pid {pid}), version {}, up since {}, status written {}",
                a.version,
                age(Some(a.started_at)),
                age(Some(a.written_at))
            );
            if a.is_stale(SystemTime::now()) {
                let _ = writeln!(
                    s,
                    "            STALE: the agent rewrites its status every {}s; it is stopped (SIGSTOP), stuck, or cannot write to state_dir (see allowlist_state_write_failures_total)",
                    STATUS_HEARTBEAT.as_secs()
                );
            }
        }
        (Some(pid), None) => {
            let _ = writeln!(s, "agent:      running (pid {pid}), no status written yet");
        }
        (None, _) if out.agent_elsewhere => {
            let _ = writeln!(
                s,
                "agent:      running in another PID namespace (a container?); signal or stop it there"
            );
        }
        (None, _) => {
            let _ = writeln!(s, "agent:      not running");
        }
    }
    if out.attached.is_empty() {
        let _ = writeln!(s, "filter:     not attached");
    } else {
        let _ = writeln!(
            s,
            "filter:     attached to {} (pinned links)",
            out.attached.join(", ")
        );
    }
    if !out.defunct.is_empty() {
        let _ = writeln!(
            s,
            "            NOT FILTERING: the links for {} are detached (device deleted, or `bpftool link detach`)",
            out.defunct.join(", ")
        );
    }
}

/// The running agent's mode, ports, interfaces, last sync and table sizes.
fn render_settings(s: &mut String, a: &AgentStatus) {
    let ports: Vec<String> = a.ports.iter().map(ToString::to_string).collect();
    let ifaces: Vec<String> = a
        .interfaces
        .iter()
        .map(|i| {
            let mut notes = vec![i.mode.to_string()];
            if i.adopted {
                notes.push("adopted".to_owned());
            }
            if let Some(now) = &i.now_named {
                notes.push(format!("now named {now}"));
            }
            if !i.attached {
                notes.push(format!(
                    "NOT FILTERED: {}",
                    i.error.as_deref().unwrap_or("not attached")
                ));
            }
            format!("{} ({})", i.name, notes.join(", "))
        })
        .collect();
    let _ = writeln!(
        s,
        "mode:       {}; protected ports {}",
        a.mode,
        ports.join(", ")
    );
    let _ = writeln!(s, "interfaces: {}", ifaces.join(", "));
    if let Some(sync) = &a.last_sync {
        let _ = writeln!(
            s,
            "last sync:  {} ({}), +{} ~{} -{} ={}",
            age(Some(sync.at)),
            sync.error.as_deref().unwrap_or("ok"),
            sync.added,
            sync.changed,
            sync.removed,
            sync.unchanged
        );
    }
    let _ = writeln!(
        s,
        "map:        {} IPv4 and {} IPv6 prefixes",
        a.map_entries_v4, a.map_entries_v6
    );
}

/// The XDP program's counters: each reason by action, and notable shapes.
fn render_counters(s: &mut String, c: &CountersOutput) {
    let _ = writeln!(
        s,
        "\npackets              {:>12} {:>12} {:>12}",
        "pass", "drop", "would-drop"
    );
    for r in Reason::ALL {
        let row = &c.packets[r.name()];
        let cell = |k: &str| row.get(k).map_or_else(String::new, ToString::to_string);
        let _ = writeln!(
            s,
            "  {:<18} {:>12} {:>12} {:>12}",
            r.name(),
            cell("pass"),
            cell("drop"),
            cell("would_drop")
        );
    }
    let observed: Vec<String> = c.observed.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(s, "  observed: {}", observed.join(", "));
}

fn render_source(s: &mut String, src: &SourceStatus) {
    let _ = writeln!(
        s,
        "  {:<24} {:<8} in force: {:?}{} ({} v4, {} v6)",
        src.id,
        src.kind,
        src.in_force,
        src.as_of
            .as_deref()
            .map(|d| format!(" as of {d}"))
            .unwrap_or_default(),
        src.prefixes_v4,
        src.prefixes_v6
    );
    if src.kind != SourceKind::Static {
        let _ = writeln!(
            s,
            "  {:<24} last success {}, last attempt {}, failures in a row {}, refusals {}",
            "",
            age(src.last_success),
            age(src.last_attempt),
            src.consecutive_failures,
            src.refusals
        );
    }
    if let Some(err) = &src.last_error {
        let _ = writeln!(s, "  {:<24} error: {err}", "");
    }
}
