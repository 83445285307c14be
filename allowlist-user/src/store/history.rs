//! The change history: every applied, refused or failed update of every source, one
//! JSON line each in `state_dir/history.jsonl`, and each source's latest refused
//! update in full (`refused-<source>.json`), kept until an update of that source is
//! accepted.
//!
//! A line is appended in one `write` (O_APPEND, never through a symlink, 0600, under
//! the directory checks of [`crate::store`]); the file is rotated to
//! `history.jsonl.1` when it would grow beyond [`MAX_BYTES`], so at most about twice
//! that is kept. A reader skips, with a warning, a line it cannot parse. Writing never
//! fails a refresh: the refresher reports a failed write and the agent counts it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::{self, File},
    io::{self, Write as _},
    net::IpAddr,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::warn;

use super::{self as store, StateError, rfc3339};

use super::{HISTORY_FILE as FILE, HISTORY_ROTATED as ROTATED, REFUSED_PREFIX};
/// The size at which the history file is rotated.
pub(crate) const MAX_BYTES: u64 = 1 << 20;
/// Above this many prefixes, a side of a change (added, removed) is only counted.
pub(crate) const MAX_LISTED: usize = 1000;

#[derive(Debug, Error)]
pub(crate) enum HistoryError {
    #[error(transparent)]
    State(#[from] StateError),
}

/// One source's update, as the history records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Change {
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// The source's id (`intercom/0`).
    pub source: String,
    pub provider: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The document's own version, when it has one (the update's, for a refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// What the update added to the source's set in force (for a refusal: would have).
    #[serde(default)]
    pub added: Prefixes,
    /// What the update removed from it (for a refusal: would have).
    #[serde(default)]
    pub removed: Prefixes,
    /// How many prefixes the source has in force after the update (a refusal or a
    /// failure keeps the set in force).
    #[serde(default)]
    pub size_after: Option<usize>,
    /// Said about the record itself (restored from a saved list, a repeated refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What became of an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// In force.
    Applied,
    /// A guard (`serial`, `empty`, `shrink`, `capacity`) refused it.
    Refused { guard: String, reason: String },
    /// It could not be fetched, parsed or validated.
    Failed { error: String },
}

/// One side of a change: listed in full up to [`MAX_LISTED`] prefixes, else counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PrefixesRepr", into = "PrefixesRepr")]
pub(crate) enum Prefixes {
    Listed(Vec<IpNet>),
    Counted(usize),
}

/// The file's form: `["192.0.2.0/24"]` or `{"count": 1500}`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum PrefixesRepr {
    Listed(Vec<IpNet>),
    Counted { count: usize },
}

impl From<PrefixesRepr> for Prefixes {
    fn from(repr: PrefixesRepr) -> Self {
        match repr {
            PrefixesRepr::Listed(nets) => Prefixes::Listed(nets),
            PrefixesRepr::Counted { count } => Prefixes::Counted(count),
        }
    }
}

impl From<Prefixes> for PrefixesRepr {
    fn from(prefixes: Prefixes) -> Self {
        match prefixes {
            Prefixes::Listed(nets) => PrefixesRepr::Listed(nets),
            Prefixes::Counted(count) => PrefixesRepr::Counted { count },
        }
    }
}

impl Default for Prefixes {
    fn default() -> Self {
        Prefixes::Listed(Vec::new())
    }
}

impl Prefixes {
    /// `nets` listed, or counted above [`MAX_LISTED`].
    pub(crate) fn new(nets: Vec<IpNet>) -> Self {
        if nets.len() > MAX_LISTED {
            Prefixes::Counted(nets.len())
        } else {
            Prefixes::Listed(nets)
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Prefixes::Listed(nets) => nets.len(),
            Prefixes::Counted(count) => *count,
        }
    }

    /// The prefixes, when they are listed.
    pub(crate) fn listed(&self) -> Option<&[IpNet]> {
        match self {
            Prefixes::Listed(nets) => Some(nets),
            Prefixes::Counted(_) => None,
        }
    }
}

