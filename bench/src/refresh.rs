//! What a refresh costs the agent: filling empty maps, applying a small diff to a
//! large set, and parsing a large provider document.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use allowlist_user::{
    Format, LoadOptions, RecordFilter, Selector, SyncReport, apply_change, load_unpinned,
    parse_document, resync,
};
use anyhow::{Context as _, Result};
use ipnet::IpNet;
use rand::{Rng, rngs::StdRng};

use crate::lists;

pub(crate) struct FullLoad {
    pub time: Duration,
    pub report: SyncReport,
}

/// Loads the program with fresh maps and fills them with `list` the way the agent
/// does at its first start (`resync`: read the empty tries, rebuild the fast
/// table from them, apply the set). The median of `rounds` loads.
pub(crate) fn full_load(list: &BTreeMap<IpNet, u32>, rounds: usize) -> Result<FullLoad> {
    let mut runs = Vec::new();
    for _ in 0..rounds {
        let (_ebpf, mut maps) = load_unpinned(&LoadOptions::default())?;
        let start = Instant::now();
        let report = resync(&mut maps, list)?;
        runs.push(FullLoad {
            time: start.elapsed(),
            report,
        });
    }
    runs.sort_by_key(|r| r.time);
    Ok(runs.swap_remove(runs.len() / 2))
}

pub(crate) struct DiffApply {
    pub times: Vec<Duration>,
    pub report: SyncReport,
}

/// Applies a diff of `changes` prefixes (a third added, a third removed, a third moved
/// to another rule) to `list`, and back, `rounds` times each way.
pub(crate) fn diff_apply(
    rng: &mut StdRng,
    list: &BTreeMap<IpNet, u32>,
    changes: usize,
    rounds: usize,
) -> Result<DiffApply> {
    let (_ebpf, mut maps) = load_unpinned(&LoadOptions::default())?;
    resync(&mut maps, list)?;
    let mut next = list.clone();
    let keys: Vec<IpNet> = list.keys().copied().collect();
    let removed = changes / 3;
    let moved = changes / 3;
    let added = changes - removed - moved;
    for _ in 0..removed {
        next.remove(&keys[rng.random_range(0..keys.len())]);
    }
    for _ in 0..moved {
        let key = keys[rng.random_range(0..keys.len())];
        if let Some(rule) = next.get_mut(&key) {
            *rule = (*rule + 1) % lists::RULES;
        }
    }
    let extra = lists::v4_prefixes(rng, added, 16..=32);
    next.extend(extra);
    let mut times = Vec::new();
    let mut report = SyncReport::default();
    for _ in 0..rounds {
        let start = Instant::now();
        report = apply_change(&mut maps, list, &next)?;
        times.push(start.elapsed());
        let start = Instant::now();
        apply_change(&mut maps, &next, list)?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(DiffApply { times, report })
}

pub(crate) struct JsonParse {
    pub bytes: usize,
    pub entries: usize,
    pub times: Vec<Duration>,
}

/// Parses an AWS-shaped document of about `bytes` bytes with the agent's JSON source
/// parser (selection: both prefix arrays, EC2 records only).
pub(crate) fn json_parse(rng: &mut StdRng, bytes: usize, rounds: usize) -> Result<JsonParse> {
    let body = lists::aws_document(rng, bytes);
    let format = Format::Json(Selector {
        items: vec!["prefixes".into(), "ipv6_prefixes".into()],
        cidr: vec!["ip_prefix".into(), "ipv6_prefix".into()],
        filters: vec![RecordFilter {
            field: "service".into(),
            any_of: vec!["EC2".into()],
        }],
        serial: Some("syncToken".into()),
    });
    let mut times = Vec::new();
    let mut entries = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        let parsed = parse_document(&format, &body, "bench/0").context("parse")?;
        times.push(start.elapsed());
        entries = parsed.entries.len();
    }
    times.sort();
    Ok(JsonParse {
        bytes: body.len(),
        entries,
        times,
    })
}
