//! Typed handles on the XDP program's maps, and the operations the agent performs on
//! them. Works the same on maps just created by a load and on maps opened from pins.
//!
//! The tries are the allowlist; the fast tables (see `fast` and `fast6`) repeat their
//! answer and are kept in step by `sync`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use allowlist_common::{PORT_SLOTS, Reason, Rule, Settings, counter, maps as names};
use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    DatapathError,
    fast::{Blocks, FastReport, FastV4, Layers},
    fast6::{FastV6, Roots},
    watch::{DeniedEntry, Watch},
};

pub struct Maps {
    allow_v4: LpmTrie<MapData, [u8; 4], Rule>,
    allow_v6: LpmTrie<MapData, [u8; 16], Rule>,
    ports: Array<MapData, u32>,
    settings: Array<MapData, Settings>,
    counters: PerCpuArray<MapData, u64>,
    hits: PerCpuArray<MapData, u64>,
    /// `None` only for pins left by a build without these fast tables (read-only use
    /// by the CLI until the agent restarts and creates them).
    fast: Option<(FastV4, FastV6)>,
    /// `None` only for pins left by a build without the denied-source watch (the
    /// agent's next load creates its maps).
    watch: Option<Watch>,
}

/// Packet counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Packets per exit reason (index: `Reason as usize`).
    pub exits: Vec<u64>,
    /// Packets monitor mode let through that `Reason` would have dropped.
    pub would_drop: Vec<u64>,
    /// Observation counters, by name.
    pub observed: BTreeMap<&'static str, u64>,
    /// Packets denied for `not_allowlisted` (dropped or would-drop) that the
    /// denied-source watch recorded, and those it did not (its budget was spent, it
    /// was off, or the filter predates it).
    pub watch_recorded: u64,
    pub watch_not_recorded: u64,
}

impl Counters {
    pub fn exit(&self, reason: Reason) -> u64 {
        self.exits[reason as usize]
    }
    pub fn would_drop(&self, reason: Reason) -> u64 {
        self.would_drop[reason as usize]
    }
}

/// The map called `name` from `get`, as the typed handle `T`.
fn typed<T>(
    get: &mut impl FnMut(&str) -> Result<Map, DatapathError>,
    name: &str,
) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(get(name)?).map_err(|source| DatapathError::Map {
        name: name.to_owned(),
        source,
    })
}