/// A source's latest update that a guard refused, in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RefusedUpdate {
    pub source: String,
    pub provider: String,
    /// When the update was first refused (a refresh refusing the same update again
    /// keeps this).
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    pub guard: String,
    pub reason: String,
    /// The update's prefixes, validated and aggregated.
    pub prefixes: Vec<IpNet>,
}

/// A prefix that an applied update removed and no later applied update of the same
/// source added back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Removed {
    pub net: IpNet,
    pub source: String,
    pub provider: String,
    pub at: SystemTime,
}

/// The writer of the history and of the refused updates, in `state_dir` (which
/// [`crate::store::StateStore::open`] prepared and checked).
///
/// What the files say is also kept in memory as it is written (read once, when the
/// log is opened), so that the agent asks the history who sent what without reading
/// the files back after every refresh.
#[derive(Debug, Clone)]
pub(crate) struct Log {
    dir: PathBuf,
    max_bytes: u64,
    /// The history file's records, and the rotated file's.
    current: Written,
    rotated: Written,
    /// Each source's kept refused update, as in its `refused-<id>.json`.
    refused: BTreeMap<String, RefusedUpdate>,
}

/// What one history file holds that the agent asks about.
#[derive(Debug, Clone, Default)]
struct Written {
    /// The applied changes (the removed ranges are computed from them).
    applied: Vec<Change>,
    /// Every source a record is about.
    sources: HashSet<String>,
}

impl Written {
    fn read(path: &Path) -> Result<Self, HistoryError> {
        let mut written = Written::default();
        for change in read_file(path)? {
            written.push(change);
        }
        Ok(written)
    }

    fn push(&mut self, change: Change) {
        self.sources.insert(change.source.clone());
        if change.outcome == Outcome::Applied {
            self.applied.push(change);
        }
    }
}

