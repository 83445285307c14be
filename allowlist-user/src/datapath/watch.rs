//! The denied-source watch, read and configured by the agent (the program's side is
//! described in `allowlist_common::watch`).
//!
//! Reading takes the map [`BATCH`] entries at a time (`BPF_MAP_LOOKUP_BATCH`, Linux
//! 5.6+; aya 0.14 has no batch operations, so the syscall is made here): 17 syscalls
//! for a full map of 16,384 sources. Where the kernel has no batch operations it
//! walks the map with one `BPF_MAP_GET_NEXT_KEY` and one `BPF_MAP_LOOKUP_ELEM` per
//! entry, 32,768 syscalls for a full map.

use std::{
    io,
    net::Ipv6Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, SystemTime},
};

use allowlist_common::{
    maps as names,
    watch::{self, DeniedSource, WatchSettings, WatchState},
};
use aya::maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{DatapathError, maps::map_err};

/// A source the program denied (TCP to a protected port, not in the list), as the
/// watch recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Entries asked for per `BPF_MAP_LOOKUP_BATCH`.
const BATCH: usize = 1024;

/// The watch's three maps.
pub(super) struct Watch {
    /// `DENIED_SOURCES`, checked to be a hash map with per-CPU values of the right
    /// key and value sizes; kept as a `Map` for its descriptor (batch lookups).
    sources: Map,
    settings: Array<MapData, WatchSettings>,
    state: PerCpuArray<MapData, WatchState>,
}

impl Watch {
    pub(super) fn new(
        sources: Map,
        settings: Array<MapData, WatchSettings>,
        state: PerCpuArray<MapData, WatchState>,
    ) -> Result<Self, DatapathError> {
        let watch = Self {
            sources,
            settings,
            state,
        };
        watch.typed_sources()?;
        Ok(watch)
    }

    fn typed_sources(
        &self,
    ) -> Result<PerCpuHashMap<&MapData, watch::Key, DeniedSource>, DatapathError> {
        PerCpuHashMap::try_from(&self.sources).map_err(map_err(names::DENIED_SOURCES))
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
        match self.entries_batched(&clock) {
            Ok(entries) => Ok(entries),
            // No batch operations on this kernel (before 5.6).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | ENOTSUPP)) => {
                self.entries_one_by_one(&clock)
            }
            Err(io_error) => Err(DatapathError::Map {
                name: names::DENIED_SOURCES.to_owned(),
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error,
                }),
            }),
        }
    }

    fn entries_batched(&self, clock: &Clock) -> io::Result<Vec<DeniedEntry>> {
        let (Map::PerCpuLruHashMap(data) | Map::PerCpuHashMap(data)) = &self.sources else {
            unreachable!("checked by Watch::new");
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let value_size = size_of::<DeniedSource>().next_multiple_of(8);
        let mut keys = vec![[0u8; 16]; BATCH];
        let mut values = vec![DeniedSource::default(); BATCH * cpus];
        debug_assert_eq!(value_size, size_of::<DeniedSource>());
        let mut out = Vec::new();
        // The hash map's batch token is a bucket index.
        let mut token: Option<u32> = None;
        loop {
            let mut next = 0u32;
            let (count, done) = lookup_batch(
                data.fd().as_fd().as_raw_fd(),
                token.as_ref(),
                &mut next,
                &mut keys,
                &mut values,
            )?;
            for (i, key) in keys.iter().take(count).enumerate() {
                let per_cpu = &values[i * cpus..(i + 1) * cpus];
                if let Some(entry) = merge(key, per_cpu.iter(), clock) {
                    out.push(entry);
                }
            }
            if done {
                return Ok(out);
            }
            token = Some(next);
        }
    }

    fn entries_one_by_one(&self, clock: &Clock) -> Result<Vec<DeniedEntry>, DatapathError> {
        let mut out = Vec::new();
        for item in self.typed_sources()?.iter() {
            let (key, values) = match item {
                Ok(item) => item,
                // The LRU evicted the key between the walk and the lookup.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(names::DENIED_SOURCES)(e)),
            };
            if let Some(entry) = merge(&key, values.iter(), clock) {
                out.push(entry);
            }
        }
        Ok(out)
    }
}

/// The kernel's ENOTSUPP (not ENOTSUP): an operation the map type lacks.
const ENOTSUPP: i32 = 524;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One `BPF_MAP_LOOKUP_BATCH` of up to `keys.len()` entries, from the position `token`
/// (the start when `None`); writes the next position to `next`. Returns how many
/// entries were read, and whether the map has no more.
fn lookup_batch(
    fd: i32,
    token: Option<&u32>,
    next: &mut u32,
    keys: &mut [watch::Key],
    values: &mut [DeniedSource],
) -> io::Result<(usize, bool)> {
    let mut attr = BatchAttr {
        in_batch: token.map_or(0, |t| std::ptr::from_ref(t) as u64),
        out_batch: std::ptr::from_mut(next) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix (the kernel zero-fills the rest);
    // the buffers it points to hold `count` keys and `count` × CPUs values, as the
    // kernel writes them for a per-CPU map, and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            std::ptr::from_mut(&mut attr),
            size_of::<BatchAttr>() as u32,
        )
    };
    if rc == 0 {
        return Ok((attr.count as usize, false));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        // The end of the map: `count` says how many entries this call still read.
        Some(libc::ENOENT) => Ok((attr.count as usize, true)),
        _ => Err(error),
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
fn merge<'a>(
    key: &watch::Key,
    values: impl Iterator<Item = &'a DeniedSource>,
    clock: &Clock,
) -> Option<DeniedEntry> {
    let mut packets = 0u64;
    let mut first = u64::MAX;
    let mut last: Option<&DeniedSource> = None;
    for v in values.filter(|v| v.packets != 0) {
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
