//! The fail-safe guards: whether a list that parsed and validated may replace a
//! source's set in force. Pure decisions over sets and counts; [`super::Refresher`]
//! gathers what they need and acts on the answer.

use std::collections::HashSet;

use allowlist_common::{MAX_PREFIXES_V4, MAX_PREFIXES_V6, maps};
use ipnet::IpNet;
use thiserror::Error;

use crate::{config::Guards, prefixes};

/// Why a guard refused an update; the set in force stays.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Refusal {
    #[error("the document's serial {new} is older than the serial {old} of the list in force")]
    OlderSerial { new: String, old: String },
    #[error(
        "the update selects no prefixes ({entries} entries read); refused: set guards.allow_empty, force = true on the source, or use --force"
    )]
    Empty { entries: usize },
    #[error(
        "the update would remove {:.1}% of the addresses in force (more than guards.max_shrink = {}%); refused: use force = true on the source or --force to accept it",
        .fraction * 100.0,
        .max_shrink * 100.0
    )]
    Shrink { fraction: f64, max_shrink: f64 },
    #[error(
        "source {source_id} lists {own} {family} prefixes after aggregation; with the other sources' the allowlist would need {needed} entries, and map {map} holds at most {capacity}: refused, the list in force stays (a list this large is likely broken; if it is genuine, select fewer ranges from it)"
    )]
    Capacity {
        source_id: String,
        family: &'static str,
        own: usize,
        needed: usize,
        capacity: usize,
        map: &'static str,
    },
}

impl Refusal {
    /// The guard that refused: `serial`, `empty`, `shrink` or `capacity` (the names of
    /// the history's records and of the documentation).
    pub(crate) fn guard(&self) -> &'static str {
        match self {
            Refusal::OlderSerial { .. } => "serial",
            Refusal::Empty { .. } => "empty",
            Refusal::Shrink { .. } => "shrink",
            Refusal::Capacity { .. } => "capacity",
        }
    }
}

/// One source's update, as the guards see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Update<'a> {
    pub source_id: &'a str,
    /// The validated, aggregated prefixes of the update.
    pub new: &'a [IpNet],
    /// The entries the document listed (for the empty guard's message).
    pub entries: usize,
    pub new_serial: Option<&'a str>,
    /// The set in force when it is a last good list (saved or fetched): a snapshot
    /// or nothing is never guarded against shrinking.
    pub last_good: Option<&'a [IpNet]>,
    pub last_serial: Option<&'a str>,
    /// The prefixes the other sources have in force: the maps hold them too.
    pub others: &'a HashSet<IpNet>,
    /// `force = true` on the source, or `--force`: the empty and shrink guards are off.
    pub forced: bool,
}

/// Every guard, in order: serial, empty, shrink, capacity.
pub(crate) fn check(guards: &Guards, update: &Update<'_>) -> Result<(), Refusal> {
    serial(update.new_serial, update.last_serial)?;
    empty(guards, update.new, update.entries, update.forced)?;
    if let Some(last_good) = update.last_good {
        shrink(guards, last_good, update.new, update.forced)?;
    }
    capacity(update.source_id, update.new, update.others)
}

/// Whether serial `new` is older than `old`: numerically when both are numbers, else
/// as strings of equal length (ISO dates); other pairs are not comparable.
pub(crate) fn serial_is_older(new: &str, old: &str) -> bool {
    match (new.parse::<u128>(), old.parse::<u128>()) {
        (Ok(n), Ok(o)) => n < o,
        _ => new.len() == old.len() && new < old,
    }
}