impl Maps {
    /// Takes the maps out of a freshly loaded object.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Self::from_maps(
            |name| {
                ebpf.take_map(name)
                    .ok_or_else(|| DatapathError::MissingMap(name.to_owned()))
            },
            true,
            true,
        )
    }

    /// Opens the maps pinned under `dir` by a running (or exited) agent.
    pub fn open_pinned(dir: &Path) -> Result<Self, DatapathError> {
        let open = |name: &str| -> Result<Map, DatapathError> {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).map_err(|source| DatapathError::OpenPin {
                path: path.clone(),
                source,
            })?;
            Map::from_map_data(data).map_err(|source| DatapathError::Map {
                name: name.to_owned(),
                source,
            })
        };
        // A filter pinned by a build without the fast tables has the tries alone; one
        // pinned before the watch has no watch maps.
        let with_fast_tables = [names::FAST_V4, names::FAST_V4_CHUNKS, names::FAST_V6]
            .iter()
            .all(|name| dir.join(name).exists());
        Self::from_maps(
            open,
            with_fast_tables,
            names::WATCH.iter().all(|name| dir.join(name).exists()),
        )
    }

    fn from_maps(
        mut get: impl FnMut(&str) -> Result<Map, DatapathError>,
        with_fast_tables: bool,
        with_watch: bool,
    ) -> Result<Self, DatapathError> {
        Ok(Self {
            allow_v4: typed(&mut get, names::ALLOW_V4)?,
            allow_v6: typed(&mut get, names::ALLOW_V6)?,
            ports: typed(&mut get, names::PORTS)?,
            settings: typed(&mut get, names::SETTINGS)?,
            counters: typed(&mut get, names::COUNTERS)?,
            hits: typed(&mut get, names::HITS)?,
            fast: if with_fast_tables {
                Some((
                    FastV4::new(
                        array(&mut get, names::FAST_V4)?,
                        array(&mut get, names::FAST_V4_CHUNKS)?,
                    ),
                    FastV6::new(array(&mut get, names::FAST_V6)?),
                ))
            } else {
                None
            },
            watch: if with_watch {
                Some(Watch::new(
                    get(names::DENIED_SOURCES)?,
                    typed(&mut get, names::WATCH_SETTINGS)?,
                    typed(&mut get, names::WATCH_STATE)?,
                )?)
            } else {
                None
            },
        })
    }

    /// Makes exactly `ports` protected: new ports are added before old ones are
    /// cleared, so a port protected before and after is never unprotected in between.
    pub fn set_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), DatapathError> {
        for &port in ports {
            self.ports
                .set(u32::from(port), 1, 0)
                .map_err(map_err(names::PORTS))?;
        }
        for port in self.protected_ports()? {
            if !ports.contains(&port) {
                self.ports
                    .set(u32::from(port), 0, 0)
                    .map_err(map_err(names::PORTS))?;
            }
        }
        Ok(())
    }

    pub fn protected_ports(&self) -> Result<BTreeSet<u16>, DatapathError> {
        let mut set = BTreeSet::new();
        for (port, flag) in self.ports.iter().enumerate().take(PORT_SLOTS) {
            if flag.map_err(map_err(names::PORTS))? != 0 {
                set.insert(port as u16);
            }
        }
        Ok(set)
    }

    pub fn settings(&self) -> Result<Settings, DatapathError> {
        self.settings.get(&0, 0).map_err(map_err(names::SETTINGS))
    }

    pub fn set_monitor(&mut self, monitor: bool) -> Result<(), DatapathError> {
        self.update_settings(|s| s.monitor = u32::from(monitor))
    }

    /// Offers one denied packet in `one_in` (rounded up to a power of two) to the
    /// watch's budget; 1 offers every one (see `Settings::watch_sample_mask`).
    pub fn set_watch_sampling(&mut self, one_in: u32) -> Result<(), DatapathError> {
        let mask = one_in.max(1).checked_next_power_of_two().unwrap_or(1 << 31) - 1;
        self.update_settings(|s| s.watch_sample_mask = mask)
    }

    fn update_settings(&mut self, change: impl FnOnce(&mut Settings)) -> Result<(), DatapathError> {
        let mut next = self.settings()?;
        change(&mut next);
        self.settings
            .set(0, next, 0)
            .map_err(map_err(names::SETTINGS))
    }

    fn watch(&self) -> Result<&Watch, DatapathError> {
        self.watch.as_ref().ok_or_else(missing_watch)
    }

    /// Sets how many denied packets each CPU records per second at most (see
    /// `allowlist_common::watch`); 0 turns the watch off.
    pub fn set_watch(&mut self, rate_per_cpu: u32) -> Result<(), DatapathError> {
        self.watch
            .as_mut()
            .ok_or_else(missing_watch)?
            .set_rate(rate_per_cpu)
    }

    /// The watch's recording rate per CPU and second (0: off); `None` for a filter
    /// pinned by a build without the watch.
    pub fn watch_rate(&self) -> Result<Option<u32>, DatapathError> {
        self.watch
            .as_ref()
            .map(|w| w.settings().map(|s| s.rate))
            .transpose()
    }

    /// The sources the watch holds (up to `allowlist_common::watch::CAPACITY`; the
    /// least recently recorded make room for new ones).
    pub fn denied_sources(&self) -> Result<Vec<DeniedEntry>, DatapathError> {
        self.watch()?.entries()
    }

    fn fast_tables(&mut self) -> Result<&mut (FastV4, FastV6), DatapathError> {
        self.fast
            .as_mut()
            .ok_or_else(|| DatapathError::MissingMap(names::FAST_V4.to_owned()))
    }

    /// A sync starts: the fast tables' chunks freed by earlier syncs may be reused.
    pub(super) fn fast_recycle(&mut self) -> Result<(), DatapathError> {
        let (v4, v6) = self.fast_tables()?;
        v4.recycle();
        v6.recycle();
        Ok(())
    }

    /// Makes the fast tables' codes for `blocks` and `roots` what `layers` (the tries'
    /// content) says.
    pub(super) fn fast_refresh(
        &mut self,
        layers: &Layers<'_>,
        blocks: &Blocks,
        roots: &Roots,
    ) -> Result<FastReport, DatapathError> {
        let (v4, v6) = self.fast_tables()?;
        let mut report = FastReport::default();
        if !blocks.is_empty() {
            report += v4.with_writer(|w| w.refresh(layers, blocks))?;
        }
        if !roots.is_empty() {
            report += v6.with_writer(|w| w.refresh(layers, roots))?;
        }
        Ok(report)
    }

    /// Makes the whole fast tables agree with `live` (what the tries hold): after a
    /// load that found pinned maps, or a sync that failed halfway.
    pub fn rebuild_fast(
        &mut self,
        live: &BTreeMap<IpNet, u32>,
    ) -> Result<FastReport, DatapathError> {
        let (v4, v6) = self.fast_tables()?;
        let mut report = v4.with_writer(|w| w.rebuild(&[live]))?;
        report += v6.with_writer(|w| w.rebuild(&[live]))?;
        Ok(report)
    }

    /// Chunks in use in the IPv4 and the IPv6 pools (reads the tables if no sync did
    /// yet).
    pub fn fast_chunks_in_use(&mut self) -> Result<(usize, usize), DatapathError> {
        let (v4, v6) = self.fast_tables()?;
        Ok((
            v4.with_writer(|w| w.chunks_in_use())?,
            v6.with_writer(|w| w.chunks_in_use())?,
        ))
    }

    /// Inserts or overwrites one prefix in its trie only.
    pub(super) fn trie_upsert(&mut self, net: IpNet, rule: u32) -> Result<(), DatapathError> {
        let value = Rule { rule };
        match net {
            IpNet::V4(n) => {
                let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
                self.allow_v4
                    .insert(&key, value, 0)
                    .map_err(map_err(names::ALLOW_V4))
            }
            IpNet::V6(n) => {
                let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
                self.allow_v6
                    .insert(&key, value, 0)
                    .map_err(map_err(names::ALLOW_V6))
            }
        }
    }

    /// Removes one prefix from its trie only; removing an absent prefix is not an error.
    pub(super) fn trie_remove(&mut self, net: IpNet) -> Result<(), DatapathError> {
        let result = match net {
            IpNet::V4(n) => self
                .allow_v4
                .remove(&Key::new(u32::from(n.prefix_len()), n.network().octets())),
            IpNet::V6(n) => self
                .allow_v6
                .remove(&Key::new(u32::from(n.prefix_len()), n.network().octets())),
        };
        match result {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(if net.addr().is_ipv4() {
                names::ALLOW_V4
            } else {
                names::ALLOW_V6
            })(e)),
        }
    }

    /// Every prefix in the tries, with its rule.
    pub fn live_entries(&self) -> Result<BTreeMap<IpNet, u32>, DatapathError> {
        let mut out = BTreeMap::new();
        for item in self.allow_v4.iter() {
            let (key, rule) = item.map_err(map_err(names::ALLOW_V4))?;
            let net = Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8)
                .map_err(|_| DatapathError::CorruptKey(names::ALLOW_V4))?;
            out.insert(IpNet::V4(net), rule.rule);
        }
        for item in self.allow_v6.iter() {
            let (key, rule) = item.map_err(map_err(names::ALLOW_V6))?;
            let net = Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8)
                .map_err(|_| DatapathError::CorruptKey(names::ALLOW_V6))?;
            out.insert(IpNet::V6(net), rule.rule);
        }
        Ok(out)
    }

    pub fn counters(&self) -> Result<Counters, DatapathError> {
        // Read before the counters, so that it never exceeds the denied packets.
        let recorded = match &self.watch {
            Some(watch) => watch.recorded()?,
            None => 0,
        };
        let mut slots = Vec::with_capacity(counter::SLOTS as usize);
        for values in self.counters.iter() {
            let values = values.map_err(map_err(names::COUNTERS))?;
            slots.push(values.iter().sum::<u64>());
        }
        let n = Reason::COUNT as usize;
        let denied = slots[counter::exit(Reason::NotAllowlisted) as usize]
            + slots[counter::would_drop(Reason::NotAllowlisted) as usize];
        Ok(Counters {
            exits: slots[..n].to_vec(),
            would_drop: slots[n..2 * n].to_vec(),
            observed: counter::OBSERVATIONS
                .iter()
                .map(|(slot, name)| (*name, slots[*slot as usize]))
                .collect(),
            watch_recorded: recorded,
            watch_not_recorded: denied.saturating_sub(recorded),
        })
    }

    /// Hits per rule id, for the first `rules` rules.
    pub fn hits(&self, rules: usize) -> Result<Vec<u64>, DatapathError> {
        self.hits
            .iter()
            .take(rules)
            .map(|v| v.map(|v| v.iter().sum()).map_err(map_err(names::HITS)))
            .collect()
    }
}

/// The array map called `name`, untyped (the fast tables are written through a memory
/// mapping, not element by element).
fn array(
    get: &mut impl FnMut(&str) -> Result<Map, DatapathError>,
    name: &str,
) -> Result<MapData, DatapathError> {
    match get(name)? {
        Map::Array(data) => Ok(data),
        _ => Err(DatapathError::MissingMap(format!(
            "{name} (not an array map)"
        ))),
    }
}

fn missing_watch() -> DatapathError {
    DatapathError::MissingMap(format!(
        "{} (the filter was pinned by a build without the denied-source watch; the agent creates it when it starts)",
        names::DENIED_SOURCES
    ))
}

pub(super) fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        name: name.to_owned(),
        source,
    }
}
