//! Turning the maps' content into a new allowlist without a moment in which an
//! address allowed before and after is missing.

use std::collections::{BTreeMap, BTreeSet};

use allowlist_common::{MAX_PREFIXES_V4, MAX_PREFIXES_V6, maps as names};
use ipnet::IpNet;
use serde::Serialize;

use super::{DatapathError, Maps};
use crate::prefixes;

/// Counts of one map sync.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

impl SyncReport {
    pub fn map_operations(&self) -> usize {
        self.added + self.changed + self.removed
    }
}

/// Changes the tries from `current` (what they hold) to `desired`: additions and
/// changes first, then removals, so that a prefix replaced by another one covering the
/// same addresses (a /24 split into /25s, say) is never absent. Unchanged entries are
/// not rewritten. On an error the tries hold a superset of `current` ∩ `desired`.
pub fn apply(
    maps: &mut Maps,
    current: &BTreeMap<IpNet, u32>,
    desired: &BTreeMap<IpNet, u32>,
) -> Result<SyncReport, DatapathError> {
    check_capacity(current, desired)?;
    let diff = prefixes::diff(current, desired);
    let mut report = SyncReport {
        unchanged: desired.len() - diff.upserts.len(),
        ..Default::default()
    };
    for (net, rule) in &diff.upserts {
        maps.upsert(*net, *rule)?;
        if current.contains_key(net) {
            report.changed += 1;
        } else {
            report.added += 1;
        }
    }
    for net in &diff.removals {
        maps.remove(*net)?;
        report.removed += 1;
    }
    Ok(report)
}

/// Refuses a set that can't fit before anything is written: during the sync the
/// tries hold the union of the old and new sets.
fn check_capacity(
    current: &BTreeMap<IpNet, u32>,
    desired: &BTreeMap<IpNet, u32>,
) -> Result<(), DatapathError> {
    let union = |v4: bool| {
        current
            .keys()
            .chain(desired.keys())
            .filter(|n| n.addr().is_ipv4() == v4)
            .collect::<BTreeSet<_>>()
            .len()
    };
    for (v4, capacity, map) in [
        (true, MAX_PREFIXES_V4, names::ALLOW_V4),
        (false, MAX_PREFIXES_V6, names::ALLOW_V6),
    ] {
        let needed = union(v4);
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
