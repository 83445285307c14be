//! The CLI subcommands other than `run`: they read the agent's pins and status file,
//! or signal the agent.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    path::Path,
    time::{Duration, SystemTime},
};

use allowlist_common::Reason;
use anyhow::{Context as _, Result, anyhow, bail};
use ipnet::IpNet;
use serde::Serialize;
use tracing::warn;

use crate::{
    agent::{self, LockHolder},
    config::{self, Config},
    datapath::{self, Counters, Maps},
    denied::{DENIED_FILE, DeniedFile, report::Report},
    observe::status::{AgentStatus, STATUS_HEARTBEAT},
    policy::{Outcome, RefreshOptions, Refresher, SourceReport, SourceStatus},
    prefixes,
    sources::{http::Fetcher, presets},
    store,
    store::history::{Change, Prefixes},
};

/// Fails in one line when this user may not read one of the agent's directories
/// (they are the agent's, 0700): which directory, whose it is, and what to run.
fn check_readable(config: &Config) -> Result<()> {
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

fn open_maps(config: &Config) -> Result<Maps> {
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

fn age(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) => format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(d.as_secs()))
        ),
        None => "never".to_owned(),
    }
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

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

pub(crate) fn status(config: &Config, json: bool) -> Result<()> {
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
    if let Some(a) = &out.agent {
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
    if let Some(c) = &out.counters {
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
    if src.kind != "static" {
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

/// Prefix → provider name, from the live maps and the agent's rule table.
fn live_table(config: &Config, maps: &Maps) -> Result<Vec<(IpNet, u32, String)>> {
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

#[derive(Serialize)]
struct ListEntry {
    prefix: IpNet,
    provider: String,
    rule_id: u32,
}

pub(crate) fn list(config: &Config, provider: Option<&str>, json: bool) -> Result<()> {
    if let Some(p) = provider
        && config.provider(p).is_none()
    {
        let known: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "no provider {p:?} in {} (providers: {})",
            config.path.display(),
            known.join(", ")
        );
    }
    let maps = open_maps(config)?;
    let entries: Vec<ListEntry> = live_table(config, &maps)?
        .into_iter()
        .filter(|(_, _, name)| provider.is_none_or(|p| p == name))
        .map(|(prefix, rule_id, provider)| ListEntry {
            prefix,
            provider,
            rule_id,
        })
        .collect();
    if json {
        return print_json(&entries);
    }
    for e in &entries {
        println!("{:<44} {}", e.prefix, e.provider);
    }
    Ok(())
}

#[derive(Serialize)]
struct CheckOutput {
    address: IpAddr,
    port: u16,
    /// `pass` or `drop`.
    verdict: &'static str,
    /// The packet passes only because monitor mode is on.
    monitor_would_drop: bool,
    port_protected: bool,
    matched_prefix: Option<IpNet>,
    provider: Option<String>,
    reason: String,
    /// What the change history knows of the prefixes holding the address.
    history: CheckHistory,
}

pub(crate) fn check(config: &Config, address: IpAddr, port: u16, json: bool) -> Result<()> {
    let maps = open_maps(config)?;
    let protected = maps.protected_ports()?.contains(&port);
    let monitor = maps.settings()?.monitor != 0;
    let matched = live_table(config, &maps)?
        .into_iter()
        .filter(|(net, _, _)| net.contains(&address))
        .max_by_key(|(net, _, _)| net.prefix_len());
    let (verdict, would_drop, reason) = match (&matched, protected) {
        (_, false) => ("pass", false, format!("TCP port {port} is not protected")),
        (Some((net, _, name)), true) => (
            "pass",
            false,
            format!("{address} is in {net}, listed by provider {name}"),
        ),
        (None, true) if monitor => (
            "pass",
            true,
            format!(
                "{address} is in no allowlisted prefix; monitor mode lets it through and counts a would-drop"
            ),
        ),
        (None, true) => (
            "drop",
            false,
            format!("{address} is in no allowlisted prefix"),
        ),
    };
    let out = CheckOutput {
        address,
        port,
        verdict,
        monitor_would_drop: would_drop,
        port_protected: protected,
        matched_prefix: matched.as_ref().map(|m| m.0),
        provider: matched.map(|m| m.2),
        reason,
        history: check_history(config, address),
    };
    if json {
        return print_json(&out);
    }
    println!(
        "{} {address} -> TCP/{port}: {}",
        out.verdict.to_uppercase(),
        out.reason
    );
    print!("{}", render_check_history(address, &out.history));
    Ok(())
}

#[derive(Serialize)]
struct CheckHistory {
    /// The applied updates that added or removed a prefix holding the address, oldest
    /// first.
    changes: Vec<CheckChange>,
    /// Applied updates too large to list their prefixes: the history only counted them.
    counted_only: usize,
    /// Why the history could not be read.
    error: Option<String>,
}

#[derive(Serialize)]
struct CheckChange {
    prefix: IpNet,
    /// `added` or `removed`.
    change: &'static str,
    source: String,
    provider: String,
    #[serde(with = "store::rfc3339")]
    at: SystemTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

fn check_history(config: &Config, address: IpAddr) -> CheckHistory {
    let changes = match store::history::read(&config.state_dir) {
        Ok(changes) => changes,
        Err(err) => {
            return CheckHistory {
                changes: Vec::new(),
                counted_only: 0,
                error: Some(err.to_string()),
            };
        }
    };
    let (events, counted_only) = store::history::about(&changes, address);
    CheckHistory {
        changes: events
            .into_iter()
            .map(|e| CheckChange {
                prefix: e.net,
                change: if e.added { "added" } else { "removed" },
                source: e.source,
                provider: e.provider,
                at: e.at,
                note: e.note,
            })
            .collect(),
        counted_only,
        error: None,
    }
}

/// One line per prefix and source: `203.0.113.0/24 added by partner/0 at ...;
/// removed at ...`.
fn render_check_history(address: IpAddr, h: &CheckHistory) -> String {
    if let Some(err) = &h.error {
        return format!("history: cannot be read: {err}\n");
    }
    if h.changes.is_empty() {
        return match h.counted_only {
            0 => format!("history: the history knows nothing about {address}\n"),
            n => format!(
                "history: no listed change holds {address}; {n} update(s) too large to list were only counted, it may be in those\n"
            ),
        };
    }
    let mut lines: Vec<((IpNet, &str), String)> = Vec::new();
    for c in &h.changes {
        let note = c
            .note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        match lines
            .iter_mut()
            .find(|(key, _)| *key == (c.prefix, c.source.as_str()))
        {
            Some((_, line)) => {
                let _ = write!(line, "; {} at {}{note}", c.change, when(c.at));
            }
            None => lines.push((
                (c.prefix, &c.source),
                format!(
                    "history: {} {} by {} at {}{note}",
                    c.prefix,
                    c.change,
                    c.source,
                    when(c.at)
                ),
            )),
        }
    }
    let mut s = String::new();
    for (_, line) in lines {
        let _ = writeln!(s, "{line}");
    }
    if h.counted_only > 0 {
        let _ = writeln!(
            s,
            "history: {} update(s) too large to list were only counted",
            h.counted_only
        );
    }
    s
}

/// A time as the history prints it: `2026-11-30 03:00:12Z` (UTC).
fn when(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replacen('T', " ", 1)
}

/// `allowlist history`: the recorded updates, oldest first, of the last `since`, of
/// one source or provider.
pub(crate) fn history(
    config: &Config,
    since: Option<Duration>,
    source: Option<&str>,
    json: bool,
) -> Result<()> {
    check_readable(config)?;
    store::check_dir(&config.state_dir)?;
    let mut changes = store::history::read(&config.state_dir)?;
    if let Some(wanted) = source {
        let is = |id: &str, provider: &str| id == wanted || provider == wanted;
        if !config.sources().any(|s| is(&s.id, &s.provider))
            && !changes.iter().any(|c| is(&c.source, &c.provider))
        {
            let ids: Vec<&str> = config.sources().map(|s| s.id.as_str()).collect();
            bail!(
                "no source or provider {wanted:?} in {} or in the history (sources: {})",
                config.path.display(),
                ids.join(", ")
            );
        }
        changes.retain(|c| is(&c.source, &c.provider));
    }
    if let Some(since) = since {
        let from = SystemTime::now()
            .checked_sub(since)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        changes.retain(|c| c.at >= from);
    }
    if json {
        for change in &changes {
            println!("{}", serde_json::to_string(change)?);
        }
        return Ok(());
    }
    if changes.is_empty() {
        println!(
            "no update recorded in {}",
            config.state_dir.join(store::HISTORY_FILE).display()
        );
        return Ok(());
    }
    print!("{}", render_history(&changes));
    Ok(())
}

/// At most this many prefixes of a side are printed (`--json` has them all).
const PRINTED_PREFIXES: usize = 20;

fn render_history(changes: &[Change]) -> String {
    let width = changes.iter().map(|c| c.source.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in changes {
        let counts = format!("+{} -{}", side_count(&c.added), side_count(&c.removed));
        let size = c
            .size_after
            .map(|n| format!("{n} in force"))
            .unwrap_or_default();
        let serial = c
            .serial
            .as_deref()
            .map(|v| format!("; serial {v}"))
            .unwrap_or_default();
        let what = match &c.outcome {
            store::history::Outcome::Applied => format!("applied: {counts}, {size}{serial}"),
            store::history::Outcome::Refused { guard, reason } => format!(
                "REFUSED by the {guard} guard: would be {counts}, {size} kept{serial}: {reason}"
            ),
            store::history::Outcome::Failed { error } => format!("FAILED: {size} kept: {error}"),
        };
        let _ = writeln!(s, "{}  {:<width$}  {what}", when(c.at), c.source);
        if let Some(note) = &c.note {
            let _ = writeln!(s, "    ({note})");
        }
        for (sign, side) in [('+', &c.added), ('-', &c.removed)] {
            let Some(nets) = side.listed() else { continue };
            for net in nets.iter().take(PRINTED_PREFIXES) {
                let _ = writeln!(s, "    {sign} {net}");
            }
            if nets.len() > PRINTED_PREFIXES {
                let _ = writeln!(
                    s,
                    "    {sign} ... and {} more (--json lists them)",
                    nets.len() - PRINTED_PREFIXES
                );
            }
        }
    }
    s
}

/// `12`, or `1500 (counted)` for a side the history did not list.
fn side_count(side: &Prefixes) -> String {
    match side {
        Prefixes::Listed(nets) => nets.len().to_string(),
        Prefixes::Counted(n) => format!("{n} (counted)"),
    }
}

pub(crate) async fn fetch(config: &Config, force: bool, json: bool) -> Result<()> {
    // The refresher saves what it accepts; a scratch copy of the state directory keeps
    // this a dry run while still starting from the last good lists and validators.
    // Only files the agent would read itself are copied.
    store::check_dir(&config.state_dir)?;
    let scratch = tempfile::tempdir().context("creating a scratch state directory")?;
    if let Ok(entries) = std::fs::read_dir(&config.state_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json")
                || entry.file_type().is_ok_and(|t| t.is_dir())
            {
                continue;
            }
            match store::read_trusted(&path) {
                Ok(Some(bytes)) => {
                    let _ = std::fs::write(scratch.path().join(entry.file_name()), bytes);
                }
                Ok(None) => {}
                Err(err) => warn!("{err}"),
            }
        }
    }
    let mut scratch_config = config.clone();
    scratch_config.state_dir = scratch.path().to_owned();
    let mut refresher = Refresher::new(&scratch_config, Fetcher::default())?;
    refresher.bootstrap();
    let report = refresher.refresh_with(RefreshOptions { force }).await;
    let allowlist = refresher.allowlist();
    let desired = allowlist.entries();
    let live = if datapath::has_pinned_maps(&config.pin_dir) {
        Some(open_maps(config)?.live_entries()?)
    } else {
        None
    };
    let diff = live.as_ref().map(|live| prefixes::diff(live, &desired));
    let fetched: Vec<&SourceReport> = report
        .sources
        .iter()
        .filter(|s| !matches!(s.outcome, Outcome::Static))
        .collect();
    let all_failed = !fetched.is_empty()
        && fetched
            .iter()
            .all(|s| matches!(s.outcome, Outcome::Failed { .. } | Outcome::Refused { .. }));
    let verdict = || {
        if all_failed {
            bail!("every source failed or was refused: a refresh now would change nothing")
        }
        Ok(())
    };
    if json {
        #[derive(Serialize)]
        struct FetchOutput<'a> {
            report: &'a crate::policy::RefreshReport,
            allowlist: &'a prefixes::Allowlist,
            diff_against_live: Option<DiffOutput>,
        }
        #[derive(Serialize)]
        struct DiffOutput {
            add: Vec<String>,
            remove: Vec<String>,
        }
        print_json(&FetchOutput {
            report: &report,
            allowlist: &allowlist,
            diff_against_live: diff.map(|d| DiffOutput {
                add: d.upserts.iter().map(|(n, _)| n.to_string()).collect(),
                remove: d.removals.iter().map(ToString::to_string).collect(),
            }),
        })?;
        return verdict();
    }
    println!("sources:");
    for s in &report.sources {
        println!("  {:<28} {}", s.id, serde_json::to_string(&s.outcome)?);
        for w in &s.warnings {
            println!("  {:<28} warning: {w}", "");
        }
    }
    println!("allowlist:");
    for p in &allowlist.providers {
        println!("  {} ({} prefixes)", p.name, p.prefixes.len());
        for net in &p.prefixes {
            println!("    {net}");
        }
    }
    match diff {
        Some(d) if d.is_empty() => println!("no change against the live filter"),
        Some(d) => {
            println!("against the live filter:");
            for (net, _) in &d.upserts {
                println!("  + {net}");
            }
            for net in &d.removals {
                println!("  - {net}");
            }
        }
        None => println!(
            "no live filter under {} to compare with",
            config.pin_dir.display()
        ),
    }
    println!("(dry run: nothing was changed)");
    verdict()
}

/// `allowlist denied`: the agent's table of denied sources (it works while the agent
/// is stopped; the file is what it last wrote).
pub(crate) fn denied(
    config: &Config,
    top: usize,
    since: Option<Duration>,
    json: bool,
) -> Result<()> {
    check_readable(config)?;
    let Some(file) = DeniedFile::read(&config.state_dir)? else {
        bail!(
            "no {DENIED_FILE} in {}: the agent has recorded no denied source yet (is it running with this --config?)",
            config.state_dir.display()
        );
    };
    let now = SystemTime::now();
    let report = Report::new(&file, top, since, now);
    if json {
        return print_json(&report);
    }
    print!("{}", report.render(now));
    Ok(())
}

pub(crate) fn reload(config: &Config) -> Result<()> {
    let pid = agent::signal_agent(&config.state_dir, libc::SIGHUP)?;
    println!(
        "asked the agent (pid {pid}) to reload {}",
        config.path.display()
    );
    Ok(())
}

pub(crate) fn detach(config: &Config) -> Result<()> {
    agent::check_privileges().map_err(|e| anyhow!(e))?;
    // The agent goes first: its descriptors keep the links alive, and while it runs it
    // would attach again what the pins' removal detached. It exits leaving its pins.
    match agent::lock_holder(&config.state_dir) {
        LockHolder::Nobody => {}
        LockHolder::Agent(pid) => {
            agent::signal(pid, libc::SIGTERM)?;
            if !agent::wait_for_exit(&config.state_dir, Duration::from_secs(10)) {
                bail!(
                    "the agent (pid {pid}) did not exit within 10 s after SIGTERM; nothing was detached"
                );
            }
            println!("stopped the agent (pid {pid})");
        }
        LockHolder::Elsewhere { pid_file_says } => {
            return Err(agent::ControlError::RunningElsewhere {
                state_dir: config.state_dir.clone(),
                pid_file_says,
            })
            .context("nothing was detached");
        }
    }
    let removed = datapath::remove_pins(&config.pin_dir)?;
    if removed.is_empty() {
        println!("nothing was pinned under {}", config.pin_dir.display());
    } else {
        for path in &removed {
            println!("removed {}", path.display());
        }
        println!("the filter is detached");
    }
    Ok(())
}

pub(crate) fn presets() {
    for preset in presets::all() {
        println!("{preset}");
    }
}

/// The configuration, with `pin_dir` where the agent's pins really are (the host's
/// bpffs seen through `/proc/1/root` under `ip netns exec`).
pub(crate) fn load_config(path: &Path) -> Result<Config> {
    let mut config = config::load(path)?;
    if let Some(location) = datapath::locate_pins(&config.pin_dir) {
        config.pin_dir = location.path;
    }
    Ok(config)
}
