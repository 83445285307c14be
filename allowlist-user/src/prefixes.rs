//! Validation of raw entries into prefixes, the merged allowlist, and diffs.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use thiserror::Error;

/// Who wrote a list: the bogon filter applies only to lists fetched from a provider;
/// an operator may allowlist an office RFC 1918 range in a static or file source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Fetched from a URL.
    Remote,
    /// Written by the operator (static list, local file, built-in snapshot).
    Operator,
}

/// The broadest prefixes a source may hold, per address family (`guards.min_prefix_v4`
/// and `guards.min_prefix_v6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floors {
    pub v4: u8,
    pub v6: u8,
}

/// Why a source's entries were rejected (the whole source is rejected).
#[derive(Debug, Error, PartialEq)]
pub enum PrefixError {
    #[error("source {source_id}: entry {entry:?} is not an IP address or CIDR prefix")]
    Unparseable { source_id: String, entry: String },
    #[error(
        "source {source_id}: prefix {entry} is broader than the /{floor} floor (guards.min_prefix_v{family})"
    )]
    TooBroad {
        source_id: String,
        entry: String,
        floor: u8,
        family: u8,
    },
}

/// The prefixes of one source after validation, with what was changed or dropped.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Validated {
    /// Aggregated: sorted, without duplicates or overlaps.
    pub prefixes: Vec<IpNet>,
    /// Entries normalised or dropped, one human-readable line each.
    pub warnings: Vec<String>,
}

/// Parses one entry: a bare address (to /32 or /128) or a CIDR prefix. The flag is
/// true when host bits were set and have been cleared.
pub(crate) fn parse_entry(entry: &str) -> Option<(IpNet, bool)> {
    let entry = entry.trim();
    if let Ok(net) = entry.parse::<IpNet>() {
        let trunc = net.trunc();
        return Some((trunc, trunc != net));
    }
    match entry.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => Some((IpNet::V4(Ipv4Net::new(a, 32).ok()?), false)),
        IpAddr::V6(a) => Some((IpNet::V6(Ipv6Net::new(a, 128).ok()?), false)),
    }
}

/// Ranges no provider sends webhooks from. Documentation ranges are deliberately
/// absent: tests serve them from local HTTPS sources.
const BOGONS: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fc00::/7", "unique local (fc00::/7)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// What kind of bogon the prefix overlaps, if any.
pub(crate) fn bogon(net: &IpNet) -> Option<&'static str> {
    BOGONS.iter().find_map(|&(bogon, what)| {
        let bogon: IpNet = bogon.parse().expect("valid bogon table");
        (bogon.contains(net) || net.contains(&bogon)).then_some(what)
    })
}

/// Validates a source's raw entries. Unparseable entries and prefixes broader than the
/// floors fail the whole source; host bits are cleared and, for remote sources, bogons
/// dropped, each with a warning. The result is aggregated.
pub(crate) fn validate(
    entries: &[String],
    source_id: &str,
    trust: Trust,
    floors: impl Into<Floors>,
) -> Result<Validated, PrefixError> {
    let floors = floors.into();
    let mut prefixes = Vec::with_capacity(entries.len());
    let mut warnings = Vec::new();
    for entry in entries {
        let Some((net, normalised)) = parse_entry(entry) else {
            return Err(PrefixError::Unparseable {
                source_id: source_id.to_owned(),
                entry: entry.clone(),
            });
        };
        let (floor, family) = match net {
            IpNet::V4(_) => (floors.v4, 4),
            IpNet::V6(_) => (floors.v6, 6),
        };
        if net.prefix_len() < floor {
            return Err(PrefixError::TooBroad {
                source_id: source_id.to_owned(),
                entry: entry.trim().to_owned(),
                floor,
                family,
            });
        }
        if normalised {
            warnings.push(format!("{entry} has host bits set; using {net}"));
        }
        if trust == Trust::Remote
            && let Some(what) = bogon(&net)
        {
            warnings.push(format!("dropped {entry}: {what} range"));
            continue;
        }
        prefixes.push(net);
    }
    Ok(Validated {
        prefixes: IpNet::aggregate(&prefixes),
        warnings,
    })
}