/// Refuses a document older than the list in force.
pub(crate) fn serial(new: Option<&str>, old: Option<&str>) -> Result<(), Refusal> {
    match (new, old) {
        (Some(new), Some(old)) if serial_is_older(new, old) => Err(Refusal::OlderSerial {
            new: new.to_owned(),
            old: old.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Refuses an empty update unless `allow_empty` or forced.
pub(crate) fn empty(
    guards: &Guards,
    new: &[IpNet],
    entries: usize,
    forced: bool,
) -> Result<(), Refusal> {
    if new.is_empty() && !guards.allow_empty && !forced {
        return Err(Refusal::Empty { entries });
    }
    Ok(())
}

/// Refuses an update that removes more than `max_shrink` of the addresses of the last
/// good list, unless forced or an allowed empty list.
pub(crate) fn shrink(
    guards: &Guards,
    last_good: &[IpNet],
    new: &[IpNet],
    forced: bool,
) -> Result<(), Refusal> {
    if forced || (new.is_empty() && guards.allow_empty) {
        return Ok(());
    }
    let fraction = prefixes::shrink_fraction(last_good, new);
    if fraction > guards.max_shrink {
        return Err(Refusal::Shrink {
            fraction,
            max_shrink: guards.max_shrink,
        });
    }
    Ok(())
}

/// Refuses a list that cannot fit in the maps beside the other sources' prefixes:
/// the sync would fail, and the list must never become the last good one.
pub(crate) fn capacity(
    source_id: &str,
    new: &[IpNet],
    others: &HashSet<IpNet>,
) -> Result<(), Refusal> {
    let is_v4 = |n: &&IpNet| matches!(n, IpNet::V4(_));
    let own_v4 = new.iter().filter(is_v4).count();
    let own_v6 = new.len() - own_v4;
    let others_v4 = others.iter().filter(is_v4).count();
    let others_v6 = others.len() - others_v4;
    let added_v4 = new
        .iter()
        .filter(is_v4)
        .filter(|n| !others.contains(n))
        .count();
    let added_v6 = new
        .iter()
        .filter(|n| !is_v4(n) && !others.contains(n))
        .count();
    for (family, own, needed, capacity, map) in [
        (
            "IPv4",
            own_v4,
            others_v4 + added_v4,
            MAX_PREFIXES_V4,
            maps::ALLOW_V4,
        ),
        (
            "IPv6",
            own_v6,
            others_v6 + added_v6,
            MAX_PREFIXES_V6,
            maps::ALLOW_V6,
        ),
    ] {
        if needed > capacity {
            return Err(Refusal::Capacity {
                source_id: source_id.to_owned(),
                family,
                own,
                needed,
                capacity,
                map,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ipnet::Ipv4Net;

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// `count` distinct IPv4 /32s from 10.0.0.0 on.
    fn hosts(count: usize) -> Vec<IpNet> {
        (0..count as u32)
            .map(|i| {
                IpNet::V4(
                    Ipv4Net::new(
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i),
                        32,
                    )
                    .unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn serials_compare_as_numbers_or_as_dates() {
        assert!(serial_is_older("2025-07-24", "2025-07-25"));
        assert!(!serial_is_older("100", "99"));
        assert!(!serial_is_older("abc", "abcd"));
        assert_eq!(
            serial(Some("9"), Some("10")).unwrap_err().to_string(),
            "the document's serial 9 is older than the serial 10 of the list in force"
        );
        assert!(serial(Some("10"), Some("10")).is_ok());
        assert!(serial(None, Some("10")).is_ok());
        assert!(serial(Some("9"), None).is_ok());
    }

    #[test]
    fn empty_lists_need_allow_empty_or_force() {
        let guards = Guards::default();
        let refusal = empty(&guards, &[], 3, false).unwrap_err();
        assert_eq!(refusal, Refusal::Empty { entries: 3 });
        assert!(
            refusal
                .to_string()
                .starts_with("the update selects no prefixes (3 entries read)")
        );
        assert!(empty(&guards, &[], 3, true).is_ok());
        let allow = Guards {
            allow_empty: true,
            ..Guards::default()
        };
        assert!(empty(&allow, &[], 3, false).is_ok());
        assert!(empty(&guards, &nets(&["192.0.2.0/24"]), 1, false).is_ok());
    }

    #[test]
    fn shrink_beyond_max_shrink_is_refused_unless_forced() {
        let guards = Guards::default();
        let old = nets(&["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]);
        let refusal = shrink(&guards, &old, &nets(&["192.0.2.0/24"]), false).unwrap_err();
        let text = refusal.to_string();
        assert!(
            text.contains("66.7%") && text.contains("guards.max_shrink = 50%"),
            "{text}"
        );
        // One of three gone (33%), growth, or forced: accepted.
        assert!(shrink(&guards, &old, &old[..2], false).is_ok());
        assert!(shrink(&guards, &old[..1], &old, false).is_ok());
        assert!(shrink(&guards, &old, &old[..1], true).is_ok());
        // Growth elsewhere does not make up for what is lost.
        assert!(shrink(&guards, &old, &nets(&["192.0.0.0/16"]), false).is_err());
        // An allowed empty list is no shrink; a refused one is the empty guard's.
        let allow = Guards {
            allow_empty: true,
            ..Guards::default()
        };
        assert!(shrink(&allow, &old, &[], false).is_ok());
    }

    #[test]
    fn capacity_counts_the_other_sources_prefixes_once() {
        let others: HashSet<IpNet> = hosts(MAX_PREFIXES_V4 - 1).into_iter().collect();
        // Already in the maps through another source: no new entry.
        let shared = hosts(1);
        assert!(capacity("a/0", &shared, &others).is_ok());
        let new = nets(&["192.0.2.0/24", "198.51.100.0/24"]);
        let refusal = capacity("a/0", &new, &others).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Capacity {
                source_id: "a/0".into(),
                family: "IPv4",
                own: 2,
                needed: MAX_PREFIXES_V4 + 1,
                capacity: MAX_PREFIXES_V4,
                map: maps::ALLOW_V4,
            }
        );
        assert!(refusal.to_string().starts_with(&format!(
            "source a/0 lists 2 IPv4 prefixes after aggregation; with the other sources' the allowlist would need {}",
            MAX_PREFIXES_V4 + 1
        )));
        // IPv6 counts apart.
        assert!(capacity("a/0", &nets(&["2001:db8::/32"]), &others).is_ok());
    }

    #[test]
    fn check_runs_every_guard_in_order() {
        let guards = Guards::default();
        let old = nets(&["192.0.2.0/24", "198.51.100.0/24"]);
        let others = HashSet::new();
        let update = Update {
            source_id: "a/0",
            new: &[],
            entries: 0,
            new_serial: Some("1"),
            last_good: Some(&old),
            last_serial: Some("2"),
            others: &others,
            forced: false,
        };
        // An older, empty document: the serial guard speaks first.
        assert!(matches!(
            check(&guards, &update),
            Err(Refusal::OlderSerial { .. })
        ));
        let update = Update {
            new_serial: None,
            ..update
        };
        assert!(matches!(
            check(&guards, &update),
            Err(Refusal::Empty { .. })
        ));
        let fewer = nets(&["192.0.2.0/25"]);
        let update = Update {
            new: &fewer,
            ..update
        };
        assert!(matches!(
            check(&guards, &update),
            Err(Refusal::Shrink { .. })
        ));
        // No last good list (a snapshot in force): nothing to shrink from.
        assert!(
            check(
                &guards,
                &Update {
                    last_good: None,
                    ..update
                }
            )
            .is_ok()
        );
        assert!(
            check(
                &guards,
                &Update {
                    forced: true,
                    ..update
                }
            )
            .is_ok()
        );
    }
}