impl Log {
    /// The log of `state_dir`, with what its files hold. A file that cannot be read
    /// is reported and counts as empty: the history names senders, it never decides
    /// what passes.
    pub(crate) fn open(state_dir: &Path) -> Self {
        let read = |name| {
            Written::read(&state_dir.join(name)).unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the history: denied sources are not matched against removed ranges");
                Written::default()
            })
        };
        let refused = refused_updates(state_dir).unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the refused updates: denied sources are not matched against them");
            Vec::new()
        });
        Log {
            dir: state_dir.to_owned(),
            max_bytes: MAX_BYTES,
            rotated: read(ROTATED),
            current: read(FILE),
            refused: (refused.into_iter())
                .map(|u| (u.source.clone(), u))
                .collect(),
        }
    }

    /// Every source's kept refused update, by source id.
    pub(crate) fn refused_updates(&self) -> impl Iterator<Item = &RefusedUpdate> {
        self.refused.values()
    }

    /// What [`removed_ranges`] finds in the files.
    pub(crate) fn removed_ranges(&self) -> Vec<Removed> {
        let mut applied: Vec<&Change> = (self.rotated.applied.iter())
            .chain(&self.current.applied)
            .collect();
        applied.sort_by_key(|change| change.at);
        removed_ranges(applied)
    }

    /// Whether a record in the files is about `source`.
    pub(crate) fn knows(&self, source: &str) -> bool {
        self.current.sources.contains(source) || self.rotated.sources.contains(source)
    }

    /// Appends one record, rotating the file first if it would grow beyond its bound.
    pub(crate) fn append(&mut self, change: &Change) -> Result<(), HistoryError> {
        let mut line = serde_json::to_vec(change).expect("a change serialises");
        line.push(b'\n');
        let path = self.dir.join(FILE);
        let write_err = |error: io::Error| StateError::Write {
            path: path.clone(),
            error,
        };
        let mut file = store::open_append(&path)?;
        let mut size = file.metadata().map_err(write_err)?.len();
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            fs::rename(&path, self.dir.join(ROTATED)).map_err(write_err)?;
            self.rotated = std::mem::take(&mut self.current);
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(write_err)?;
            file = store::open_append(&path)?;
            size = file.metadata().map_err(write_err)?.len();
        }
        // A line cut short (a full disk before this check existed, a copy) must not
        // swallow this one: it starts on a line of its own.
        let mut last = [0u8];
        if size > 0
            && file.read_at(&mut last, size - 1).map_err(write_err)? == 1
            && last[0] != b'\n'
        {
            line.insert(0, b'\n');
        }
        // One write: with O_APPEND, the line lands whole at the end, or not at all.
        let written = file.write(&line).map_err(write_err)?;
        if written != line.len() {
            // A full disk: take the fragment back so that the file stays readable.
            let _ = file.set_len(size);
            return Err(write_err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("only {written} of {} bytes written", line.len()),
            ))
            .into());
        }
        self.current.push(change.clone());
        file.sync_data().map_err(write_err)?;
        Ok(())
    }

    fn refused_path(&self, source: &str) -> PathBuf {
        refused_path(&self.dir, source)
    }

    /// Keeps `update` as its source's latest refused update, unless it is the one
    /// kept already: refused again, its `change` then only counts its prefixes (the
    /// kept update and the first record say what they are), so that a source refused
    /// at every refresh does not rotate the rest of the history away.
    pub(crate) fn record_refusal(
        &mut self,
        update: RefusedUpdate,
        change: &mut Change,
    ) -> Result<(), HistoryError> {
        let kept = (self.refused.get(&update.source))
            .filter(|kept| kept.guard == update.guard && kept.prefixes == update.prefixes);
        match kept {
            Some(kept) => {
                change.added = Prefixes::Counted(change.added.len());
                change.removed = Prefixes::Counted(change.removed.len());
                change.note = Some(format!(
                    "the same update as refused at {}",
                    humantime::format_rfc3339_seconds(kept.at)
                ));
                Ok(())
            }
            None => self.keep_refused(update),
        }
    }

    /// Keeps `update` as its source's latest refused update, replacing any other.
    fn keep_refused(&mut self, update: RefusedUpdate) -> Result<(), HistoryError> {
        store::write_json_atomic(&self.refused_path(&update.source), &update)?;
        self.refused.insert(update.source.clone(), update);
        Ok(())
    }

    /// Forgets the refused update of `source`: a later update was accepted.
    pub(crate) fn clear_refused(&mut self, source: &str) -> Result<(), HistoryError> {
        let path = self.refused_path(source);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(StateError::Write { path, error: err }.into())
            }
            _ => {
                self.refused.remove(source);
                Ok(())
            }
        }
    }
}

fn refused_path(state_dir: &Path, source: &str) -> PathBuf {
    state_dir.join(format!("{REFUSED_PREFIX}{}.json", store::sanitize(source)))
}

/// A kept refused update, read as the agent's other files are (see
/// [`store::open_trusted`]); `Ok(None)` when there is none.
fn read_refused(path: &Path) -> Result<Option<RefusedUpdate>, HistoryError> {
    let Some(bytes) = store::read_trusted(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|err| {
        StateError::Read {
            path: path.to_owned(),
            error: io::Error::new(io::ErrorKind::InvalidData, err),
        }
        .into()
    })
}

/// Every recorded change, oldest first, the rotated file's included. A line that
/// cannot be parsed is skipped with a warning. Nothing recorded is not an error.
pub(crate) fn read(state_dir: &Path) -> Result<Vec<Change>, HistoryError> {
    let mut changes = read_file(&state_dir.join(ROTATED))?;
    changes.extend(read_file(&state_dir.join(FILE))?);
    // Records are appended as they happen; a record restored from a saved list is
    // dated when that list was fetched.
    changes.sort_by_key(|change| change.at);
    Ok(changes)
}