/// Number of addresses in a prefix (saturating at `u128::MAX` for `::/0`).
pub(crate) fn prefix_size(net: &IpNet) -> u128 {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// Addresses covered by IPv4 and IPv6 prefixes, overlaps counted once.
pub(crate) fn address_counts(prefixes: &[IpNet]) -> (u128, u128) {
    IpNet::aggregate(&prefixes.to_vec())
        .iter()
        .fold((0u128, 0u128), |(v4, v6), net| match net {
            IpNet::V4(_) => (v4 + prefix_size(net), v6),
            IpNet::V6(_) => (v4, v6.saturating_add(prefix_size(net))),
        })
}

fn range(net: &IpNet) -> (bool, u128, u128) {
    match net {
        IpNet::V4(n) => (
            false,
            u32::from(n.network()).into(),
            u32::from(n.broadcast()).into(),
        ),
        IpNet::V6(n) => (true, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// Addresses (IPv4, IPv6) covered by `old` that `new` no longer covers.
pub(crate) fn removed_addresses(old: &[IpNet], new: &[IpNet]) -> (u128, u128) {
    let old: Vec<_> = IpNet::aggregate(&old.to_vec()).iter().map(range).collect();
    let new: Vec<_> = IpNet::aggregate(&new.to_vec()).iter().map(range).collect();
    let mut removed = (0u128, 0u128);
    // Both lists are sorted (IPv4 first, then by address) and disjoint: sweep, adding
    // each old range's size and taking away its overlaps with new ranges.
    let mut j = 0;
    for &(v6, start, end) in &old {
        let size = (end - start).saturating_add(1);
        if v6 {
            removed.1 = removed.1.saturating_add(size);
        } else {
            removed.0 += size;
        }
        while j < new.len() && (new[j].0, new[j].2) < (v6, start) {
            j += 1;
        }
        let mut k = j;
        while k < new.len() && (new[k].0, new[k].1) <= (v6, end) {
            let (_, s, e) = new[k];
            let overlap = (e.min(end) - s.max(start)).saturating_add(1);
            if v6 {
                removed.1 = removed.1.saturating_sub(overlap);
            } else {
                removed.0 -= overlap;
            }
            k += 1;
        }
    }
    removed
}

/// The fraction (0..=1) of the addresses of `old` that `new` removes, the larger of
/// the IPv4 and the IPv6 fractions (so a /48 can't mask the loss of every IPv4 host).
pub(crate) fn shrink_fraction(old: &[IpNet], new: &[IpNet]) -> f64 {
    let (old4, old6) = address_counts(old);
    let (rem4, rem6) = removed_addresses(old, new);
    let frac = |removed: u128, total: u128| {
        if total == 0 {
            0.0
        } else {
            removed as f64 / total as f64
        }
    };
    frac(rem4, old4).max(frac(rem6, old6))
}

/// One provider's merged prefixes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderSet {
    pub name: String,
    /// The provider's index in the configuration: the value stored in the map.
    pub rule_id: u32,
    pub prefixes: Vec<IpNet>,
}

/// The merged allowlist in force.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Allowlist {
    pub providers: Vec<ProviderSet>,
}

impl Allowlist {
    /// Adds a provider; its prefixes are aggregated.
    pub fn push(&mut self, name: impl Into<String>, rule_id: u32, prefixes: &[IpNet]) {
        self.providers.push(ProviderSet {
            name: name.into(),
            rule_id,
            prefixes: IpNet::aggregate(&prefixes.to_vec()),
        });
    }

    /// Every prefix and the rule id of the provider that lists it; when two providers
    /// list the same prefix, the lower rule id wins.
    pub fn entries(&self) -> BTreeMap<IpNet, u32> {
        let mut entries = BTreeMap::new();
        for provider in &self.providers {
            for net in &provider.prefixes {
                entries
                    .entry(*net)
                    .and_modify(|id: &mut u32| *id = (*id).min(provider.rule_id))
                    .or_insert(provider.rule_id);
            }
        }
        entries
    }

    /// Number of distinct (IPv4, IPv6) prefixes across providers.
    pub fn counts(&self) -> (usize, usize) {
        let entries = self.entries();
        let v4 = entries.keys().filter(|n| matches!(n, IpNet::V4(_))).count();
        (v4, entries.len() - v4)
    }

    pub fn is_empty(&self) -> bool {
        self.providers.iter().all(|p| p.prefixes.is_empty())
    }
}

/// What to change in the map to go from one set of entries to another.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Diff {
    /// New prefixes and prefixes whose rule id changed.
    pub upserts: Vec<(IpNet, u32)>,
    pub removals: Vec<IpNet>,
}

impl Diff {
    pub(crate) fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// The changes that turn `old` into `new`; unchanged entries appear in neither list.
/// One pass over both maps in key order (the agent diffs sets of 100,000 prefixes to
/// apply a handful of changes).
pub(crate) fn diff(old: &BTreeMap<IpNet, u32>, new: &BTreeMap<IpNet, u32>) -> Diff {
    let mut diff = Diff::default();
    let mut old = old.iter().peekable();
    let mut new = new.iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (Some((o, _)), Some((n, _))) if o < n => {
                diff.removals.push(**o);
                old.next();
            }
            (Some((o, old_id)), Some((n, new_id))) if o == n => {
                if old_id != new_id {
                    diff.upserts.push((**n, **new_id));
                }
                old.next();
                new.next();
            }
            (_, Some((n, id))) => {
                diff.upserts.push((**n, **id));
                new.next();
            }
            (Some((o, _)), None) => {
                diff.removals.push(**o);
                old.next();
            }
            (None, None) => return diff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default `[guards]` floors.
    const FLOORS: Floors = Floors { v4: 8, v6: 19 };

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn entries(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn ok(list: &[&str], trust: Trust) -> Validated {
        validate(&entries(list), "p/0", trust, FLOORS).unwrap()
    }

    #[test]
    fn bare_addresses_become_host_prefixes() {
        let v = ok(
            &["3.18.12.63", "2606:50c0::1", " 192.0.2.7 "],
            Trust::Remote,
        );
        assert_eq!(
            v.prefixes,
            [
                net("3.18.12.63/32"),
                net("192.0.2.7/32"),
                net("2606:50c0::1/128")
            ]
        );
        assert!(v.warnings.is_empty());
    }

    #[test]
    fn host_bits_are_cleared_with_a_warning() {
        let v = ok(&["192.0.2.77/24"], Trust::Remote);
        assert_eq!(v.prefixes, [net("192.0.2.0/24")]);
        assert_eq!(
            v.warnings,
            ["192.0.2.77/24 has host bits set; using 192.0.2.0/24"]
        );
    }

    #[test]
    fn a_bad_entry_fails_the_source_naming_it() {
        for bad in [
            "192.0.2.300",
            "example.com",
            "192.0.2.0/33",
            "",
            "1.2.3.4/24/1",
            "<html>",
        ] {
            let err = validate(
                &entries(&["192.0.2.1", bad]),
                "partner/0",
                Trust::Remote,
                FLOORS,
            )
            .unwrap_err();
            assert_eq!(
                err,
                PrefixError::Unparseable {
                    source_id: "partner/0".into(),
                    entry: bad.into()
                }
            );
            assert!(err.to_string().contains("partner/0"), "{err}");
        }
    }

    #[test]
    fn prefixes_broader_than_the_floor_are_refused() {
        let err = validate(&entries(&["4.0.0.0/7"]), "p/0", Trust::Remote, FLOORS).unwrap_err();
        assert_eq!(
            err.to_string(),
            "source p/0: prefix 4.0.0.0/7 is broader than the /8 floor (guards.min_prefix_v4)"
        );
        let err = validate(&entries(&["2600::/18"]), "p/0", Trust::Operator, FLOORS).unwrap_err();
        assert!(matches!(
            err,
            PrefixError::TooBroad {
                floor: 19,
                family: 6,
                ..
            }
        ));
        assert!(validate(&entries(&["0.0.0.0/0"]), "p/0", Trust::Operator, FLOORS).is_err());
        // At the floor is fine.
        assert_eq!(
            ok(&["4.0.0.0/8", "2600::/19"], Trust::Remote)
                .prefixes
                .len(),
            2
        );
        let strict = Floors { v4: 24, ..FLOORS };
        assert!(validate(&entries(&["192.0.2.0/23"]), "p/0", Trust::Remote, strict).is_err());
    }

    #[test]
    fn bogons_are_dropped_from_remote_sources_only() {
        let list = [
            "10.1.2.3",
            "172.16.0.0/12",
            "192.168.1.0/24",
            "127.0.0.1",
            "0.0.0.0",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::/48",
            "ff02::1",
            "::ffff:10.0.0.1",
            "3.18.12.63",
        ];
        let remote = ok(&list, Trust::Remote);
        assert_eq!(remote.prefixes, [net("3.18.12.63/32")]);
        assert_eq!(remote.warnings.len(), list.len() - 1);
        assert!(
            remote.warnings[0].contains("private"),
            "{:?}",
            remote.warnings
        );
        // An operator may allowlist an office range.
        let operator = ok(&["10.1.0.0/16", "192.168.0.0/24"], Trust::Operator);
        assert_eq!(operator.prefixes.len(), 2);
        assert!(operator.warnings.is_empty());
    }

    #[test]
    fn documentation_ranges_are_kept_even_from_remote_sources() {
        let docs = [
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "2001:db8::/32",
        ];
        let v = ok(&docs, Trust::Remote);
        assert_eq!(v.prefixes.len(), 4);
        assert!(v.warnings.is_empty());
    }

    #[test]
    fn duplicates_and_overlaps_are_merged() {
        let v = ok(
            &[
                "192.0.2.0/25",
                "192.0.2.128/25",
                "192.0.2.5",
                "192.0.2.0/24",
                "198.51.100.1",
                "198.51.100.1/32",
                "2001:db8::/48",
                "2001:db8::1",
            ],
            Trust::Remote,
        );
        assert_eq!(
            v.prefixes,
            [
                net("192.0.2.0/24"),
                net("198.51.100.1/32"),
                net("2001:db8::/48")
            ]
        );
    }

    #[test]
    fn address_counting_and_shrink() {
        let old = [
            net("192.0.2.0/24"),
            net("198.51.100.0/24"),
            net("2001:db8::/64"),
        ];
        assert_eq!(address_counts(&old), (512, 1 << 64));
        assert_eq!(removed_addresses(&old, &old), (0, 0));
        assert_eq!(shrink_fraction(&old, &old), 0.0);
        // Half the IPv4 addresses gone.
        let new = [net("192.0.2.0/24"), net("2001:db8::/64")];
        assert_eq!(removed_addresses(&old, &new), (256, 0));
        assert_eq!(shrink_fraction(&old, &new), 0.5);
        // A broader new prefix covers the old ones; growth never counts as shrink.
        let new = [
            net("192.0.2.0/23"),
            net("198.51.100.0/24"),
            net("2001:db8::/48"),
        ];
        assert_eq!(removed_addresses(&old, &new), (0, 0));
        // Partial overlaps: keep 192.0.2.0/25 and a /26 of 198.51.100.0/24.
        let new = [
            net("192.0.2.0/25"),
            net("198.51.100.64/26"),
            net("2001:db8::/64"),
        ];
        assert_eq!(removed_addresses(&old, &new), (128 + 192, 0));
        // Losing all IPv6 can't hide behind a large IPv4 set.
        let new = [net("192.0.2.0/24"), net("198.51.100.0/24")];
        assert_eq!(shrink_fraction(&old, &new), 1.0);
        assert_eq!(shrink_fraction(&[], &new), 0.0);
        assert_eq!(prefix_size(&net("::/0")), u128::MAX);
        assert_eq!(prefix_size(&net("0.0.0.0/0")), 1 << 32);
    }

    #[test]
    fn allowlist_entries_lower_rule_id_wins() {
        let mut a = Allowlist::default();
        a.push(
            "intercom",
            0,
            &[
                net("192.0.2.1/32"),
                net("192.0.2.0/32"),
                net("2001:db8::/48"),
            ],
        );
        a.push("partner", 1, &[net("192.0.2.0/31"), net("198.51.100.0/24")]);
        a.push("office", 2, &[net("198.51.100.0/24")]);
        // intercom's two /32s aggregate into the /31 that partner also lists.
        assert_eq!(
            a.providers[0].prefixes,
            [net("192.0.2.0/31"), net("2001:db8::/48")]
        );
        let entries = a.entries();
        assert_eq!(
            entries.into_iter().collect::<Vec<_>>(),
            [
                (net("192.0.2.0/31"), 0),
                (net("198.51.100.0/24"), 1),
                (net("2001:db8::/48"), 0)
            ]
        );
        assert_eq!(a.counts(), (2, 1));
        assert!(!a.is_empty());
        assert!(Allowlist::default().is_empty());
    }

    #[test]
    fn diff_lists_only_changes() {
        let old: BTreeMap<IpNet, u32> = [
            (net("192.0.2.0/24"), 0),
            (net("198.51.100.0/24"), 1),
            (net("2001:db8::/48"), 0),
        ]
        .into();
        let new: BTreeMap<IpNet, u32> = [
            (net("192.0.2.0/24"), 0),
            (net("198.51.100.0/24"), 2),
            (net("203.0.113.0/24"), 1),
        ]
        .into();
        let d = diff(&old, &new);
        assert_eq!(
            d.upserts,
            [(net("198.51.100.0/24"), 2), (net("203.0.113.0/24"), 1)]
        );
        assert_eq!(d.removals, [net("2001:db8::/48")]);
        assert!(diff(&new, &new).is_empty());
        let from_empty = diff(&BTreeMap::new(), &new);
        assert_eq!(from_empty.upserts.len(), 3);
        assert!(from_empty.removals.is_empty());
    }
}
