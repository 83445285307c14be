//! What a scrape reads: the pinned maps' counters, the agent's status and the denied
//! sources, encoded as Prometheus families.

use std::{path::PathBuf, time::UNIX_EPOCH};

use allowlist_common::{MAX_PREFIXES_V4, MAX_PREFIXES_V6, Reason, maps as names};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use crate::{
    datapath::{Counters, Maps},
    denied::{DeniedMetrics, SharedDenied},
    observe::status::AgentStatus,
};

use super::SharedStatus;

#[derive(Debug)]
pub(super) struct AgentCollector {
    pub(super) status: SharedStatus,
    pub(super) pin_dir: PathBuf,
    /// The denied sources' metrics, when the agent watches them.
    pub(super) denied: Option<SharedDenied>,
}

type Labels = Vec<(&'static str, String)>;

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.status.read().expect("status lock").clone();
        let maps = Maps::open_pinned(&self.pin_dir).ok();

        if let Some(counters) = maps.as_ref().and_then(|m| m.counters().ok()) {
            encode_packets(&mut encoder, &counters)?;
        }
        if let Some(denied) = &self.denied {
            let denied = denied.read().expect("denied metrics lock").clone();
            encode_denied(&mut encoder, &denied)?;
        }
        let Some(status) = status else {
            return Ok(());
        };
        if let Some(hits) = maps.as_ref().and_then(|m| m.hits(status.rule_slots()).ok()) {
            encode_hits(&mut encoder, &status, &hits)?;
        }
        encode_sources(&mut encoder, &status)?;
        encode_agent(&mut encoder, &status)
    }
}

/// What the XDP program counted: each verdict by reason, and notable shapes.
fn encode_packets(
    encoder: &mut DescriptorEncoder,
    counters: &Counters,
) -> Result<(), std::fmt::Error> {
    let mut rows = Vec::new();
    for r in Reason::ALL {
        let action = if r.drops() { "drop" } else { "pass" };
        rows.push((
            vec![
                ("reason", r.name().to_owned()),
                ("action", action.to_owned()),
            ],
            counters.exit(r),
        ));
        if r.drops() {
            rows.push((
                vec![
                    ("reason", r.name().to_owned()),
                    ("action", "would_drop".to_owned()),
                ],
                counters.would_drop(r),
            ));
        }
    }
    counter_family(
        encoder,
        "allowlist_packets",
        "Packets judged by the XDP filter, by reason and action.",
        &rows,
    )?;
    let rows: Vec<_> = counters
        .observed
        .iter()
        .map(|(what, v)| (vec![("what", (*what).to_owned())], *v))
        .collect();
    counter_family(
        encoder,
        "allowlist_packets_observed",
        "Packets with a notable shape (VLAN tags, fragments, IP options, IPv6 extension headers), counted beside their verdict.",
        &rows,
    )?;
    Ok(())
}

/// Packets let through, by the provider whose range matched.
fn encode_hits(
    encoder: &mut DescriptorEncoder,
    status: &AgentStatus,
    hits: &[u64],
) -> Result<(), std::fmt::Error> {
    let rows: Vec<_> = status
        .providers
        .iter()
        .map(|p| {
            (
                vec![("provider", p.name.clone())],
                hits.get(p.rule_id as usize).copied().unwrap_or(0),
            )
        })
        .collect();
    counter_family(
        encoder,
        "allowlist_provider_hits",
        "Packets let through because their source is in a provider's ranges.",
        &rows,
    )?;
    Ok(())
}

/// The list in force and how each source's refreshes went.
fn encode_sources(
    encoder: &mut DescriptorEncoder,
    status: &AgentStatus,
) -> Result<(), std::fmt::Error> {
    let mut rows = Vec::new();
    for p in &status.providers {
        rows.push((
            vec![("provider", p.name.clone()), ("family", "ipv4".to_owned())],
            p.prefixes_v4 as f64,
        ));
        rows.push((
            vec![("provider", p.name.clone()), ("family", "ipv6".to_owned())],
            p.prefixes_v6 as f64,
        ));
    }
    gauge_family(
        encoder,
        "allowlist_prefixes",
        "Prefixes in force per provider and address family.",
        &rows,
    )?;

    let mut rows = Vec::new();
    for (source, results) in &status.refresh_results {
        for (result, n) in results {
            rows.push((
                vec![("source", source.clone()), ("result", result.clone())],
                *n,
            ));
        }
    }
    counter_family(
        encoder,
        "allowlist_refresh",
        "Refresh attempts per source and result (success, not_modified, failure, refused).",
        &rows,
    )?;

    encode_source_health(encoder, status)
}