/// The records of one history file, in the order written.
fn read_file(path: &Path) -> Result<Vec<Change>, HistoryError> {
    let mut changes = Vec::new();
    let Some(bytes) = store::read_trusted(path)? else {
        return Ok(changes);
    };
    for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice::<Change>(line) {
            Ok(change) => changes.push(change),
            Err(err) => warn!(
                file = %path.display(),
                line = index + 1,
                error = %err,
                "skipping a history line that cannot be read"
            ),
        }
    }
    Ok(changes)
}

/// Every source's kept refused update, by source id. An unreadable file is skipped
/// with a warning.
pub(crate) fn refused_updates(state_dir: &Path) -> Result<Vec<RefusedUpdate>, HistoryError> {
    let entries = match fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(StateError::Read {
                path: state_dir.to_owned(),
                error,
            }
            .into());
        }
    };
    let mut updates = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(REFUSED_PREFIX) && name.ends_with(".json")) {
            continue;
        }
        match read_refused(&entry.path()) {
            Ok(Some(update)) => updates.push(update),
            Ok(None) => {}
            Err(err) => warn!(%err, "skipping a kept refused update"),
        }
    }
    updates.sort_by(|a, b| a.source.cmp(&b.source));
    Ok(updates)
}

/// The prefixes that an applied change removed and no later applied change of the
/// same source added back (the same prefix or one covering it), latest removal
/// first. A change that only counted what it added cannot say what it added back:
/// the removals before it stay.
pub(crate) fn removed_ranges<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Vec<Removed> {
    let mut removed: HashMap<(String, IpNet), Removed> = HashMap::new();
    for change in changes {
        if change.outcome != Outcome::Applied {
            continue;
        }
        if let Some(added) = change.added.listed() {
            removed.retain(|(source, net), _| {
                source != &change.source || !added.iter().any(|a| a.contains(net))
            });
        }
        for net in change.removed.listed().into_iter().flatten() {
            removed.insert(
                (change.source.clone(), *net),
                Removed {
                    net: *net,
                    source: change.source.clone(),
                    provider: change.provider.clone(),
                    at: change.at,
                },
            );
        }
    }
    let mut removed: Vec<Removed> = removed.into_values().collect();
    removed.sort_by(|a, b| {
        (b.at.cmp(&a.at)).then_with(|| (&a.source, a.net).cmp(&(&b.source, b.net)))
    });
    removed
}

/// An applied change that added or removed a prefix holding an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub net: IpNet,
    pub added: bool,
    pub source: String,
    pub provider: String,
    pub at: SystemTime,
    pub note: Option<String>,
}

