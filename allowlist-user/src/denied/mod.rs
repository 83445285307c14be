//! The denied sources, as the agent keeps them: successive reads of the datapath's
//! table of denied sources merged into one bounded table, each source told apart by
//! what is known of it (see [`senders`]), kept in `state_dir` (`denied.json`)
//! for [`report`] (`allowlist denied`) to read.
//!
//! - The datapath's entries are cumulative and live in an LRU map: an entry can be
//!   evicted and re-created, its count restarting from 0 with a new `first_seen`. Reads
//!   are merged by `(source, first_seen)`: the same entry adds what it gained since
//!   the last read, a re-created one adds all it has.
//! - Under a flood the datapath records only part of the denied packets; the counts
//!   are then scaled by the recorded share of the interval and shown as estimates
//!   (which assumes the recorded packets are a fair sample of all denied ones).
//! - Known senders and strangers are kept apart, each bounded (space-saving: a new
//!   source in a full table replaces the one with the fewest packets and inherits its
//!   count as a possible overcount), so a flood of random strangers cannot push a
//!   known sender out.
//! - A source is forgotten `keep` after it was last seen. Addresses are kept in
//!   memory and in `state_dir` only.

pub(crate) mod report;
mod sampling;
pub(crate) mod senders;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    denied::senders::{Known, SenderIndex, SenderKind, Why},
    store::{self, StateError, rfc3339},
};

pub(crate) use crate::store::DENIED_FILE;
pub(crate) use sampling::Sampling;
/// Bumped when the file's layout changes incompatibly.
const FILE_VERSION: u32 = 1;
/// Strangers kept: the table's share for sources nothing is known about.
pub(crate) const STRANGERS_KEPT: usize = 1_000;
/// Known senders kept: a flood spoofing addresses inside a preset's ranges is bounded
/// too, apart from the strangers.
pub(crate) const KNOWN_KEPT: usize = 10_000;
/// Two reads of one datapath entry give its `first_seen` within this of each other
/// (the datapath's boot-time clock is converted to wall-clock time at each read).
const SAME_ENTRY: Duration = Duration::from_secs(1);

/// One entry of the datapath's table of denied sources, as the datapath reads it:
/// cumulative since `first_seen`, restarting from 0 if the entry is evicted and
/// re-created.
pub(crate) use crate::datapath::DeniedEntry as Observation;

/// The datapath's totals of denied packets since its maps were created: recorded in
/// its table of sources or not (a flood fills the table faster than it may grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Recording {
    pub recorded: u64,
    pub unrecorded: u64,
}

/// The datapath entry of a source as last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    #[serde(with = "rfc3339")]
    first_seen: SystemTime,
    packets: u64,
}

/// One denied source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub source: IpNet,
    /// Denied packets from it since `first_seen` (an estimate if `estimated` or
    /// `overcount`).
    pub packets: u64,
    /// At most this many of `packets` may be another source's: the count it took
    /// over when it replaced that source in a full table.
    #[serde(default)]
    pub overcount: u64,
    /// Part of `packets` was scaled up from the share the datapath recorded.
    #[serde(default)]
    pub estimated: bool,
    /// The destination port of the last packet.
    pub port: u16,
    #[serde(with = "rfc3339")]
    pub first_seen: SystemTime,
    #[serde(with = "rfc3339")]
    pub last_seen: SystemTime,
    /// What is known of it, most relevant first; empty when nothing is.
    #[serde(default)]
    pub known: Vec<Known>,
    /// Its datapath entries at the last read, so that a restarted agent does not
    /// count them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cursor: Vec<Cursor>,
}

impl Record {
    pub(crate) fn is_estimate(&self) -> bool {
        self.estimated || self.overcount > 0
    }
}

/// What `denied.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct DeniedFile {
    pub version: u32,
    #[serde(with = "rfc3339")]
    pub written_at: SystemTime,
    /// When the datapath was last read.
    #[serde(with = "rfc3339::option")]
    pub read_at: Option<SystemTime>,
    /// The share of the denied packets that the datapath recorded between its last
    /// two reads (1 when it recorded them all; absent when it did not say).
    #[serde(default)]
    pub recorded_share: Option<f64>,
    pub keep_secs: u64,
    pub strangers_kept: usize,
    pub known_kept: usize,
    /// Sources pushed out of the full table since the agent started.
    pub strangers_forgotten: u64,
    pub known_forgotten: u64,
    /// Known senders first, then strangers, each by packets.
    pub records: Vec<Record>,
}

