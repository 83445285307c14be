//! `allowlist check`: whether an address may reach a port, and what the history says of it.

use std::{fmt::Write as _, net::IpAddr, time::SystemTime};

use anyhow::Result;
use ipnet::IpNet;
use serde::Serialize;

use crate::{config::Config, store};

use super::common::{live_table, open_maps, print_json, when};

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

pub(super) fn check(config: &Config, address: IpAddr, port: u16, json: bool) -> Result<()> {
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
