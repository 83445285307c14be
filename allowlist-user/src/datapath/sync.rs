//! Turning the maps' content into a new allowlist without a moment in which an
//! address allowed before and after is missing, in the tries or in the fast tables in
//! front of them.

use std::collections::BTreeMap;

use allowlist_common::{MAX_PREFIXES_V4, MAX_PREFIXES_V6, maps as names};
use ipnet::IpNet;
use serde::Serialize;

use super::{
    DatapathError, Maps,
    fast::{Blocks, FastReport},
    fast6::Roots,
};
use crate::prefixes::{self, Diff};

/// Counts of one map sync.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// What the sync wrote to the fast tables.
    pub fast: FastReport,
}

impl SyncReport {
    /// Trie entries written or deleted.
    pub fn map_operations(&self) -> usize {
        self.added + self.changed + self.removed
    }
}

/// Changes the maps from `current` (what the tries hold, and what the fast table
/// repeats) to `desired`, adding before removing:
///
/// 1. additions and rule changes go into the tries: they hold the union of both sets;
/// 2. the fast-table codes of the IPv4 /24s and the IPv6 /16s those prefixes touch
///    are recomputed from the union;
/// 3. removals leave the tries: they hold `desired`;
/// 4. the codes of the /24s and /16s the removed prefixes touched are recomputed from
///    `desired`.
///
/// So a prefix replaced by another one covering the same addresses (a /24 split into
/// /25s, say) is never absent from either. Between steps 3 and 4 a removed address may
/// still pass through the fast table (a moment of extra allow, never a drop). Unchanged
/// entries are not rewritten. On an error the tries hold a superset of
/// `current` ∩ `desired` and the table allows at least that too; the caller must
/// forget `current` and [`resync`] next time.
pub fn apply(
    maps: &mut Maps,
    current: &BTreeMap<IpNet, u32>,
    desired: &BTreeMap<IpNet, u32>,
) -> Result<SyncReport, DatapathError> {
    maps.fast_recycle()?;
    changes(maps, current, desired)
}

/// [`apply`] within a sync that has begun (chunks freed since are not reused).
fn changes(
    maps: &mut Maps,
    current: &BTreeMap<IpNet, u32>,
    desired: &BTreeMap<IpNet, u32>,
) -> Result<SyncReport, DatapathError> {
    let diff = prefixes::diff(current, desired);
    check_capacity(desired, &diff)?;
    let mut report = SyncReport {
        unchanged: desired.len() - diff.upserts.len(),
        ..Default::default()
    };
    if diff.is_empty() {
        return Ok(report);
    }
    for (net, rule) in &diff.upserts {
        maps.trie_upsert(*net, *rule)?;
        if current.contains_key(net) {
            report.changed += 1;
        } else {
            report.added += 1;
        }
    }
    let added = diff.upserts.iter().map(|(net, _)| net);
    report.fast += maps.fast_refresh(
        &[desired, current],
        &Blocks::of(added.clone()),
        &Roots::of(added),
    )?;
    for net in &diff.removals {
        maps.trie_remove(*net)?;
        report.removed += 1;
    }
    report.fast += maps.fast_refresh(
        &[desired],
        &Blocks::of(&diff.removals),
        &Roots::of(&diff.removals),
    )?;
    Ok(report)
}

/// Like [`apply`] when what the maps hold is not known (a load that found a previous
/// agent's maps, a sync that failed halfway): reads the tries, makes the whole fast
/// tables agree with them (tables created by this load are all `DEEPER`, correct but
/// slow), then applies `desired`.
pub fn resync(
    maps: &mut Maps,
    desired: &BTreeMap<IpNet, u32>,
) -> Result<SyncReport, DatapathError> {
    let live = maps.live_entries()?;
    maps.fast_recycle()?;
    let rebuilt = maps.rebuild_fast(&live)?;
    let mut report = changes(maps, &live, desired)?;
    report.fast += rebuilt;
    Ok(report)
}

/// Refuses a set that can't fit before anything is written: during the sync the
/// tries hold the union of the old and new sets (`desired` and the removals).
fn check_capacity(desired: &BTreeMap<IpNet, u32>, diff: &Diff) -> Result<(), DatapathError> {
    let v4 = |nets: &mut dyn Iterator<Item = &IpNet>| nets.filter(|n| n.addr().is_ipv4()).count();
    let union_v4 = v4(&mut desired.keys()) + v4(&mut diff.removals.iter());
    let union_v6 = desired.len() + diff.removals.len() - union_v4;
    for (needed, capacity, map) in [
        (union_v4, MAX_PREFIXES_V4, names::ALLOW_V4),
        (union_v6, MAX_PREFIXES_V6, names::ALLOW_V6),
    ] {
        if needed > capacity {
            return Err(DatapathError::Capacity {
                map,
                needed,
                capacity,
            });
        }
    }
    Ok(())
}
