//! The denied-source watch, read and configured by the agent (the program's side is
//! described in `allowlist_common::watch`).
//!
//! Reading walks the LRU map with one `BPF_MAP_GET_NEXT_KEY` and one
//! `BPF_MAP_LOOKUP_ELEM` (all CPUs' values at once) per entry: two syscalls per
//! source, 32,768 for a full map.

use std::{
    net::Ipv6Addr,
    time::{Duration, SystemTime},
};

use allowlist_common::{
    maps as names,
    watch::{self, DeniedSource, WatchSettings, WatchState},
};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{DatapathError, maps::map_err};

/// A source the program denied (TCP to a protected port, not in the list), as the
/// watch recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeniedEntry {
    /// The source: an IPv4 /32, or the /64 of an IPv6 source.
    pub source: IpNet,
    /// Packets recorded, summed over CPUs. Once the recording budget is spent not
    /// every denied packet is recorded: scale by [`super::Counters`]'
    /// `watch_recorded` and `watch_not_recorded` for an estimate.
    pub packets: u64,
    /// The destination port of the most recent record.
    pub port: u16,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

/// The watch's three maps.
pub(super) struct Watch {
    sources: PerCpuHashMap<MapData, watch::Key, DeniedSource>,
    settings: Array<MapData, WatchSettings>,
    state: PerCpuArray<MapData, WatchState>,
}

impl Watch {
    pub(super) fn new(
        sources: PerCpuHashMap<MapData, watch::Key, DeniedSource>,
        settings: Array<MapData, WatchSettings>,
        state: PerCpuArray<MapData, WatchState>,
    ) -> Self {
        Self {
            sources,
            settings,
            state,
        }
    }

    pub(super) fn settings(&self) -> Result<WatchSettings, DatapathError> {
        self.settings
            .get(&0, 0)
            .map_err(map_err(names::WATCH_SETTINGS))
    }

    pub(super) fn set_rate(&mut self, rate: u32) -> Result<(), DatapathError> {
        let current = self.settings()?;
        if current.rate == rate {
            return Ok(());
        }
        let next = WatchSettings {
            rate,
            generation: current.generation.wrapping_add(1),
        };
        self.settings
            .set(0, next, 0)
            .map_err(map_err(names::WATCH_SETTINGS))
    }

    /// Packets recorded, summed over CPUs.
    pub(super) fn recorded(&self) -> Result<u64, DatapathError> {
        let values = self.state.get(&0, 0).map_err(map_err(names::WATCH_STATE))?;
        Ok(values.iter().map(|s| s.recorded).sum())
    }

    /// Every source in the map, with the CPUs' records merged.
    pub(super) fn entries(&self) -> Result<Vec<DeniedEntry>, DatapathError> {
        let clock = Clock::now();
        let mut out = Vec::new();
        for item in self.sources.iter() {
            let (key, values) = match item {
                Ok(item) => item,
                // The LRU evicted the key between the walk and the lookup.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(names::DENIED_SOURCES)(e)),
            };
            if let Some(entry) = merge(&key, &values, &clock) {
                out.push(entry);
            }
        }
        Ok(out)
    }
}

/// The source a key stands for.
fn source(key: &watch::Key) -> IpNet {
    let addr = Ipv6Addr::from(*key);
    match addr.to_ipv4_mapped() {
        Some(v4) => IpNet::V4(Ipv4Net::new(v4, 32).expect("/32 is valid")),
        None => IpNet::V6(Ipv6Net::new(addr, 64).expect("/64 is valid")),
    }
}

/// One entry from its per-CPU records; `None` when no CPU holds one.
fn merge(
    key: &watch::Key,
    values: &PerCpuValues<DeniedSource>,
    clock: &Clock,
) -> Option<DeniedEntry> {
    let mut packets = 0u64;
    let mut first = u64::MAX;
    let mut last: Option<&DeniedSource> = None;
    for v in values.iter().filter(|v| v.packets != 0) {
        packets += v.packets;
        first = first.min(v.first_seen_ns);
        if last.is_none_or(|l| v.last_seen_ns > l.last_seen_ns) {
            last = Some(v);
        }
    }
    let last = last?;
    Some(DeniedEntry {
        source: source(key),
        packets,
        port: last.port,
        first_seen: clock.wall(first),
        last_seen: clock.wall(last.last_seen_ns),
    })
}

/// Converts the program's `CLOCK_MONOTONIC_COARSE` nanoseconds to wall-clock time,
/// from one reading of both clocks.
struct Clock {
    wall: SystemTime,
    monotonic_ns: u64,
}

impl Clock {
    fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Self {
            wall: SystemTime::now(),
            monotonic_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        }
    }

    fn wall(&self, monotonic_ns: u64) -> SystemTime {
        // The coarse clock lags the fine one by up to a tick; never after now.
        let ago = Duration::from_nanos(self.monotonic_ns.saturating_sub(monotonic_ns));
        self.wall.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn keys_name_their_source() {
        assert_eq!(
            source(&watch::key_v4([198, 51, 100, 7])),
            "198.51.100.7/32".parse::<IpNet>().unwrap()
        );
        let v6: Ipv6Addr = "2001:db8:2:3:4:5:6:7".parse().unwrap();
        assert_eq!(
            source(&watch::key_v6(v6.octets())),
            "2001:db8:2:3::/64".parse::<IpNet>().unwrap()
        );
        // An IPv4-mapped address in an IPv6 header keeps to its /64 (::/64), apart
        // from the IPv4 key of the same address.
        let mapped = Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped();
        assert_eq!(
            source(&watch::key_v6(mapped.octets())),
            "::/64".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn clock_converts_back_in_time() {
        let clock = Clock {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
            monotonic_ns: 50_000_000_000,
        };
        assert_eq!(
            clock.wall(40_000_000_000),
            SystemTime::UNIX_EPOCH + Duration::from_secs(990)
        );
        assert_eq!(
            clock.wall(60_000_000_000),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000)
        );
    }
}