impl DeniedFile {
    pub(crate) fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(DENIED_FILE)
    }

    /// The file, if the agent has written one; an error if `state_dir` is not safe
    /// (see [`store::check_dir`]), the file is not the agent's, or of another version.
    pub(crate) fn read(state_dir: &Path) -> Result<Option<Self>, StateError> {
        store::check_dir(state_dir)?;
        let path = Self::path(state_dir);
        let file: Option<Self> = store::read_json(&path)?;
        match file {
            Some(f) if f.version != FILE_VERSION => Err(StateError::Untrusted {
                path,
                reason: format!(
                    "it is version {} of the file, this program reads version {FILE_VERSION}",
                    f.version
                ),
            }),
            other => Ok(other),
        }
    }

    fn write(&self, state_dir: &Path) -> Result<(), StateError> {
        store::write_json_atomic(&Self::path(state_dir), self)
    }
}

/// Sources of one kind, at most `capacity`, by packets (space-saving).
#[derive(Debug)]
struct Bounded {
    capacity: usize,
    records: HashMap<IpNet, Record>,
    by_packets: BTreeSet<(u64, IpNet)>,
    forgotten: u64,
}

impl Bounded {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            records: HashMap::new(),
            by_packets: BTreeSet::new(),
            forgotten: 0,
        }
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn remove(&mut self, source: &IpNet) -> Option<Record> {
        let record = self.records.remove(source)?;
        self.by_packets.remove(&(record.packets, *source));
        Some(record)
    }

    /// Adds a source not in the table; when it is full, the one with the fewest
    /// packets leaves, and the newcomer inherits its count as a possible overcount.
    fn insert(&mut self, mut record: Record) {
        debug_assert!(!self.records.contains_key(&record.source));
        if self.records.len() >= self.capacity {
            let Some(&(fewest, source)) = self.by_packets.first() else {
                return;
            };
            self.remove(&source);
            self.forgotten += 1;
            record.packets += fewest;
            record.overcount += fewest;
        }
        self.by_packets.insert((record.packets, record.source));
        self.records.insert(record.source, record);
    }

    /// Changes a record in place, keeping the order by packets.
    fn update(&mut self, source: &IpNet, change: impl FnOnce(&mut Record)) -> bool {
        let Some(record) = self.records.get_mut(source) else {
            return false;
        };
        self.by_packets.remove(&(record.packets, *source));
        change(record);
        self.by_packets.insert((record.packets, *source));
        true
    }

    fn expire(&mut self, seen_before: SystemTime) {
        let old: Vec<IpNet> = (self.records.values())
            .filter(|r| r.last_seen < seen_before)
            .map(|r| r.source)
            .collect();
        for source in old {
            self.remove(&source);
        }
    }

    /// By packets, most first.
    fn sorted(&self) -> impl Iterator<Item = &Record> {
        self.by_packets.iter().rev().map(|(_, s)| &self.records[s])
    }
}

/// What the metrics endpoint shows of the denied sources.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct DeniedMetrics {
    /// Denied packets from known senders since the agent started, by sender, kind and
    /// reason (of the most relevant thing known).
    pub known_packets: BTreeMap<(String, SenderKind, Why), u64>,
    /// Distinct sources in the table: known senders, strangers.
    pub known_sources: usize,
    pub unknown_sources: usize,
}

pub(crate) type SharedDenied = Arc<RwLock<DeniedMetrics>>;

/// Rate-limits the log line of a known sender's first drop: at most one per sender
/// per [`FirstDropLog::PER_SENDER`], and [`FirstDropLog::PER_MINUTE`] in all.
#[derive(Debug, Default)]
struct FirstDropLog {
    last_by_sender: HashMap<String, SystemTime>,
    minute_start: Option<SystemTime>,
    in_minute: u32,
    /// First drops not logged since the last line.
    held_back: u64,
}

impl FirstDropLog {
    const PER_SENDER: Duration = Duration::from_secs(600);
    const PER_MINUTE: u32 = 10;