/// What the history says about `address`: the applied changes that added or removed
/// a prefix holding it (oldest first), and how many applied changes only counted
/// their prefixes (they may have, unknown).
pub(crate) fn about(changes: &[Change], address: IpAddr) -> (Vec<Event>, usize) {
    let mut events = Vec::new();
    let mut counted = 0;
    for change in changes {
        if change.outcome != Outcome::Applied {
            continue;
        }
        let sides = [(&change.added, true), (&change.removed, false)];
        if sides.iter().any(|(side, _)| side.listed().is_none()) {
            counted += 1;
        }
        for (side, added) in sides {
            for net in side.listed().into_iter().flatten() {
                if net.contains(&address) {
                    events.push(Event {
                        net: *net,
                        added,
                        source: change.source.clone(),
                        provider: change.provider.clone(),
                        at: change.at,
                        note: change.note.clone(),
                    });
                }
            }
        }
    }
    (events, counted)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, time::Duration};

    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000 + secs)
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn applied(at: u64, source: &str, added: &[&str], removed: &[&str]) -> Change {
        Change {
            at: t(at),
            source: source.to_owned(),
            provider: source.split('/').next().unwrap().to_owned(),
            outcome: Outcome::Applied,
            serial: Some(at.to_string()),
            etag: None,
            last_modified: None,
            added: Prefixes::new(nets(added)),
            removed: Prefixes::new(nets(removed)),
            size_after: Some(added.len()),
            note: None,
        }
    }

    fn log(dir: &Path) -> Log {
        store::prepare_dir(dir).unwrap();
        Log::open(dir)
    }

    #[test]
    fn records_read_back_oldest_first_and_in_the_documented_form() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = log(tmp.path());
        let first = applied(0, "p/0", &["192.0.2.0/24"], &[]);
        let mut refused = applied(60, "p/0", &[], &["192.0.2.0/24"]);
        refused.outcome = Outcome::Refused {
            guard: "shrink".into(),
            reason: "too much".into(),
        };
        let mut failed = applied(120, "q/0", &[], &[]);
        failed.outcome = Outcome::Failed {
            error: "HTTP 500".into(),
        };
        failed.serial = None;
        for change in [&first, &refused, &failed] {
            log.append(change).unwrap();
        }
        assert_eq!(read(tmp.path()).unwrap(), [first, refused, failed]);
        let text = fs::read_to_string(tmp.path().join(FILE)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[1],
            serde_json::json!({
                "at": "2026-11-30T00:54:20Z",
                "source": "p/0",
                "provider": "p",
                "outcome": "refused",
                "guard": "shrink",
                "reason": "too much",
                "serial": "60",
                "added": [],
                "removed": ["192.0.2.0/24"],
                "size_after": 0,
            })
        );
        assert_eq!(lines[2]["outcome"], "failed");
        assert_eq!(lines[2]["error"], "HTTP 500");
        let mode = fs::metadata(tmp.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn sides_above_the_threshold_are_only_counted() {
        let many: Vec<IpNet> = (0..=MAX_LISTED as u32)
            .map(|i| IpNet::new(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), 32).unwrap())
            .collect();
        assert_eq!(Prefixes::new(many[..MAX_LISTED].to_vec()).len(), MAX_LISTED);
        assert!(
            Prefixes::new(many[..MAX_LISTED].to_vec())
                .listed()
                .is_some()
        );
        let counted = Prefixes::new(many.clone());
        assert_eq!(counted, Prefixes::Counted(MAX_LISTED + 1));
        assert_eq!(
            serde_json::to_value(&counted).unwrap(),
            serde_json::json!({ "count": 1001 })
        );
        assert_eq!(
            serde_json::from_value::<Prefixes>(serde_json::json!({ "count": 1001 })).unwrap(),
            counted
        );
        assert_eq!(
            serde_json::to_value(Prefixes::new(nets(&["192.0.2.0/24"]))).unwrap(),
            serde_json::json!(["192.0.2.0/24"])
        );
    }

    #[test]
    fn the_file_is_rotated_and_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = log(tmp.path());
        log.max_bytes = 4096;
        let change = applied(0, "p/0", &["192.0.2.0/24", "198.51.100.0/24"], &[]);
        let line = serde_json::to_vec(&change).unwrap().len() as u64 + 1;
        let total = 200;
        for i in 0..total {
            let mut change = change.clone();
            change.at = t(i);
            log.append(&change).unwrap();
            let current = fs::metadata(tmp.path().join(FILE)).unwrap().len();
            let rotated = fs::metadata(tmp.path().join(ROTATED)).map_or(0, |m| m.len());
            assert!(current <= log.max_bytes, "{current}");
            assert!(rotated <= log.max_bytes, "{rotated}");
        }
        let changes = read(tmp.path()).unwrap();
        // Both files are read, the newest records last, none lost in between.
        let kept = changes.len() as u64;
        assert!(
            kept > log.max_bytes / line && kept <= 2 * log.max_bytes / line,
            "{kept}"
        );
        assert_eq!(changes.last().unwrap().at, t(total - 1));
        for pair in changes.windows(2) {
            assert_eq!(pair[1].at, pair[0].at + Duration::from_secs(1));
        }
    }

    /// What the log holds in memory is what the files say: after appends, refusals
    /// kept and cleared, and rotations that push records out, and in a log opened
    /// again from the files.
    #[test]
    fn what_the_log_remembers_is_what_its_files_say() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = log(tmp.path());
        log.max_bytes = 2048;
        let agrees = |log: &Log| {
            let on_disk = read(tmp.path()).unwrap();
            assert_eq!(log.removed_ranges(), removed_ranges(&on_disk));
            let kept: Vec<&RefusedUpdate> = log.refused_updates().collect();
            assert_eq!(
                kept,
                refused_updates(tmp.path())
                    .unwrap()
                    .iter()
                    .collect::<Vec<_>>()
            );
            for source in ["p/0", "q/0", "r/0"] {
                let known = on_disk.iter().any(|c| c.source == source);
                assert_eq!(log.knows(source), known, "{source}");
            }
        };
        let refusal = |at: u64, source: &str| RefusedUpdate {
            source: source.to_owned(),
            provider: "q".to_owned(),
            at: t(at),
            guard: "shrink".to_owned(),
            reason: "too small".to_owned(),
            prefixes: nets(&["203.0.113.0/25"]),
        };
        for i in 0..60 {
            let (added, removed) = if i % 2 == 0 {
                (&["192.0.2.0/24"][..], &["198.51.100.0/24"][..])
            } else {
                (&["198.51.100.0/24"][..], &["192.0.2.0/24"][..])
            };
            log.append(&applied(i * 10, "p/0", added, removed)).unwrap();
            if i == 5 {
                let mut change = applied(i * 10 + 1, "q/0", &[], &["203.0.113.0/24"]);
                change.outcome = Outcome::Refused {
                    guard: "shrink".into(),
                    reason: String::new(),
                };
                log.record_refusal(refusal(i * 10 + 1, "q/0"), &mut change)
                    .unwrap();
                log.append(&change).unwrap();
                log.append(&applied(i * 10 + 2, "r/0", &["203.0.113.0/24"], &[]))
                    .unwrap();
            }
            if i == 40 {
                log.clear_refused("q/0").unwrap();
            }
            agrees(&log);
        }
        assert!(!log.knows("r/0"), "r's only record was rotated away");
        agrees(&Log::open(tmp.path()));
    }

    #[test]
    fn unreadable_lines_are_skipped_and_a_cut_line_does_not_swallow_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = log(tmp.path());
        let first = applied(0, "p/0", &["192.0.2.0/24"], &[]);
        let second = applied(60, "p/0", &["198.51.100.0/24"], &["192.0.2.0/24"]);
        log.append(&first).unwrap();
        // A crash (or a full disk) in the middle of a record, then garbage.
        let mut file = store::open_append(&tmp.path().join(FILE)).unwrap();
        file.write_all(b"not json\n{\"at\": \"2026-11-30T00:5")
            .unwrap();
        drop(file);
        log.append(&second).unwrap();
        assert_eq!(read(tmp.path()).unwrap(), [first, second]);
    }

    #[test]
    fn no_history_is_empty_and_a_symlinked_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(read(tmp.path()).unwrap().is_empty());
        assert!(read(&tmp.path().join("missing")).unwrap().is_empty());
        assert!(
            refused_updates(&tmp.path().join("missing"))
                .unwrap()
                .is_empty()
        );
        let elsewhere = tmp.path().join("elsewhere");
        fs::write(&elsewhere, b"").unwrap();
        let dir = tmp.path().join("state");
        let mut log = log(&dir);
        std::os::unix::fs::symlink(&elsewhere, dir.join(FILE)).unwrap();
        let err = log.append(&applied(0, "p/0", &[], &[])).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(
            read(&dir)
                .unwrap_err()
                .to_string()
                .contains("symbolic link")
        );
        assert_eq!(fs::read(&elsewhere).unwrap(), b"");
    }

    #[test]
    fn removed_ranges_are_those_no_later_update_of_the_source_added_back() {
        let changes = [
            applied(0, "p/0", &["192.0.2.0/24", "198.51.100.0/25"], &[]),
            applied(10, "q/0", &["203.0.113.0/24"], &[]),
            // p drops both; q drops its own.
            applied(20, "p/0", &[], &["192.0.2.0/24", "198.51.100.0/25"]),
            applied(30, "q/0", &[], &["203.0.113.0/24"]),
            // Another source listing p's range does not add it back for p.
            applied(40, "q/0", &["192.0.2.0/24"], &[]),
            // p adds back a range covering one of its removals.
            applied(50, "p/0", &["198.51.100.0/24"], &[]),
        ];
        let mut refused = applied(60, "q/0", &[], &["192.0.2.0/24"]);
        refused.outcome = Outcome::Refused {
            guard: "shrink".into(),
            reason: String::new(),
        };
        let mut all = changes.to_vec();
        all.push(refused);
        let removed = removed_ranges(&all);
        let got: Vec<(String, &str, SystemTime)> = removed
            .iter()
            .map(|r| (r.net.to_string(), r.source.as_str(), r.at))
            .collect();
        assert_eq!(
            got,
            [
                ("203.0.113.0/24".to_owned(), "q/0", t(30)),
                ("192.0.2.0/24".to_owned(), "p/0", t(20)),
            ]
        );
        assert_eq!(removed[0].provider, "q");
        // Removed again later: the latest removal counts.
        let mut again = changes.to_vec();
        again.push(applied(70, "p/0", &["192.0.2.0/24"], &[]));
        again.push(applied(80, "p/0", &[], &["192.0.2.0/24"]));
        assert_eq!(
            removed_ranges(&again)
                .iter()
                .find(|r| r.source == "p/0")
                .map(|r| r.at),
            Some(t(80))
        );
    }

    #[test]
    fn about_an_address_lists_its_prefixes_changes_and_counts_the_unlisted() {
        let many: Vec<String> = (0..=MAX_LISTED as u32)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let changes = [
            applied(0, "p/0", &["192.0.2.0/24"], &[]),
            applied(10, "big/0", &many, &[]),
            applied(20, "p/0", &["198.51.100.0/24"], &["192.0.2.0/24"]),
        ];
        let (events, counted) = about(&changes, "192.0.2.7".parse().unwrap());
        assert_eq!(counted, 1);
        let got: Vec<(String, bool, SystemTime)> = events
            .iter()
            .map(|e| (e.net.to_string(), e.added, e.at))
            .collect();
        assert_eq!(
            got,
            [
                ("192.0.2.0/24".to_owned(), true, t(0)),
                ("192.0.2.0/24".to_owned(), false, t(20))
            ]
        );
        let (events, _) = about(&changes, "2001:db8::1".parse().unwrap());
        assert!(events.is_empty());
    }

    #[test]
    fn a_refused_update_is_kept_replaced_and_cleared() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = log(tmp.path());
        let update = |source: &str, at| RefusedUpdate {
            source: source.to_owned(),
            provider: "intercom".to_owned(),
            at: t(at),
            guard: "shrink".to_owned(),
            reason: "the update would remove 66.7%".to_owned(),
            prefixes: nets(&["192.0.2.0/24"]),
        };
        let kept = |source| read_refused(&refused_path(tmp.path(), source)).unwrap();
        assert_eq!(kept("intercom/0"), None);
        log.keep_refused(update("intercom/0", 0)).unwrap();
        log.keep_refused(update("intercom/1", 5)).unwrap();
        log.keep_refused(update("intercom/0", 10)).unwrap();
        assert_eq!(kept("intercom/0"), Some(update("intercom/0", 10)));
        assert_eq!(
            refused_updates(tmp.path()).unwrap(),
            [update("intercom/0", 10), update("intercom/1", 5)]
        );
        let path = tmp.path().join("refused-intercom%2F0.json");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        log.clear_refused("intercom/0").unwrap();
        log.clear_refused("intercom/0").unwrap();
        assert!(!path.exists());
        assert_eq!(
            refused_updates(tmp.path()).unwrap(),
            [update("intercom/1", 5)]
        );
        // A damaged file is skipped, not fatal.
        fs::write(tmp.path().join("refused-x.json"), b"{").unwrap();
        assert_eq!(refused_updates(tmp.path()).unwrap().len(), 1);
    }
}