/// Each source's last success, failures in a row and refusals.
fn encode_source_health(
    encoder: &mut DescriptorEncoder,
    status: &AgentStatus,
) -> Result<(), std::fmt::Error> {
    let epoch = |t: std::time::SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    let rows: Vec<_> = status
        .sources
        .iter()
        .filter_map(|s| {
            s.last_success
                .map(|t| (vec![("source", s.id.clone())], epoch(t)))
        })
        .collect();
    gauge_family(
        encoder,
        "allowlist_refresh_last_success_timestamp_seconds",
        "When each source last refreshed successfully.",
        &rows,
    )?;
    let rows: Vec<_> = status
        .sources
        .iter()
        .map(|s| {
            (
                vec![("source", s.id.clone())],
                f64::from(s.consecutive_failures),
            )
        })
        .collect();
    gauge_family(
        encoder,
        "allowlist_source_consecutive_failures",
        "Refresh attempts in a row that failed or were refused.",
        &rows,
    )?;
    let rows: Vec<_> = status
        .sources
        .iter()
        .map(|s| (vec![("source", s.id.clone())], s.refusals))
        .collect();
    counter_family(
        encoder,
        "allowlist_guard_refusals",
        "Updates refused by the empty or shrink guard.",
        &rows,
    )?;
    gauge_family(
        encoder,
        "allowlist_refresh_interval_seconds",
        "The configured refresh interval.",
        &[(vec![], status.refresh_interval_secs as f64)],
    )?;
    Ok(())
}

/// The tables, the interfaces, state writes, the last sync and the agent itself.
fn encode_agent(
    encoder: &mut DescriptorEncoder,
    status: &AgentStatus,
) -> Result<(), std::fmt::Error> {
    gauge_family(
        encoder,
        "allowlist_map_entries",
        "Entries in the allowlist maps.",
        &[
            (
                vec![("map", names::ALLOW_V4.to_owned())],
                status.map_entries_v4 as f64,
            ),
            (
                vec![("map", names::ALLOW_V6.to_owned())],
                status.map_entries_v6 as f64,
            ),
        ],
    )?;
    gauge_family(
        encoder,
        "allowlist_map_capacity",
        "Capacity of the allowlist maps.",
        &[
            (
                vec![("map", names::ALLOW_V4.to_owned())],
                MAX_PREFIXES_V4 as f64,
            ),
            (
                vec![("map", names::ALLOW_V6.to_owned())],
                MAX_PREFIXES_V6 as f64,
            ),
        ],
    )?;
    let rows: Vec<_> = status
        .interfaces
        .iter()
        .map(|i| {
            (
                vec![("interface", i.name.clone())],
                f64::from(u8::from(i.attached)),
            )
        })
        .collect();
    gauge_family(
        encoder,
        "allowlist_interface_attached",
        "1 when the filter is attached to the configured interface, 0 when it is not filtered.",
        &rows,
    )?;
    counter_family(
        encoder,
        "allowlist_state_write_failures",
        "Writes to state_dir (last good lists, the status file) that failed: a full or read-only state_dir.",
        &[(vec![], status.state_write_failures)],
    )?;
    let sync_ok = status.last_sync.as_ref().is_some_and(|s| s.error.is_none());
    gauge_family(
        encoder,
        "allowlist_last_sync_success",
        "1 when the last map sync succeeded.",
        &[(vec![], f64::from(u8::from(sync_ok)))],
    )?;
    gauge_family(
        encoder,
        "allowlist_info",
        "Agent version and mode.",
        &[(
            vec![
                ("version", status.version.clone()),
                ("mode", status.mode.clone()),
            ],
            1.0,
        )],
    )?;
    Ok(())
}

/// The denied sources: packets from known senders, by sender (a preset or a
/// configured provider: bounded), kind and why; never a label per address.
fn encode_denied(
    encoder: &mut DescriptorEncoder,
    denied: &DeniedMetrics,
) -> Result<(), std::fmt::Error> {
    let rows: Vec<_> = (denied.known_packets.iter())
        .map(|((sender, kind, why), packets)| {
            (
                vec![
                    ("sender", sender.clone()),
                    ("kind", kind.label().to_owned()),
                    ("why", why.label().to_owned()),
                ],
                *packets,
            )
        })
        .collect();
    counter_family(
        encoder,
        "allowlist_denied_known_sender_packets",
        "Denied packets from sources that a preset or provider lists (estimates under a flood), by sender, kind (preset, provider) and why (not_configured, refused_update, removed_range, snapshot_only, in_force).",
        &rows,
    )?;
    gauge_family(
        encoder,
        "allowlist_denied_sources",
        "Distinct denied sources the agent keeps (see `allowlist denied`): known senders, and strangers (at most 1,000).",
        &[
            (
                vec![("sender", "known".to_owned())],
                denied.known_sources as f64,
            ),
            (
                vec![("sender", "stranger".to_owned())],
                denied.unknown_sources as f64,
            ),
        ],
    )
}