    /// Whether to log this first drop; `Some(first drops not logged before it)`.
    fn admit(&mut self, sender: &str, now: SystemTime) -> Option<u64> {
        let since = |t: SystemTime| now.duration_since(t).unwrap_or_default();
        if self
            .last_by_sender
            .get(sender)
            .is_some_and(|&t| since(t) < Self::PER_SENDER)
        {
            self.held_back += 1;
            return None;
        }
        if self
            .minute_start
            .is_none_or(|t| since(t) >= Duration::from_secs(60))
        {
            self.minute_start = Some(now);
            self.in_minute = 0;
        }
        if self.in_minute >= Self::PER_MINUTE {
            self.held_back += 1;
            return None;
        }
        self.in_minute += 1;
        self.last_by_sender.insert(sender.to_owned(), now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// The agent's view of the denied sources; see the module's documentation. The agent
/// [`observe`](Self::observe)s every read of the datapath (every 10 s is plenty: the
/// datapath counts between reads), [`save`](Self::save)s every minute or so and on
/// exit, and gives it a new index ([`set_index`](Self::set_index)) whenever what it
/// knows of the senders changes (a refresh, a reload).
#[derive(Debug)]
pub(crate) struct DeniedWatch {
    keep: Duration,
    index: SenderIndex,
    known: Bounded,
    strangers: Bounded,
    /// Every datapath entry of the last read, by source.
    previous: HashMap<IpNet, Vec<Cursor>>,
    /// After a restart: entries first seen before this were counted by the previous
    /// agent, up to what it saved.
    counted_before: Option<SystemTime>,
    last_totals: Option<Recording>,
    read_at: Option<SystemTime>,
    recorded_share: Option<f64>,
    known_packets: BTreeMap<(String, SenderKind, Why), u64>,
    log: FirstDropLog,
    shared: SharedDenied,
}

impl DeniedWatch {
    pub(crate) fn new(keep: Duration, index: SenderIndex) -> Self {
        Self::with_capacity(keep, index, KNOWN_KEPT, STRANGERS_KEPT)
    }

    fn with_capacity(keep: Duration, index: SenderIndex, known: usize, strangers: usize) -> Self {
        Self {
            keep,
            index,
            known: Bounded::new(known),
            strangers: Bounded::new(strangers),
            previous: HashMap::new(),
            counted_before: None,
            last_totals: None,
            read_at: None,
            recorded_share: None,
            known_packets: BTreeMap::new(),
            log: FirstDropLog::default(),
            shared: SharedDenied::default(),
        }
    }

    /// The table saved by the previous agent, if any, classified with `index`; `keep`
    /// is the configuration's `[watch] keep`. A file that cannot be read is logged and
    /// the table starts empty.
    pub(crate) fn load(state_dir: &Path, keep: Duration, index: SenderIndex) -> Self {
        let mut watch = Self::new(keep, index);
        match DeniedFile::read(state_dir) {
            Ok(Some(file)) => watch.restore(file),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "the denied sources of the previous run are not kept"),
        }
        watch
    }

    fn restore(&mut self, file: DeniedFile) {
        self.counted_before = file.read_at;
        for mut record in file.records {
            let cursor = std::mem::take(&mut record.cursor);
            if !cursor.is_empty() {
                self.previous.insert(record.source, cursor);
            }
            record.known = self.index.lookup(record.source);
            self.table_for(&record).insert(record);
        }
        self.publish();
    }

    fn table_for(&mut self, record: &Record) -> &mut Bounded {
        if record.known.is_empty() {
            &mut self.strangers
        } else {
            &mut self.known
        }
    }

    /// A handle on the metrics, kept up to date by [`Self::observe`].
    pub(crate) fn shared_metrics(&self) -> SharedDenied {
        self.shared.clone()
    }

    /// Replaces the index (after a refresh, a reload, a new history record) and
    /// classifies every source again.
    pub(crate) fn set_index(&mut self, index: SenderIndex) {
        self.index = index;
        let sources: Vec<IpNet> = (self.known.records.keys())
            .chain(self.strangers.records.keys())
            .copied()
            .collect();
        for source in sources {
            let Some(mut record) = self
                .known
                .remove(&source)
                .or_else(|| self.strangers.remove(&source))
            else {
                continue;
            };
            record.known = self.index.lookup(source);
            self.table_for(&record).insert(record);
        }
        self.publish();
    }

    /// Merges one read of the datapath's table (every entry) and its totals, if it
    /// has them, at `now`; forgets what was last seen more than `keep` ago.
    pub(crate) fn observe(
        &mut self,
        entries: &[Observation],
        totals: Option<Recording>,
        now: SystemTime,
    ) {
        let scale = self.scale(totals);
        let forget_before = now.checked_sub(self.keep).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut current: HashMap<IpNet, Vec<Cursor>> = HashMap::with_capacity(entries.len());
        for obs in entries {
            let gained = self.gained(obs);
            current.entry(obs.source).or_default().push(Cursor {
                first_seen: obs.first_seen,
                packets: obs.packets,
            });
            if gained == 0 || obs.last_seen < forget_before {
                continue;
            }
            let (packets, estimated) = match scale {
                Some(factor) => ((gained as f64 * factor).round() as u64, true),
                None => (gained, false),
            };
            self.add(obs, packets, estimated, now);
        }
        self.previous = current;
        self.counted_before = None;
        self.read_at = Some(now);
        self.known.expire(forget_before);
        self.strangers.expire(forget_before);
        self.publish();
    }

    /// The factor from recorded to denied packets since the last read: `None` when
    /// the datapath recorded them all (or says nothing).
    fn scale(&mut self, totals: Option<Recording>) -> Option<f64> {
        let Some(now) = totals else {
            self.recorded_share = None;
            return None;
        };
        let since = match self.last_totals.replace(now) {
            Some(last) if now.recorded >= last.recorded && now.unrecorded >= last.unrecorded => {
                Recording {
                    recorded: now.recorded - last.recorded,
                    unrecorded: now.unrecorded - last.unrecorded,
                }
            }
            // The first read, or maps that were created again: since they were.
            _ => now,
        };
        let denied = since.recorded + since.unrecorded;
        self.recorded_share = (denied > 0).then(|| since.recorded as f64 / denied as f64);
        (since.unrecorded > 0 && since.recorded > 0)
            .then(|| (since.recorded + since.unrecorded) as f64 / since.recorded as f64)
    }

    /// The packets an entry gained since the last read.
    fn gained(&self, obs: &Observation) -> u64 {
        let same = |c: &&Cursor| {
            let (a, b) = (c.first_seen, obs.first_seen);
            a.duration_since(b)
                .or_else(|_| b.duration_since(a))
                .unwrap_or_default()
                <= SAME_ENTRY
        };
        match self
            .previous
            .get(&obs.source)
            .and_then(|cs| cs.iter().find(same))
        {
            Some(last) if obs.packets >= last.packets => obs.packets - last.packets,
            // Fewer packets than before: an entry re-created within a second.
            Some(_) => obs.packets,
            // Read (and counted) by the previous agent, which did not keep it.
            None if self.counted_before.is_some_and(|t| obs.first_seen <= t) => 0,
            // New, or re-created after an eviction: all of it.
            None => obs.packets,
        }
    }

    fn add(&mut self, obs: &Observation, packets: u64, estimated: bool, now: SystemTime) {
        let merge = |r: &mut Record| {
            r.packets += packets;
            r.estimated |= estimated;
            if obs.last_seen >= r.last_seen {
                r.last_seen = obs.last_seen;
                r.port = obs.port;
            }
            r.first_seen = r.first_seen.min(obs.first_seen);
        };
        let known = if self.known.update(&obs.source, merge) {
            self.known.records[&obs.source].known.first().cloned()
        } else if self.strangers.update(&obs.source, merge) {
            None
        } else {
            let record = Record {
                source: obs.source,
                packets,
                overcount: 0,
                estimated,
                port: obs.port,
                first_seen: obs.first_seen,
                last_seen: obs.last_seen,
                known: self.index.lookup(obs.source),
                cursor: Vec::new(),
            };
            let first = record.known.first().cloned();
            if let Some(known) = &first {
                self.first_drop(obs.source, known, now);
            }
            self.table_for(&record).insert(record);
            first
        };
        if let Some(known) = known {
            *self
                .known_packets
                .entry((known.sender().to_owned(), known.kind(), known.why()))
                .or_default() += packets;
        }
    }

    fn first_drop(&mut self, source: IpNet, known: &Known, now: SystemTime) {
        let Some(held_back) = self.log.admit(known.sender(), now) else {
            return;
        };
        let source = report::source_text(source);
        warn!(
            %source,
            sender = known.sender(),
            kind = known.kind().label(),
            why = known.why().label(),
            held_back,
            "packets from a known sender are dropped: {source} is {known}; `allowlist denied` shows them (first drops not logged before this one: {held_back})"
        );
    }

    fn publish(&self) {
        let metrics = DeniedMetrics {
            known_packets: self.known_packets.clone(),
            known_sources: self.known.len(),
            unknown_sources: self.strangers.len(),
        };
        *self.shared.write().expect("denied metrics lock") = metrics;
    }

    /// The table as `denied.json` holds it.
    pub(crate) fn file(&self, now: SystemTime) -> DeniedFile {
        let with_cursor = |r: &Record| Record {
            cursor: self.previous.get(&r.source).cloned().unwrap_or_default(),
            ..r.clone()
        };
        DeniedFile {
            version: FILE_VERSION,
            written_at: now,
            read_at: self.read_at,
            recorded_share: self.recorded_share,
            keep_secs: self.keep.as_secs(),
            strangers_kept: self.strangers.capacity,
            known_kept: self.known.capacity,
            strangers_forgotten: self.strangers.forgotten,
            known_forgotten: self.known.forgotten,
            records: (self.known.sorted())
                .chain(self.strangers.sorted())
                .map(with_cursor)
                .collect(),
        }
    }

    /// Writes `denied.json` to `state_dir` (atomically, mode 0600).
    pub(crate) fn save(&self, state_dir: &Path, now: SystemTime) -> Result<(), StateError> {
        self.file(now).write(state_dir)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{config::DEFAULT_DENIED_KEEP as DEFAULT_KEEP, denied::senders::IndexBuilder};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000 + secs)
    }

    /// github-hooks is not configured; partner's update listing 198.51.100.0/24 was
    /// refused.
    fn index() -> SenderIndex {
        let config = crate::config::parse(
            "interfaces = [\"eth0\"]\n[[provider]]\nname = \"partner\"\n[[provider.source]]\nurl = \"https://ranges.example.net/ips.txt\"\n",
            Path::new("test.toml"),
        )
        .unwrap();
        let mut builder = IndexBuilder::from_config(&config);
        builder.refused_update(
            "partner",
            "partner/0",
            t(0),
            "shrink",
            &[net("198.51.100.0/24")],
        );
        builder.build()
    }

    const GITHUB: &str = "140.82.115.7/32";

    fn obs(source: &str, packets: u64, first: u64, last: u64) -> Observation {
        Observation {
            source: net(source),
            packets,
            port: 443,
            first_seen: t(first),
            last_seen: t(last),
        }
    }

    fn packets(watch: &DeniedWatch, source: &str) -> Option<u64> {
        let source = net(source);
        (watch.known.records.get(&source))
            .or_else(|| watch.strangers.records.get(&source))
            .map(|r| r.packets)
    }

    #[test]
    fn successive_reads_add_what_each_entry_gained() {
        let mut watch = DeniedWatch::new(DEFAULT_KEEP, index());
        watch.observe(&[obs("192.0.2.1/32", 5, 0, 5)], None, t(10));
        watch.observe(&[obs("192.0.2.1/32", 8, 0, 15)], None, t(20));
        // A first_seen read a few hundred ms apart is the same entry.
        let mut again = obs("192.0.2.1/32", 10, 0, 25);
        again.first_seen += Duration::from_millis(400);
        watch.observe(&[again], None, t(30));
        assert_eq!(packets(&watch, "192.0.2.1/32"), Some(10));
        let record = &watch.strangers.records[&net("192.0.2.1/32")];
        assert_eq!((record.first_seen, record.last_seen), (t(0), t(25)));
        assert!(!record.is_estimate());
    }

    #[test]
    fn an_evicted_and_recreated_entry_adds_without_counting_twice() {
        let mut watch = DeniedWatch::new(DEFAULT_KEEP, index());
        watch.observe(&[obs("192.0.2.1/32", 5, 0, 5)], None, t(10));
        // Evicted: absent from this read.
        watch.observe(&[], None, t(20));
        assert_eq!(packets(&watch, "192.0.2.1/32"), Some(5));
        // Re-created from 0 with a new first_seen.
        watch.observe(&[obs("192.0.2.1/32", 3, 25, 26)], None, t(30));
        watch.observe(&[obs("192.0.2.1/32", 4, 25, 35)], None, t(40));
        assert_eq!(packets(&watch, "192.0.2.1/32"), Some(9));
        // Evicted and re-created between two reads: the new entry counts whole.
        watch.observe(&[obs("192.0.2.1/32", 2, 41, 45)], None, t(50));
        assert_eq!(packets(&watch, "192.0.2.1/32"), Some(11));
    }

    #[test]
    fn counts_are_scaled_by_the_recorded_share_and_marked_estimates() {
        let mut watch = DeniedWatch::new(DEFAULT_KEEP, index());
        let totals = |recorded, unrecorded| {
            Some(Recording {
                recorded,
                unrecorded,
            })
        };
        watch.observe(&[obs("192.0.2.1/32", 10, 0, 5)], totals(10, 0), t(10));
        assert_eq!(packets(&watch, "192.0.2.1/32"), Some(10));
        assert!(!watch.strangers.records[&net("192.0.2.1/32")].is_estimate());
        // Of the next 40 denied packets, 10 were recorded: ×4.
        watch.observe(&[obs("192.0.2.1/32", 15, 0, 15)], totals(20, 30), t(20));
        assert_eq!(packets(&watch, "192.0.2.1/32"), Some(10 + 20));
        assert!(watch.strangers.records[&net("192.0.2.1/32")].is_estimate());
        assert_eq!(watch.file(t(20)).recorded_share, Some(0.25));
        // Maps created again (totals went down): the new totals are the interval's.
        watch.observe(&[obs("192.0.2.1/32", 1, 21, 25)], totals(1, 1), t(30));
        assert_eq!(packets(&watch, "192.0.2.1/32"), Some(30 + 2));
    }

    #[test]
    fn a_flood_of_strangers_does_not_push_out_a_known_sender() {
        let mut watch = DeniedWatch::with_capacity(DEFAULT_KEEP, index(), 10, 100);
        watch.observe(&[obs(GITHUB, 3, 0, 1)], None, t(5));
        for round in 0..5u64 {
            let flood: Vec<Observation> = (0..1000u64)
                .map(|i| {
                    let n = round * 1000 + i;
                    let source = format!("203.0.{}.{}/32", n / 256 % 256, n % 256);
                    obs(&source, 50, 10 + round, 10 + round)
                })
                .collect();
            watch.observe(&flood, None, t(20 + round));
        }
        assert_eq!(packets(&watch, GITHUB), Some(3));
        assert_eq!(watch.strangers.len(), 100, "bounded");
        assert_eq!(watch.known.len(), 1);
        assert_eq!(watch.strangers.forgotten, 4900);
        // The strangers that replaced others carry the possible overcount.
        let file = watch.file(t(30));
        assert_eq!(file.records[0].source, net(GITHUB), "known senders first");
        assert!(file.records[1..].iter().all(|r| r.known.is_empty()));
        assert!(file.records[1..].iter().any(|r| r.overcount > 0));
        let metrics = watch.shared_metrics().read().unwrap().clone();
        assert_eq!((metrics.known_sources, metrics.unknown_sources), (1, 100));
    }

    #[test]
    fn the_strangers_table_keeps_the_heaviest() {
        let mut watch = DeniedWatch::with_capacity(DEFAULT_KEEP, index(), 10, 3);
        let reads = [
            obs("192.0.2.1/32", 100, 0, 1),
            obs("192.0.2.2/32", 1, 0, 1),
            obs("192.0.2.3/32", 50, 0, 1),
            obs("192.0.2.4/32", 2, 0, 1),
        ];
        watch.observe(&reads, None, t(5));
        assert_eq!(packets(&watch, "192.0.2.1/32"), Some(100));
        assert_eq!(packets(&watch, "192.0.2.3/32"), Some(50));
        assert_eq!(packets(&watch, "192.0.2.2/32"), None, "the lightest left");
        assert_eq!(
            packets(&watch, "192.0.2.4/32"),
            Some(3),
            "2 and a possible 1"
        );
        assert_eq!(watch.strangers.records[&net("192.0.2.4/32")].overcount, 1);
    }

    #[test]
    fn sources_not_seen_for_the_keep_period_are_forgotten() {
        let keep = Duration::from_secs(3600);
        let mut watch = DeniedWatch::new(keep, index());
        watch.observe(
            &[obs("192.0.2.1/32", 5, 0, 10), obs(GITHUB, 5, 0, 100)],
            None,
            t(200),
        );
        watch.observe(&[], None, t(3600 + 50));
        assert_eq!(packets(&watch, "192.0.2.1/32"), None);
        assert_eq!(packets(&watch, GITHUB), Some(5));
        watch.observe(&[], None, t(3600 + 101));
        assert_eq!(packets(&watch, GITHUB), None);
        let metrics = watch.shared_metrics().read().unwrap().clone();
        assert_eq!((metrics.known_sources, metrics.unknown_sources), (0, 0));
        // The counter of packets stays: it is a counter.
        assert_eq!(
            metrics.known_packets[&(
                "github-hooks".to_owned(),
                SenderKind::Preset,
                Why::NotConfigured
            )],
            5
        );
    }

    #[test]
    fn known_packets_are_counted_by_sender_kind_and_reason() {
        let mut watch = DeniedWatch::new(DEFAULT_KEEP, index());
        watch.observe(
            &[
                obs(GITHUB, 4, 0, 1),
                obs("198.51.100.7/32", 6, 0, 1),
                obs("192.0.2.1/32", 100, 0, 1),
            ],
            None,
            t(5),
        );
        watch.observe(&[obs("198.51.100.7/32", 7, 0, 6)], None, t(10));
        let metrics = watch.shared_metrics().read().unwrap().clone();
        let rows: Vec<_> = metrics.known_packets.into_iter().collect();
        assert_eq!(
            rows,
            [
                (
                    (
                        "github-hooks".to_owned(),
                        SenderKind::Preset,
                        Why::NotConfigured
                    ),
                    4
                ),
                (
                    (
                        "partner".to_owned(),
                        SenderKind::Provider,
                        Why::RefusedUpdate
                    ),
                    7
                ),
            ]
        );
    }

    #[test]
    fn a_new_index_classifies_the_table_again() {
        let mut watch = DeniedWatch::new(DEFAULT_KEEP, SenderIndex::default());
        watch.observe(&[obs("198.51.100.7/32", 6, 0, 1)], None, t(5));
        assert_eq!(watch.known.len(), 0);
        watch.set_index(index());
        assert_eq!(watch.known.len(), 1);
        assert_eq!(
            watch.known.records[&net("198.51.100.7/32")].known[0].why(),
            Why::RefusedUpdate
        );
    }

    #[test]
    fn the_first_drop_log_is_rate_limited_per_sender_and_per_minute() {
        let mut log = FirstDropLog::default();
        assert_eq!(log.admit("a", t(0)), Some(0));
        assert_eq!(log.admit("a", t(1)), None, "one per sender per 10 minutes");
        assert_eq!(log.admit("a", t(2)), None);
        for i in 0..9 {
            let held_back = if i == 0 { 2 } else { 0 };
            assert_eq!(log.admit(&format!("s{i}"), t(3)), Some(held_back));
        }
        assert_eq!(log.admit("s9", t(4)), None, "ten a minute");
        assert_eq!(log.admit("s9", t(61)), Some(1));
        assert_eq!(log.admit("a", t(599)), None);
        assert_eq!(log.admit("a", t(600)), Some(1));
    }

    #[test]
    fn the_file_round_trips_and_a_restart_does_not_count_twice() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        store::prepare_dir(&state_dir).unwrap();
        let mut watch = DeniedWatch::new(DEFAULT_KEEP, index());
        watch.observe(
            &[obs(GITHUB, 4, 0, 1), obs("192.0.2.1/32", 9, 0, 2)],
            Some(Recording {
                recorded: 13,
                unrecorded: 0,
            }),
            t(5),
        );
        watch.save(&state_dir, t(6)).unwrap();
        let file = DeniedFile::read(&state_dir).unwrap().expect("written");
        assert_eq!(file, watch.file(t(6)));
        assert_eq!(file.records.len(), 2);

        // The next agent reads the same datapath entries, grown a little, and one it
        // never saw that the previous agent counted but did not keep.
        let mut next = DeniedWatch::load(&state_dir, DEFAULT_KEEP, index());
        assert_eq!(packets(&next, GITHUB), Some(4));
        next.observe(
            &[
                obs(GITHUB, 6, 0, 7),
                obs("192.0.2.1/32", 9, 0, 2),
                obs("192.0.2.99/32", 50, 1, 2),
                obs("192.0.2.100/32", 1, 8, 8),
            ],
            None,
            t(10),
        );
        assert_eq!(packets(&next, GITHUB), Some(6));
        assert_eq!(packets(&next, "192.0.2.1/32"), Some(9));
        assert_eq!(packets(&next, "192.0.2.99/32"), None);
        assert_eq!(packets(&next, "192.0.2.100/32"), Some(1), "new since");
    }
}
