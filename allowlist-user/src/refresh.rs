//! One refresh cycle.
//!
//! Every source always has a set in force: its last good set (from disk or the last
//! accepted fetch), else the preset's embedded snapshot, else its static list. A
//! refresh only replaces that set with a fetched one that parses, validates and
//! passes the [guards](crate::guards); anything else keeps the set in force and is
//! reported. What an operator sees of a source ([`SourceStatus`]) is derived from
//! its set in force and the history of its refreshes, which a reload keeps.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use reqwest::Url;
use serde::{Serialize, Serializer};
use thiserror::Error;
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use crate::{
    config::{Config, Guards, Location, Source, StaticList},
    guards::{self, Refusal},
    prefixes::{self, Allowlist, PrefixError},
    sources::{
        dns::{self, Answer, DnsError},
        format::{self, SourceError},
        http::{self, Conditional, FetchError, FetchOutcome, Fetcher},
    },
    status::SourceStatus,
    store::{self, SavedList, StateError, StateStore},
};

/// Where a source's set in force came from (the status's word for it).
pub use crate::status::SetOrigin;

/// Per-call overrides.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefreshOptions {
    /// Bypass the empty and shrink guards for every source (`--force`).
    pub force: bool,
}

/// Why a fetched list could not be taken: the fetch, the document or its entries.
#[derive(Debug, Error)]
pub enum Failure {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("{error}{}", redirect_note(.redirected_to.as_ref()))]
    Parse {
        error: SourceError,
        /// Where the document came from, when a redirect left the configured origin.
        redirected_to: Option<Url>,
    },
    #[error(transparent)]
    Invalid(#[from] PrefixError),
    #[error("304 Not Modified, but no document is stored")]
    NotModifiedWithoutDocument,
    #[error("the fetch task did not complete")]
    TaskLost,
}

fn redirect_note(url: Option<&Url>) -> String {
    url.map(|url| format!(" (redirected to {url})"))
        .unwrap_or_default()
}

/// Failures are equal when they say the same: the I/O errors inside have no equality.
impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// The result of one source in one refresh.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// A static list: nothing to fetch.
    Static,
    /// The set in force changed (counts of prefixes added and removed).
    Updated { added: usize, removed: usize },
    /// Fetched, and the selected set is the one in force.
    Unchanged,
    /// 304 Not Modified; for a dns source, the last answer is within its TTL, so
    /// the name was not asked again.
    NotModified,
    /// Fetch, parse or validation failed; the set in force is kept.
    Failed {
        #[serde(serialize_with = "as_text")]
        error: Arc<Failure>,
    },
    /// A guard refused the update; the set in force is kept.
    Refused {
        #[serde(serialize_with = "as_text")]
        reason: Refusal,
    },
}

/// Errors are serialised as their message.
fn as_text<T: fmt::Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceReport {
    pub id: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Entries normalised or dropped, state files that could not be written.
    pub warnings: Vec<String>,
    /// The list was accepted but its state file could not be written (a full or
    /// read-only `state_dir`): a restart would not find it.
    pub save_failed: bool,
    /// The update's history record, or its kept refused update, could not be written
    /// (the warnings say why); the refresh itself is not affected.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub history_failed: bool,
}

/// The result of a refresh.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct RefreshReport {
    pub sources: Vec<SourceReport>,
}

impl RefreshReport {
    /// Whether any source's set in force changed.
    pub fn changed(&self) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s.outcome, Outcome::Updated { .. }))
    }

    pub fn failed(&self) -> impl Iterator<Item = &SourceReport> {
        self.sources
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed { .. }))
    }

    pub fn refused(&self) -> impl Iterator<Item = &SourceReport> {
        self.sources
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Refused { .. }))
    }

    /// No source failed or was refused.
    pub fn is_ok(&self) -> bool {
        self.failed().next().is_none() && self.refused().next().is_none()
    }

    pub fn get(&self, id: &str) -> Option<&SourceReport> {
        self.sources.iter().find(|s| s.id == id)
    }
}

/// A source's set in force, and where it came from.
enum InForce {
    /// Nothing yet: a url or file source without saved list or snapshot.
    Nothing,
    /// The configuration's static list.
    Static(StaticList),
    /// A preset's embedded snapshot.
    Snapshot(StaticList),
    /// The last good list, saved by an earlier run.
    Saved(SavedList),
    /// The last good list, accepted by a fetch during this run.
    Fetched(SavedList),
}

impl InForce {
    fn origin(&self) -> SetOrigin {
        match self {
            InForce::Nothing => SetOrigin::None,
            InForce::Static(_) => SetOrigin::Static,
            InForce::Snapshot(_) => SetOrigin::Snapshot,
            InForce::Saved(_) => SetOrigin::State,
            InForce::Fetched(_) => SetOrigin::Fetched,
        }
    }

    /// Aggregated.
    fn prefixes(&self) -> &[IpNet] {
        match self {
            InForce::Nothing => &[],
            InForce::Static(list) | InForce::Snapshot(list) => &list.prefixes,
            InForce::Saved(list) | InForce::Fetched(list) => &list.prefixes,
        }
    }

    /// The date of a static list or snapshot.
    fn as_of(&self) -> Option<&str> {
        match self {
            InForce::Static(list) | InForce::Snapshot(list) => list.as_of.as_deref(),
            _ => None,
        }
    }

    /// The last good list, saved or fetched: what the guards protect, and the
    /// validators of the next conditional request.
    fn last_good(&self) -> Option<&SavedList> {
        match self {
            InForce::Saved(list) | InForce::Fetched(list) => Some(list),
            _ => None,
        }
    }

    fn last_good_mut(&mut self) -> Option<&mut SavedList> {
        match self {
            InForce::Saved(list) | InForce::Fetched(list) => Some(list),
            _ => None,
        }
    }
}

/// What the refreshes of one source did. A reload keeps it while the source's
/// definition stays.
#[derive(Default)]
struct History {
    last_attempt: Option<SystemTime>,
    last_success: Option<SystemTime>,
    /// When a fetch last changed the set in force.
    last_change: Option<SystemTime>,
    last_error: Option<LastError>,
    /// Attempts in a row that did not succeed (failures and refusals).
    consecutive_failures: u32,
    failures: u64,
    refusals: u64,
    /// A dns source's last accepted answer holds until then (its TTL): the name is
    /// not asked again sooner, and a refresh before then is a success.
    answer_fresh_until: Option<SystemTime>,
}

/// Why the last attempt did not fully succeed.
#[derive(Debug, Error)]
enum LastError {
    #[error(transparent)]
    Failed(Arc<Failure>),
    #[error(transparent)]
    Refused(Refusal),
    /// The list was accepted and is in force, but a restart would not find it.
    #[error("the list is in force but could not be saved: {0}")]
    NotSaved(StateError),
}

impl History {
    fn record(&mut self, now: SystemTime, outcome: &Outcome, not_saved: Option<LastError>) {
        self.last_attempt = Some(now);
        match outcome {
            Outcome::Failed { error } => {
                self.last_error = Some(LastError::Failed(error.clone()));
                self.consecutive_failures += 1;
                self.failures += 1;
            }
            Outcome::Refused { reason } => {
                self.last_error = Some(LastError::Refused(reason.clone()));
                self.consecutive_failures += 1;
                self.refusals += 1;
            }
            _ => {
                self.last_error = not_saved;
                self.last_success = Some(now);
                self.consecutive_failures = 0;
            }
        }
    }
}

struct Slot {
    source: Source,
    /// Digest of the source's definition, stored with its state.
    definition: String,
    in_force: InForce,
    history: History,
}

impl Slot {
    fn conditional(&self) -> Conditional {
        self.in_force
            .last_good()
            .map(|list| Conditional {
                etag: list.etag.clone(),
                last_modified: list.last_modified.clone(),
            })
            .unwrap_or_default()
    }

    fn status(&self) -> SourceStatus {
        let prefixes = self.in_force.prefixes();
        let v4 = prefixes
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .count();
        let last_good = self.in_force.last_good();
        let history = &self.history;
        SourceStatus {
            id: self.source.id.clone(),
            provider: self.source.provider.clone(),
            kind: self.source.kind().to_owned(),
            location: self.source.origin(),
            in_force: self.in_force.origin(),
            as_of: self.in_force.as_of().map(str::to_owned),
            fetched_at: last_good.map(|list| list.fetched_at),
            last_attempt: history.last_attempt,
            last_success: history.last_success,
            last_change: history.last_change,
            last_error: history.last_error.as_ref().map(ToString::to_string),
            consecutive_failures: history.consecutive_failures,
            refused: matches!(history.last_error, Some(LastError::Refused(_))),
            refusals: history.refusals,
            failures: history.failures,
            prefixes_v4: v4,
            prefixes_v6: prefixes.len() - v4,
            serial: last_good.and_then(|list| list.serial.clone()),
        }
    }
}

/// Owns every source's set in force and refreshes them.
pub struct Refresher {
    guards: Guards,
    providers: Vec<(String, u32)>,
    store: StateStore,
    /// The change history and the refused updates, in `state_dir`.
    log: store::history::Log,
    fetcher: Fetcher,
    slots: Vec<Slot>,
}

/// The digest of what defines a source's list (location, format, selection).
fn definition(source: &Source) -> String {
    let text = serde_json::to_vec(&source.location).expect("locations serialise");
    store::content_hash(&text)
}

impl Refresher {
    /// Opens (creating) the state directory. Nothing is in force until `bootstrap`.
    pub fn new(config: &Config, fetcher: Fetcher) -> Result<Self, StateError> {
        let store = StateStore::open(&config.state_dir)?;
        let slots = config
            .sources()
            .map(|source| Slot {
                definition: definition(source),
                in_force: InForce::Nothing,
                history: History::default(),
                source: source.clone(),
            })
            .collect();
        Ok(Refresher {
            guards: config.guards.clone(),
            providers: config
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.rule_id))
                .collect(),
            log: store::history::Log::new(&config.state_dir),
            store,
            fetcher,
            slots,
        })
    }

    /// Puts every source's starting set in force, without any network: the last good
    /// list it already has (after a reload), else its last good set from disk, else
    /// the preset's snapshot, else its static list. Returns warnings (state files
    /// that were corrupt, written for another definition, or refused by the current
    /// guards); none of them is fatal.
    pub fn bootstrap(&mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut restored = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let source = &slot.source;
            let id = &source.id;
            if let Location::Static(list) = &source.location {
                slot.in_force = InForce::Static(list.clone());
                continue;
            }
            let admit = |list| admit(list, source, &self.guards);
            let last_good = match std::mem::replace(&mut slot.in_force, InForce::Nothing) {
                InForce::Saved(list) => Some(admit(list).map(InForce::Saved)),
                InForce::Fetched(list) => Some(admit(list).map(InForce::Fetched)),
                _ => None,
            };
            let last_good = match last_good {
                Some(Ok(kept)) => Some(kept),
                Some(Err(err)) => {
                    warnings.push(format!(
                        "source {id}: the list in force is refused by the current guards: {err}"
                    ));
                    None
                }
                None => match self.store.load(id) {
                    Ok(Some(list)) if list.definition != slot.definition => {
                        warnings.push(format!(
                            "source {id}: the saved list was fetched for a different definition of the source; ignoring it"
                        ));
                        None
                    }
                    Ok(Some(list)) => match admit(list) {
                        Ok(list) => {
                            restored.push(index);
                            Some(InForce::Saved(list))
                        }
                        Err(err) => {
                            warnings.push(format!("source {id}: the saved list is refused by the current guards: {err}"));
                            None
                        }
                    },
                    Ok(None) => None,
                    Err(err) => {
                        warnings.push(format!("source {id}: {err}"));
                        None
                    }
                },
            };
            slot.in_force = last_good.unwrap_or_else(|| match &source.snapshot {
                Some(snapshot) => InForce::Snapshot(snapshot.clone()),
                None => InForce::Nothing,
            });
        }
        if !restored.is_empty()
            && let Err(err) = self.record_restored(&restored)
        {
            warnings.push(format!(
                "the history cannot record the saved lists restored: {err}"
            ));
        }
        for warning in &warnings {
            warn!("{warning}");
        }
        warnings
    }

    /// Records, once, the saved list a source starts from when the history knows
    /// nothing of that source (a history lost, rotated away, or older than the saved
    /// list), dated when the list was fetched: `allowlist check` can then say since
    /// when a prefix is in force.
    fn record_restored(&self, restored: &[usize]) -> Result<(), store::history::HistoryError> {
        let known: HashSet<String> = store::history::read(self.log.dir())?
            .into_iter()
            .map(|change| change.source)
            .collect();
        for slot in restored.iter().map(|&i| &self.slots[i]) {
            let Some(list) = slot.in_force.last_good() else {
                continue;
            };
            if known.contains(&slot.source.id) {
                continue;
            }
            self.log.append(&store::history::Change {
                at: list.fetched_at,
                source: slot.source.id.clone(),
                provider: slot.source.provider.clone(),
                outcome: store::history::Outcome::Applied,
                serial: list.serial.clone(),
                etag: list.etag.clone(),
                last_modified: list.last_modified.clone(),
                added: store::history::Prefixes::new(list.prefixes.clone()),
                removed: store::history::Prefixes::default(),
                size_after: Some(list.prefixes.len()),
                note: Some(
                    "the saved list the agent started from; the history of this source begins here"
                        .to_owned(),
                ),
            })?;
        }
        Ok(())
    }

    /// Takes a new configuration (a reload). A source whose id and definition did
    /// not change keeps the history of its refreshes and its last good list (checked
    /// again by the new guards); the others start as [`Refresher::bootstrap`] starts
    /// them. Returns bootstrap's warnings. On error nothing changed.
    pub fn reconfigure(&mut self, config: &Config) -> Result<Vec<String>, StateError> {
        let mut next = Refresher::new(config, self.fetcher.clone())?;
        let mut previous: HashMap<String, Slot> = std::mem::take(&mut self.slots)
            .into_iter()
            .map(|slot| (slot.source.id.clone(), slot))
            .collect();
        for slot in &mut next.slots {
            if let Some(old) = previous.remove(&slot.source.id)
                && old.definition == slot.definition
            {
                slot.in_force = old.in_force;
                slot.history = old.history;
            }
        }
        let warnings = next.bootstrap();
        *self = next;
        Ok(warnings)
    }

    /// Fetches every url and file source (concurrently) and applies what passes the
    /// guards.
    pub async fn refresh_all(&mut self) -> RefreshReport {
        self.refresh_with(RefreshOptions::default()).await
    }

    /// `refresh_all` with per-call overrides.
    pub async fn refresh_with(&mut self, options: RefreshOptions) -> RefreshReport {
        let span = info_span!("refresh", sources = self.slots.len(), force = options.force);
        async {
            let started = SystemTime::now();
            // A dns source whose last answer is within its TTL is not asked again.
            let fresh = |slot: &Slot| {
                (slot.history.answer_fresh_until).is_some_and(|until| started < until)
            };
            let mut tasks = JoinSet::new();
            for (index, slot) in self.slots.iter().enumerate() {
                if !slot.source.is_fetched() || fresh(slot) {
                    continue;
                }
                let fetcher = self.fetcher.clone();
                let source = slot.source.clone();
                let conditional = slot.conditional();
                tasks
                    .spawn(async move { (index, retrieve(&fetcher, &source, &conditional).await) });
            }
            let mut results: Vec<Option<Result<Retrieved, Failure>>> =
                std::iter::repeat_with(|| None)
                    .take(self.slots.len())
                    .collect();
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((index, result)) => results[index] = Some(result),
                    Err(err) => warn!(error = %err, "a fetch task failed"),
                }
            }
            let now = SystemTime::now();
            let mut report = RefreshReport::default();
            for (index, result) in results.into_iter().enumerate() {
                let others = others_in_force(&self.slots, index);
                let slot = &mut self.slots[index];
                let skipped = match slot.source.is_fetched() {
                    false => Some(Outcome::Static),
                    true if fresh(slot) => Some(Outcome::NotModified),
                    true => None,
                };
                let source_report = if let Some(outcome) = skipped {
                    if outcome == Outcome::NotModified {
                        // The accepted answer in force is still valid: a success.
                        slot.history.record(now, &outcome, None);
                    }
                    SourceReport {
                        id: slot.source.id.clone(),
                        outcome,
                        warnings: Vec::new(),
                        save_failed: false,
                        history_failed: false,
                    }
                } else {
                    let result = result.unwrap_or(Err(Failure::TaskLost));
                    let ttl = match &result {
                        Ok(Retrieved::Answer(answer)) => Some(answer.ttl),
                        _ => None,
                    };
                    let context = Context {
                        guards: &self.guards,
                        others: &others,
                        options,
                        now,
                    };
                    let source_report = apply(slot, result, &context, &self.store, &self.log);
                    // Only an accepted answer holds the name back: after a failure or
                    // a refusal, the next refresh asks again.
                    slot.history.answer_fresh_until = match source_report.outcome {
                        Outcome::Updated { .. } | Outcome::Unchanged => ttl.map(|ttl| now + ttl),
                        _ => None,
                    };
                    source_report
                };
                report.sources.push(source_report);
            }
            report
        }
        .instrument(span)
        .await
    }

    /// The merged allowlist in force.
    pub fn allowlist(&self) -> Allowlist {
        let mut allowlist = Allowlist::default();
        for (name, rule_id) in &self.providers {
            let prefixes: Vec<IpNet> = self
                .slots
                .iter()
                .filter(|s| s.source.rule_id == *rule_id)
                .flat_map(|s| s.in_force.prefixes().iter().copied())
                .collect();
            allowlist.push(name.clone(), *rule_id, &prefixes);
        }
        allowlist
    }

    /// Every source's status, in configuration order.
    pub fn status(&self) -> Vec<SourceStatus> {
        self.slots.iter().map(Slot::status).collect()
    }

    pub fn source_status(&self, id: &str) -> Option<SourceStatus> {
        self.slots
            .iter()
            .find(|s| s.source.id == id)
            .map(Slot::status)
    }

    /// The set in force of one source.
    pub fn source_prefixes(&self, id: &str) -> Option<&[IpNet]> {
        self.slots
            .iter()
            .find(|s| s.source.id == id)
            .map(|s| s.in_force.prefixes())
    }
}

/// A last good list, saved or kept across a reload, checked by the current guards
/// (prefix lengths, capacity) before it is put in force again.
fn admit(mut list: SavedList, source: &Source, guards: &Guards) -> Result<SavedList, Rejected> {
    let entries: Vec<String> = list.prefixes.iter().map(ToString::to_string).collect();
    let valid = prefixes::validate(&entries, &source.id, source.trust(), guards)
        .map_err(Rejected::failed)?;
    guards::capacity(&source.id, &valid.prefixes, &HashSet::new()).map_err(|reason| {
        Rejected::Refused {
            reason,
            update: None,
        }
    })?;
    list.prefixes = valid.prefixes;
    Ok(list)
}

/// What a source's retrieval brought.
enum Retrieved {
    /// A url or file source's document.
    Document(FetchOutcome),
    /// A dns source's answer.
    Answer(Answer),
}

/// Fetches a url source, reads a file source or resolves a dns source.
async fn retrieve(
    fetcher: &Fetcher,
    source: &Source,
    conditional: &Conditional,
) -> Result<Retrieved, Failure> {
    match &source.location {
        Location::Url { url, .. } => Ok(Retrieved::Document(
            fetcher.fetch(url, &source.fetch, conditional).await?,
        )),
        Location::File { path, .. } => {
            let bytes = http::read_file(path, source.fetch.max_bytes).await?;
            Ok(Retrieved::Document(FetchOutcome::Body {
                bytes,
                etag: None,
                last_modified: None,
                content_type: None,
                final_url: None,
            }))
        }
        Location::Dns { name, resolver, .. } => {
            let query = dns::Query {
                name,
                resolver: *resolver,
                timeout: source.fetch.timeout,
                retries: source.fetch.retries,
            };
            Ok(Retrieved::Answer(dns::resolve(&query).await?))
        }
        Location::Static(_) => unreachable!("static sources are not fetched"),
    }
}

/// What judging one source's update needs besides the source.
struct Context<'a> {
    guards: &'a Guards,
    /// The prefixes the other sources have in force: the maps hold them too.
    others: &'a HashSet<IpNet>,
    options: RefreshOptions,
    now: SystemTime,
}

/// Every prefix in force from the sources other than `except`.
fn others_in_force(slots: &[Slot], except: usize) -> HashSet<IpNet> {
    slots
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != except)
        .flat_map(|(_, s)| s.in_force.prefixes().iter().copied())
        .collect()
}

/// Judges one source's fetch, puts an accepted list in force (and saves it), records
/// the attempt in the source's history (in memory, and in the change history when it
/// changed something, was refused or failed) and logs it: the one place that does.
fn apply(
    slot: &mut Slot,
    result: Result<Retrieved, Failure>,
    context: &Context<'_>,
    store: &StateStore,
    log: &store::history::Log,
) -> SourceReport {
    let now = context.now;
    let id = slot.source.id.clone();
    let mut warnings = Vec::new();
    let mut not_saved = None;
    let mut history_errors = Vec::new();
    // A source's first list is recorded even when it is the snapshot it replaces.
    let first_load = slot.in_force.last_good().is_none();
    let record =
        |outcome, update: Option<&SavedList>, added, removed, size_after| store::history::Change {
            at: now,
            source: slot.source.id.clone(),
            provider: slot.source.provider.clone(),
            outcome,
            serial: update.and_then(|list| list.serial.clone()),
            etag: update.and_then(|list| list.etag.clone()),
            last_modified: update.and_then(|list| list.last_modified.clone()),
            added: store::history::Prefixes::new(added),
            removed: store::history::Prefixes::new(removed),
            size_after: Some(size_after),
            note: None,
        };
    let (outcome, entry) = match evaluate(slot, result, context, &mut warnings) {
        Ok(Accepted::NotModified) => {
            if let Some(list) = slot.in_force.last_good_mut() {
                list.fetched_at = now;
            }
            history_errors.extend(log.clear_refused(&id).err());
            (Outcome::NotModified, None)
        }
        Ok(Accepted::Set(list)) => {
            let same_on_disk = slot.in_force.last_good().is_some_and(|old| {
                old.prefixes == list.prefixes
                    && old.etag == list.etag
                    && old.last_modified == list.last_modified
                    && old.serial == list.serial
                    && old.seen == list.seen
            });
            if !same_on_disk && let Err(err) = store.save(&list) {
                let err = LastError::NotSaved(err);
                warnings.push(err.to_string());
                not_saved = Some(err);
            }
            let current = slot.in_force.prefixes();
            let (added, removed) = differences(current, &list.prefixes);
            let changed = list.prefixes != current;
            let entry = (changed || first_load).then(|| {
                let (added, removed) = (added.clone(), removed.clone());
                let mut entry = record(
                    store::history::Outcome::Applied,
                    Some(&list),
                    added,
                    removed,
                    list.prefixes.len(),
                );
                // What the first list replaced, when it was not nothing.
                entry.note = match &slot.in_force {
                    InForce::Snapshot(snapshot) => Some(format!(
                        "the first list fetched; it replaced the preset's snapshot{}",
                        snapshot
                            .as_of
                            .as_deref()
                            .map(|d| format!(" of {d}"))
                            .unwrap_or_default()
                    )),
                    _ => None,
                };
                entry
            });
            history_errors.extend(log.clear_refused(&id).err());
            slot.in_force = InForce::Fetched(*list);
            let (added, removed) = (added.len(), removed.len());
            let outcome = if changed {
                slot.history.last_change = Some(now);
                info!(source = %id, added, removed, "list updated");
                Outcome::Updated { added, removed }
            } else {
                Outcome::Unchanged
            };
            (outcome, entry)
        }
        Err(Rejected::Failed(error)) => {
            warn!(source = %id, %error, "refresh failed; keeping the list in force");
            let entry = record(
                store::history::Outcome::Failed {
                    error: error.to_string(),
                },
                None,
                Vec::new(),
                Vec::new(),
                slot.in_force.prefixes().len(),
            );
            (Outcome::Failed { error }, Some(entry))
        }
        Err(Rejected::Refused { reason, update }) => {
            warn!(source = %id, %reason, "update refused; keeping the list in force");
            let current = slot.in_force.prefixes();
            let (added, removed) = update
                .as_ref()
                .map(|list| differences(current, &list.prefixes))
                .unwrap_or_default();
            let mut entry = record(
                store::history::Outcome::Refused {
                    guard: reason.guard().to_owned(),
                    reason: reason.to_string(),
                },
                update.as_deref(),
                added,
                removed,
                current.len(),
            );
            if let Some(update) = update {
                let refused = store::history::RefusedUpdate {
                    source: id.clone(),
                    provider: slot.source.provider.clone(),
                    at: now,
                    guard: reason.guard().to_owned(),
                    reason: reason.to_string(),
                    prefixes: update.prefixes,
                };
                history_errors.extend(log.record_refusal(refused, &mut entry).err());
            }
            (Outcome::Refused { reason }, Some(entry))
        }
    };
    if let Some(entry) = &entry {
        history_errors.extend(log.append(entry).err());
    }
    let history_failed = !history_errors.is_empty();
    for err in history_errors {
        warnings.push(format!("the change history could not be written: {err}"));
    }
    let save_failed = not_saved.is_some();
    slot.history.record(now, &outcome, not_saved);
    for warning in &warnings {
        warn!(source = %id, "{warning}");
    }
    SourceReport {
        id,
        outcome,
        warnings,
        save_failed,
        history_failed,
    }
}

/// The prefixes of `new` not in `old`, and those of `old` not in `new`.
fn differences(old: &[IpNet], new: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    let old_set: HashSet<&IpNet> = old.iter().collect();
    let new_set: HashSet<&IpNet> = new.iter().collect();
    (
        new.iter()
            .filter(|n| !old_set.contains(n))
            .copied()
            .collect(),
        old.iter()
            .filter(|n| !new_set.contains(n))
            .copied()
            .collect(),
    )
}

enum Accepted {
    NotModified,
    Set(Box<SavedList>),
}

#[derive(Debug, Error)]
enum Rejected {
    #[error(transparent)]
    Failed(Arc<Failure>),
    #[error("{reason}")]
    Refused {
        reason: Refusal,
        /// The refused list, when there was an update (not a saved list re-admitted).
        update: Option<Box<SavedList>>,
    },
}

impl Rejected {
    fn failed(failure: impl Into<Failure>) -> Self {
        Rejected::Failed(Arc::new(failure.into()))
    }
}

fn evaluate(
    slot: &Slot,
    result: Result<Retrieved, Failure>,
    context: &Context<'_>,
    warnings: &mut Vec<String>,
) -> Result<Accepted, Rejected> {
    let source = &slot.source;
    let last_good = slot.in_force.last_good();
    let document = match result.map_err(Rejected::failed)? {
        Retrieved::Document(document) => document,
        Retrieved::Answer(answer) => return evaluate_answer(slot, answer, context, warnings),
    };
    let (bytes, etag, last_modified, content_type, final_url) = match document {
        FetchOutcome::NotModified if last_good.is_some() => return Ok(Accepted::NotModified),
        FetchOutcome::NotModified => {
            return Err(Rejected::failed(Failure::NotModifiedWithoutDocument));
        }
        FetchOutcome::Body {
            bytes,
            etag,
            last_modified,
            content_type,
            final_url,
        } => (bytes, etag, last_modified, content_type, final_url),
    };
    let format = match &source.location {
        Location::Url { format, .. } | Location::File { format, .. } => format,
        Location::Static(_) | Location::Dns { .. } => unreachable!("not a document"),
    };
    let parsed = format::parse_fetched(format, &bytes, &source.id, content_type.as_deref())
        .map_err(|error| {
            Rejected::failed(Failure::Parse {
                error,
                redirected_to: final_url,
            })
        })?;
    let validated = prefixes::validate(&parsed.entries, &source.id, source.trust(), context.guards)
        .map_err(Rejected::failed)?;
    warnings.extend(validated.warnings);
    let list = Box::new(SavedList {
        version: store::STATE_VERSION,
        source_id: source.id.clone(),
        definition: slot.definition.clone(),
        prefixes: validated.prefixes,
        fetched_at: context.now,
        etag,
        last_modified,
        content_hash: store::content_hash(&bytes),
        serial: parsed.serial,
        seen: BTreeMap::new(),
    });
    let update = guards::Update {
        source_id: &source.id,
        new: &list.prefixes,
        entries: parsed.entries.len(),
        new_serial: list.serial.as_deref(),
        last_good: last_good.map(|list| list.prefixes.as_slice()),
        last_serial: last_good.and_then(|list| list.serial.as_deref()),
        others: context.others,
        forced: context.options.force || source.force,
    };
    judge(guards::check(context.guards, &update), list)
}

/// The list accepted, or refused with it, as the guards judged it.
fn judge(verdict: Result<(), Refusal>, list: Box<SavedList>) -> Result<Accepted, Rejected> {
    match verdict {
        Ok(()) => Ok(Accepted::Set(list)),
        Err(reason) => Err(Rejected::Refused {
            reason,
            update: Some(list),
        }),
    }
}

/// Judges a dns source's answer. Its addresses (bogons dropped) join those the
/// answers of the last `dns_keep` held: the set is their union, so a round-robin
/// name's rotating answers do not churn it. An empty answer is an empty list: the
/// empty guard judges it alone, and, accepted, it empties the set.
fn evaluate_answer(
    slot: &Slot,
    answer: Answer,
    context: &Context<'_>,
    warnings: &mut Vec<String>,
) -> Result<Accepted, Rejected> {
    let source = &slot.source;
    let Location::Dns { keep, .. } = &source.location else {
        unreachable!("only dns sources answer")
    };
    let last_good = slot.in_force.last_good();
    let now = context.now;
    let entries: Vec<String> = answer.addrs.iter().map(ToString::to_string).collect();
    let validated = prefixes::validate(&entries, &source.id, source.trust(), context.guards)
        .map_err(Rejected::failed)?;
    warnings.extend(validated.warnings);
    let mut seen = BTreeMap::new();
    if !answer.addrs.is_empty() {
        let within = |at: &SystemTime| now.duration_since(*at).unwrap_or(Duration::ZERO) < *keep;
        seen.extend(
            (last_good.iter().flat_map(|list| &list.seen))
                .filter(|(_, at)| within(at))
                .map(|(addr, at)| (*addr, *at)),
        );
        let kept = |addr: &IpAddr| validated.prefixes.iter().any(|net| net.contains(addr));
        seen.extend(answer.addrs.iter().filter(|a| kept(a)).map(|a| (*a, now)));
    }
    let union: Vec<String> = seen.keys().map(ToString::to_string).collect();
    let new = prefixes::validate(&union, &source.id, source.trust(), context.guards)
        .map_err(Rejected::failed)?
        .prefixes;
    let list = Box::new(SavedList {
        version: store::STATE_VERSION,
        source_id: source.id.clone(),
        definition: slot.definition.clone(),
        prefixes: new,
        fetched_at: now,
        etag: None,
        last_modified: None,
        content_hash: store::content_hash(entries.join("\n").as_bytes()),
        serial: None,
        seen,
    });
    let update = guards::Update {
        source_id: &source.id,
        new: &list.prefixes,
        entries: entries.len(),
        new_serial: None,
        last_good: last_good.map(|list| list.prefixes.as_slice()),
        last_serial: None,
        others: context.others,
        forced: context.options.force || source.force,
    };
    judge(guards::check(context.guards, &update), list)
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        path::{Path, PathBuf},
    };

    use super::*;
    use crate::config;

    struct Env {
        dir: tempfile::TempDir,
    }

    impl Env {
        fn new() -> Self {
            Env {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, text: &str) {
            fs::write(self.path(name), text).unwrap();
        }

        /// A config with a file source `list.txt` (provider "p"), a JSON file source
        /// with a serial (provider "j"), an Intercom preset and a static office list.
        fn config(&self, extra: &str) -> Config {
            self.config_with(extra, "")
        }

        /// The same with the Intercom EU preset (never refreshed in tests: no network).
        fn config_with_preset(&self) -> Config {
            self.config_with(
                "",
                "[[provider]]\nname = \"intercom\"\npreset = \"intercom-eu\"\n",
            )
        }

        fn config_with(&self, extra: &str, preset: &str) -> Config {
            let text = format!(
                r#"
interfaces = ["eth0"]
state_dir = "{state}"
{extra}
[[provider]]
name = "p"
[[provider.source]]
file = "{list}"
[[provider]]
name = "j"
[[provider.source]]
file = "{json}"
items = "items"
cidr = "cidr"
serial = "version"
{preset}
[[provider]]
name = "office"
[[provider.source]]
static = ["10.20.0.0/16", "192.0.2.0/24"]
as_of = "2026-11-02"
"#,
                state = self.path("state").display(),
                list = self.path("list.txt").display(),
                json = self.path("list.json").display(),
            );
            config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
        }

        fn refresher(&self, config: &Config) -> Refresher {
            let mut r = Refresher::new(config, Fetcher::default()).unwrap();
            r.bootstrap();
            r
        }

        /// `list.txt` holding `text`, `list.json` listing 198.51.100.0/24 (serial 1),
        /// the config with `extra`, and a refresher that has read them once.
        async fn refreshed(&self, text: &str, extra: &str) -> Refresher {
            self.write("list.txt", text);
            self.write("list.json", &json(1, &["198.51.100.0/24"]));
            let config = self.config(extra);
            let mut r = self.refresher(&config);
            r.refresh_all().await;
            r
        }
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn json(version: u32, cidrs: &[&str]) -> String {
        let items: Vec<_> = cidrs
            .iter()
            .map(|c| serde_json::json!({ "cidr": c }))
            .collect();
        serde_json::json!({ "version": version, "items": items }).to_string()
    }

    #[tokio::test]
    async fn bootstrap_uses_static_lists_snapshots_and_nothing_else() {
        let env = Env::new();
        let config = env.config_with_preset();
        let mut r = Refresher::new(&config, Fetcher::default()).unwrap();
        assert!(r.bootstrap().is_empty());
        let office = r.source_status("office/0").unwrap();
        assert_eq!(
            (office.in_force, office.as_of.as_deref()),
            (SetOrigin::Static, Some("2026-11-02"))
        );
        let intercom = r.source_status("intercom/intercom-eu").unwrap();
        assert_eq!(
            (
                intercom.in_force,
                intercom.as_of.as_deref(),
                intercom.prefixes_v4
            ),
            (SetOrigin::Snapshot, Some("2026-01-29"), 3)
        );
        assert_eq!(r.source_status("p/0").unwrap().in_force, SetOrigin::None);
        let allowlist = r.allowlist();
        assert_eq!(
            allowlist
                .providers
                .iter()
                .map(|p| (p.name.as_str(), p.rule_id))
                .collect::<Vec<_>>(),
            [("p", 0), ("j", 1), ("intercom", 2), ("office", 3)]
        );
        let entries = allowlist.entries();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[&"54.216.9.3/32".parse().unwrap()], 2);
        assert_eq!(entries[&"10.20.0.0/16".parse().unwrap()], 3);
    }

    #[tokio::test]
    async fn accepted_lists_are_persisted_and_restored_after_a_restart() {
        let env = Env::new();
        let config = env.config("");
        env.write("list.txt", "# partner\n192.0.2.0/25\n198.51.100.7\n");
        env.write("list.json", &json(3, &["203.0.113.0/24", "2001:db8::/48"]));
        let mut r = env.refresher(&config);
        let report = r.refresh_all().await;
        assert!(report.is_ok(), "{report:?}");
        assert!(report.changed());
        assert_eq!(
            report.get("p/0").unwrap().outcome,
            Outcome::Updated {
                added: 2,
                removed: 0
            }
        );
        assert_eq!(report.get("office/0").unwrap().outcome, Outcome::Static);
        let status = r.source_status("j/0").unwrap();
        assert_eq!(
            (
                status.in_force,
                status.prefixes_v4,
                status.prefixes_v6,
                status.serial.as_deref()
            ),
            (SetOrigin::Fetched, 1, 1, Some("3"))
        );
        assert!(status.last_success.is_some() && status.last_error.is_none());

        // A restart without any fetch has the same lists in force.
        let before = r.allowlist();
        let mut again = Refresher::new(&config, Fetcher::default()).unwrap();
        assert!(again.bootstrap().is_empty());
        assert_eq!(again.allowlist(), before);
        assert_eq!(
            again.source_status("p/0").unwrap().in_force,
            SetOrigin::State
        );
        assert_eq!(
            again.source_prefixes("p/0").unwrap(),
            nets(&["192.0.2.0/25", "198.51.100.7/32"])
        );
    }

    #[tokio::test]
    async fn identical_lists_do_not_rewrite_the_state_file() {
        let env = Env::new();
        let mut r = env.refreshed("192.0.2.0/24\n", "").await;
        let state_file = StateStore::open(&env.path("state"))
            .unwrap()
            .path_for("p/0");
        assert!(state_file.exists());
        fs::remove_file(&state_file).unwrap();
        // Same set, different document: unchanged, and not rewritten.
        env.write(
            "list.txt",
            "# same list, new comment\n192.0.2.0/25\n192.0.2.128/25\n",
        );
        let report = r.refresh_all().await;
        assert_eq!(report.get("p/0").unwrap().outcome, Outcome::Unchanged);
        assert!(!report.changed());
        assert!(!state_file.exists());
        assert!(r.source_status("p/0").unwrap().last_success.is_some());
    }

    #[tokio::test]
    async fn failures_keep_the_last_good_list_and_are_reported() {
        let env = Env::new();
        let mut r = env.refreshed("192.0.2.0/24\n", "").await;
        let good = r.allowlist();

        env.write("list.txt", "192.0.2.0/24\nnot-an-address\n");
        fs::remove_file(env.path("list.json")).unwrap();
        for round in 1..=2 {
            let report = r.refresh_all().await;
            assert!(!report.is_ok());
            let Outcome::Failed { error } = &report.get("p/0").unwrap().outcome else {
                panic!("{report:?}")
            };
            let error = error.to_string();
            assert!(
                error.contains("\"not-an-address\" is not an IP address"),
                "{error}"
            );
            let Outcome::Failed { error } = &report.get("j/0").unwrap().outcome else {
                panic!("{report:?}")
            };
            let error = error.to_string();
            assert!(error.contains("cannot read the file"), "{error}");
            let status = r.source_status("p/0").unwrap();
            assert_eq!(status.consecutive_failures, round);
            assert!(
                status
                    .last_error
                    .as_ref()
                    .unwrap()
                    .contains("not-an-address")
            );
            assert!(!status.refused);
            assert_eq!(r.allowlist(), good);
        }
        // Malformed JSON too.
        env.write("list.json", "{\"items\": [");
        let report = r.refresh_all().await;
        assert!(
            matches!(&report.get("j/0").unwrap().outcome, Outcome::Failed { error } if error.to_string().contains("not valid JSON"))
        );
        // Recovery resets the failure count.
        env.write("list.txt", "192.0.2.0/24\n");
        r.refresh_all().await;
        let status = r.source_status("p/0").unwrap();
        assert_eq!(
            (
                status.consecutive_failures,
                status.failures,
                status.last_error.as_ref()
            ),
            (0, 3, None)
        );
    }

    #[tokio::test]
    async fn empty_lists_are_refused_unless_allowed_or_forced() {
        let env = Env::new();
        let mut r = env.refreshed("192.0.2.0/24\n", "").await;
        env.write("list.txt", "# nothing today\n");
        let report = r.refresh_all().await;
        let Outcome::Refused { reason } = &report.get("p/0").unwrap().outcome else {
            panic!("{report:?}")
        };
        let reason = reason.to_string();
        assert!(reason.contains("selects no prefixes"), "{reason}");
        let status = r.source_status("p/0").unwrap();
        assert!(status.refused);
        assert_eq!((status.refusals, status.prefixes_v4), (1, 1));
        assert_eq!(r.source_prefixes("p/0").unwrap(), nets(&["192.0.2.0/24"]));

        // --force for one call.
        let report = r.refresh_with(RefreshOptions { force: true }).await;
        assert_eq!(
            report.get("p/0").unwrap().outcome,
            Outcome::Updated {
                added: 0,
                removed: 1
            }
        );
        assert!(r.source_prefixes("p/0").unwrap().is_empty());
        assert!(!r.source_status("p/0").unwrap().refused);

        // guards.allow_empty.
        let env = Env::new();
        let mut r = env
            .refreshed("192.0.2.0/24\n", "[guards]\nallow_empty = true")
            .await;
        env.write("list.txt", "");
        let report = r.refresh_all().await;
        assert_eq!(
            report.get("p/0").unwrap().outcome,
            Outcome::Updated {
                added: 0,
                removed: 1
            }
        );
    }

    #[tokio::test]
    async fn shrink_beyond_the_threshold_is_refused() {
        let env = Env::new();
        let mut r = env
            .refreshed(
                "192.0.2.0/24\n198.51.100.0/24\n203.0.113.0/24\n203.0.113.0/24\n",
                "",
            )
            .await;
        // 2 of 3 /24s gone: 66.7% > 50%.
        env.write("list.txt", "192.0.2.0/24\n");
        let report = r.refresh_all().await;
        let Outcome::Refused { reason } = &report.get("p/0").unwrap().outcome else {
            panic!("{report:?}")
        };
        let reason = reason.to_string();
        assert!(
            reason.contains("66.7%") && reason.contains("max_shrink"),
            "{reason}"
        );
        assert_eq!(r.source_prefixes("p/0").unwrap().len(), 3);
        // Exactly half of 2 /24s... here one of 3 gone (33%): within the threshold.
        env.write("list.txt", "192.0.2.0/24\n198.51.100.0/24\n");
        let report = r.refresh_all().await;
        assert_eq!(
            report.get("p/0").unwrap().outcome,
            Outcome::Updated {
                added: 0,
                removed: 1
            }
        );
        // Growth is never a shrink.
        env.write(
            "list.txt",
            "192.0.2.0/23\n198.51.100.0/24\n203.0.113.0/24\n",
        );
        assert!(matches!(
            r.refresh_all().await.get("p/0").unwrap().outcome,
            Outcome::Updated { .. }
        ));
        // Forced.
        env.write("list.txt", "203.0.113.9\n");
        assert!(matches!(
            r.refresh_all().await.get("p/0").unwrap().outcome,
            Outcome::Refused { .. }
        ));
        let report = r.refresh_with(RefreshOptions { force: true }).await;
        assert!(matches!(
            report.get("p/0").unwrap().outcome,
            Outcome::Updated { .. }
        ));
        assert_eq!(r.source_prefixes("p/0").unwrap(), nets(&["203.0.113.9/32"]));
    }

    #[tokio::test]
    async fn the_shrink_guard_survives_a_restart_and_source_force_bypasses_it() {
        let env = Env::new();
        env.write("list.txt", "192.0.2.0/24\n198.51.100.0/24\n");
        env.write("list.json", &json(1, &["198.51.100.0/24"]));
        let config = env.config("");
        env.refresher(&config).refresh_all().await;
        env.write("list.txt", "192.0.2.1\n");
        let mut r = env.refresher(&config);
        assert!(matches!(
            r.refresh_all().await.get("p/0").unwrap().outcome,
            Outcome::Refused { .. }
        ));

        let text = fs::read_to_string(env.path("list.txt")).unwrap();
        assert_eq!(text, "192.0.2.1\n");
        let mut forced = config.clone();
        forced.providers[0].sources[0].force = true;
        let mut r = Refresher::new(&forced, Fetcher::default()).unwrap();
        r.bootstrap();
        assert!(matches!(
            r.refresh_all().await.get("p/0").unwrap().outcome,
            Outcome::Updated { .. }
        ));
    }

    #[tokio::test]
    async fn a_reload_keeps_the_lists_and_history_of_unchanged_sources() {
        let env = Env::new();
        let mut r = env.refreshed("192.0.2.0/24\n", "").await;
        let succeeded = r.source_status("p/0").unwrap().last_success;
        assert!(succeeded.is_some());
        env.write("list.txt", "not-an-address\n");
        r.refresh_all().await;
        // Only the list in memory is left: a reload must not lose it.
        let store = StateStore::open(&env.path("state")).unwrap();
        fs::remove_file(store.path_for("p/0")).unwrap();

        let config = env.config("");
        assert_eq!(r.reconfigure(&config).unwrap(), Vec::<String>::new());
        let status = r.source_status("p/0").unwrap();
        assert_eq!(
            (
                status.in_force,
                status.last_success,
                status.consecutive_failures,
                status.failures
            ),
            (SetOrigin::Fetched, succeeded, 1, 1)
        );
        assert!(status.last_error.unwrap().contains("not-an-address"));
        assert_eq!(r.source_prefixes("p/0").unwrap(), nets(&["192.0.2.0/24"]));
        r.refresh_all().await;
        assert_eq!(r.source_status("p/0").unwrap().consecutive_failures, 2);

        // Stricter guards refuse the kept list as they would refuse a saved one; the
        // history stays.
        let mut strict = config.clone();
        strict.guards.min_prefix_v4 = 25;
        let warnings = r.reconfigure(&strict).unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w
                    .starts_with("source p/0: the list in force is refused by the current guards")),
            "{warnings:?}"
        );
        let status = r.source_status("p/0").unwrap();
        assert_eq!(
            (status.in_force, status.last_success, status.failures),
            (SetOrigin::None, succeeded, 2)
        );

        // A source whose definition changed starts afresh.
        let mut moved = config.clone();
        if let Location::File { path, .. } = &mut moved.providers[0].sources[0].location {
            *path = env.path("other.txt");
        }
        r.reconfigure(&moved).unwrap();
        let status = r.source_status("p/0").unwrap();
        assert_eq!(
            (status.in_force, status.last_success, status.failures),
            (SetOrigin::None, None, 0)
        );
        assert_eq!(
            r.source_status("j/0").unwrap().in_force,
            SetOrigin::State,
            "j/0 did not change"
        );
    }

    #[tokio::test]
    async fn older_serials_are_refused() {
        let env = Env::new();
        env.write("list.txt", "192.0.2.0/24\n");
        env.write("list.json", &json(10, &["198.51.100.0/24"]));
        let config = env.config("");
        let mut r = env.refresher(&config);
        r.refresh_all().await;
        env.write(
            "list.json",
            &json(9, &["198.51.100.0/24", "203.0.113.0/24"]),
        );
        let report = r.refresh_all().await;
        let Outcome::Refused { reason } = &report.get("j/0").unwrap().outcome else {
            panic!("{report:?}")
        };
        let reason = reason.to_string();
        assert!(
            reason.contains("serial 9 is older than the serial 10"),
            "{reason}"
        );
        env.write(
            "list.json",
            &json(11, &["198.51.100.0/24", "203.0.113.0/24"]),
        );
        assert!(matches!(
            r.refresh_all().await.get("j/0").unwrap().outcome,
            Outcome::Updated {
                added: 1,
                removed: 0
            }
        ));
    }

    #[tokio::test]
    async fn corrupt_or_foreign_state_falls_back_to_the_snapshot() {
        let env = Env::new();
        let config = env.config_with_preset();
        let store = StateStore::open(&config.state_dir).unwrap();
        fs::write(store.path_for("intercom/intercom-eu"), "not json").unwrap();
        let mut r = Refresher::new(&config, Fetcher::default()).unwrap();
        let warnings = r.bootstrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("corrupt") && warnings[0].contains("intercom%2Fintercom-eu.json"),
            "{warnings:?}"
        );
        assert_eq!(
            r.source_status("intercom/intercom-eu").unwrap().in_force,
            SetOrigin::Snapshot
        );
        assert_eq!(r.source_prefixes("intercom/intercom-eu").unwrap().len(), 3);

        // A state file written for another definition (the URL or selection changed).
        let config = env.config("");
        env.write("list.txt", "192.0.2.0/24\n");
        env.write("list.json", &json(1, &["198.51.100.0/24"]));
        r.refresh_all().await;
        let mut state = store.load("p/0").unwrap().unwrap();
        state.definition = "something else".into();
        store.save(&state).unwrap();
        let mut r = Refresher::new(&config, Fetcher::default()).unwrap();
        let warnings = r.bootstrap();
        assert!(
            warnings.iter().any(|w| w.contains("different definition")),
            "{warnings:?}"
        );
        assert_eq!(r.source_status("p/0").unwrap().in_force, SetOrigin::None);
    }

    /// A history record as (source, outcome word, guard, added, removed, size after).
    type Entry = (String, String, String, Vec<String>, Vec<String>, usize);

    /// The change history of the test's state directory.
    fn recorded(env: &Env) -> Vec<Entry> {
        let side = |p: &store::history::Prefixes| match p {
            store::history::Prefixes::Listed(nets) => {
                nets.iter().map(ToString::to_string).collect()
            }
            store::history::Prefixes::Counted(n) => vec![format!("{n} counted")],
        };
        store::history::read(&env.path("state"))
            .unwrap()
            .iter()
            .map(|c| {
                let (word, guard) = match &c.outcome {
                    store::history::Outcome::Applied => ("applied", String::new()),
                    store::history::Outcome::Refused { guard, .. } => ("refused", guard.clone()),
                    store::history::Outcome::Failed { .. } => ("failed", String::new()),
                };
                (
                    c.source.clone(),
                    word.to_owned(),
                    guard,
                    side(&c.added),
                    side(&c.removed),
                    c.size_after.unwrap(),
                )
            })
            .collect()
    }

    fn entry(
        source: &str,
        word: &str,
        guard: &str,
        added: &[&str],
        removed: &[&str],
        size: usize,
    ) -> Entry {
        let owned = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
        (
            source.to_owned(),
            word.to_owned(),
            guard.to_owned(),
            owned(added),
            owned(removed),
            size,
        )
    }

    #[tokio::test]
    async fn applied_refused_and_failed_updates_are_recorded_and_unchanged_ones_not() {
        let env = Env::new();
        let mut r = env
            .refreshed("192.0.2.0/24\n198.51.100.0/24\n203.0.113.0/24\n", "")
            .await;
        let first = vec![
            entry(
                "p/0",
                "applied",
                "",
                &["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"],
                &[],
                3,
            ),
            entry("j/0", "applied", "", &["198.51.100.0/24"], &[], 1),
        ];
        let mut got = recorded(&env);
        got.sort_by(|a, b| b.0.cmp(&a.0));
        assert_eq!(got, first);
        let changes = store::history::read(&env.path("state")).unwrap();
        let j = changes.iter().find(|c| c.source == "j/0").unwrap();
        assert_eq!((j.provider.as_str(), j.serial.as_deref()), ("j", Some("1")));

        // Nothing changed: nothing recorded (the static list never is).
        let report = r.refresh_all().await;
        assert_eq!(report.get("p/0").unwrap().outcome, Outcome::Unchanged);
        assert_eq!(recorded(&env).len(), 2);

        // A change.
        env.write(
            "list.txt",
            "192.0.2.0/24\n198.51.100.0/24\n203.0.113.0/25\n",
        );
        r.refresh_all().await;
        // A shrink, refused: what it would have done, the set kept.
        env.write("list.txt", "192.0.2.0/24\n");
        let report = r.refresh_all().await;
        assert!(matches!(
            report.get("p/0").unwrap().outcome,
            Outcome::Refused { .. }
        ));
        // A failure.
        env.write("list.txt", "192.0.2.0/24\nnot-an-address\n");
        let report = r.refresh_all().await;
        assert!(matches!(
            report.get("p/0").unwrap().outcome,
            Outcome::Failed { .. }
        ));
        let p: Vec<_> = recorded(&env)
            .into_iter()
            .filter(|e| e.0 == "p/0")
            .collect();
        assert_eq!(
            p[1..],
            [
                entry(
                    "p/0",
                    "applied",
                    "",
                    &["203.0.113.0/25"],
                    &["203.0.113.0/24"],
                    3
                ),
                entry(
                    "p/0",
                    "refused",
                    "shrink",
                    &[],
                    &["198.51.100.0/24", "203.0.113.0/25"],
                    3
                ),
                entry("p/0", "failed", "", &[], &[], 3),
            ]
        );
        let changes = store::history::read(&env.path("state")).unwrap();
        let failed = changes.last().unwrap();
        let store::history::Outcome::Failed { error } = &failed.outcome else {
            panic!("{failed:?}")
        };
        assert!(error.contains("not-an-address"), "{error}");
        let refused = &changes[changes.len() - 2];
        let store::history::Outcome::Refused { reason, .. } = &refused.outcome else {
            panic!("{refused:?}")
        };
        assert!(reason.contains("max_shrink"), "{reason}");
    }

    #[tokio::test]
    async fn a_first_list_is_recorded_even_when_it_is_the_snapshot_in_force() {
        let env = Env::new();
        env.write("list.txt", "192.0.2.0/24\n");
        env.write("list.json", &json(1, &["198.51.100.0/24"]));
        let mut config = env.config("");
        config.providers[0].sources[0].snapshot = Some(StaticList {
            prefixes: nets(&["192.0.2.0/24"]),
            as_of: Some("2026-01-29".into()),
            reference: None,
        });
        let mut r = env.refresher(&config);
        let report = r.refresh_all().await;
        assert_eq!(report.get("p/0").unwrap().outcome, Outcome::Unchanged);
        let changes = store::history::read(&env.path("state")).unwrap();
        let p = changes.iter().find(|c| c.source == "p/0").unwrap();
        assert_eq!(
            (&p.outcome, p.added.len(), p.removed.len(), p.size_after),
            (&store::history::Outcome::Applied, 0, 0, Some(1))
        );
        assert_eq!(
            p.note.as_deref(),
            Some("the first list fetched; it replaced the preset's snapshot of 2026-01-29")
        );
        // Fetched again, the same: nothing more.
        r.refresh_all().await;
        assert_eq!(store::history::read(&env.path("state")).unwrap(), changes);
    }

    #[tokio::test]
    async fn the_latest_refused_update_is_kept_until_one_is_applied() {
        let env = Env::new();
        let mut r = env
            .refreshed("192.0.2.0/24\n198.51.100.0/24\n203.0.113.0/24\n", "")
            .await;
        let state = env.path("state");
        env.write("list.txt", "192.0.2.0/24\n");
        r.refresh_all().await;
        let kept = store::history::refused_updates(&state).unwrap();
        assert_eq!(kept.len(), 1, "{kept:?}");
        let first = kept[0].clone();
        assert_eq!(
            (
                first.source.as_str(),
                first.provider.as_str(),
                first.guard.as_str(),
                first.prefixes.clone()
            ),
            ("p/0", "p", "shrink", nets(&["192.0.2.0/24"]))
        );
        assert!(first.reason.contains("66.7%"), "{}", first.reason);

        // Refused again: the update kept is the first one; the record only counts.
        r.refresh_all().await;
        assert_eq!(
            store::history::refused_updates(&state).unwrap(),
            std::slice::from_ref(&first)
        );
        let last = store::history::read(&state).unwrap().pop().unwrap();
        assert_eq!(
            (last.added, last.removed),
            (
                store::history::Prefixes::Counted(0),
                store::history::Prefixes::Counted(2)
            )
        );
        assert!(last.note.unwrap().contains("the same update as refused at"));

        // Another refused update replaces it.
        env.write("list.txt", "198.51.100.0/24\n");
        r.refresh_all().await;
        let kept = store::history::refused_updates(&state).unwrap();
        assert_eq!(kept[0].prefixes, nets(&["198.51.100.0/24"]));

        // An accepted update clears it, even one that changes nothing.
        env.write(
            "list.txt",
            "192.0.2.0/24\n198.51.100.0/24\n203.0.113.0/24\n",
        );
        let report = r.refresh_all().await;
        assert_eq!(report.get("p/0").unwrap().outcome, Outcome::Unchanged);
        assert!(store::history::refused_updates(&state).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_saved_list_the_history_does_not_know_is_recorded_once() {
        let env = Env::new();
        let config = env.config("");
        env.refreshed("192.0.2.0/24\n", "").await;
        let saved_at = StateStore::open(&env.path("state"))
            .unwrap()
            .load("p/0")
            .unwrap()
            .unwrap()
            .fetched_at;
        // The history is lost (or predates this agent); a restart starts from the
        // saved lists and records them, dated when they were fetched.
        fs::remove_file(env.path("state").join(store::HISTORY_FILE)).unwrap();
        env.refresher(&config);
        let changes = store::history::read(&env.path("state")).unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        let p = changes.iter().find(|c| c.source == "p/0").unwrap();
        assert_eq!(
            (p.at, p.added.listed().unwrap(), p.note.is_some()),
            (saved_at, &nets(&["192.0.2.0/24"])[..], true)
        );
        // Once: a second restart finds them in the history.
        env.refresher(&config);
        assert_eq!(store::history::read(&env.path("state")).unwrap(), changes);
    }

    #[tokio::test]
    async fn a_history_that_cannot_be_written_is_reported_not_fatal() {
        let env = Env::new();
        env.write("list.txt", "192.0.2.0/24\n");
        env.write("list.json", &json(1, &["198.51.100.0/24"]));
        let config = env.config("");
        let mut r = env.refresher(&config);
        // Something that is not a file in its place.
        fs::create_dir(env.path("state").join(store::HISTORY_FILE)).unwrap();
        let report = r.refresh_all().await;
        let p = report.get("p/0").unwrap();
        assert!(matches!(p.outcome, Outcome::Updated { .. }), "{p:?}");
        assert!(p.history_failed && !p.save_failed, "{p:?}");
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("the change history could not be written")),
            "{p:?}"
        );
        assert_eq!(r.source_prefixes("p/0").unwrap(), nets(&["192.0.2.0/24"]));
        let text = serde_json::to_value(p).unwrap();
        assert_eq!(text["history_failed"], true);
    }

    #[tokio::test]
    async fn status_is_serialisable() {
        let env = Env::new();
        env.write("list.txt", "192.0.2.0/24\n");
        env.write("list.json", &json(1, &["198.51.100.0/24"]));
        let config = env.config("");
        let mut r = env.refresher(&config);
        let report = r.refresh_all().await;
        let text = serde_json::to_string(&report).unwrap();
        assert!(text.contains("\"result\":\"updated\""), "{text}");
        // Errors are typed inside, their message outside (`allowlist fetch --json`).
        let refused = SourceReport {
            id: "p/0".into(),
            outcome: Outcome::Refused {
                reason: Refusal::Empty { entries: 2 },
            },
            warnings: Vec::new(),
            save_failed: false,
            history_failed: false,
        };
        assert_eq!(
            serde_json::to_value(&refused).unwrap(),
            serde_json::json!({
                "id": "p/0",
                "result": "refused",
                "reason": Refusal::Empty { entries: 2 }.to_string(),
                "warnings": [],
                "save_failed": false,
            })
        );
        // The agent's status file carries these; they must read back as written.
        let sources: Vec<SourceStatus> =
            serde_json::from_str(&serde_json::to_string(&r.status()).unwrap()).unwrap();
        let ids = |list: &[SourceStatus]| {
            list.iter()
                .map(|s| (s.id.clone(), s.in_force, s.prefixes_v4))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&sources), ids(&r.status()));
        assert_eq!(sources[0].in_force, SetOrigin::Fetched);
    }
}

/// The identity a saved list is kept under. An upgrade that changes it for an
/// unchanged source throws the source's saved list away and sends it back to its
/// snapshot (or to nothing), so these bytes are pinned: change them only on purpose.
#[cfg(test)]
mod definition_tests {
    use std::path::Path;

    use super::definition;
    use crate::config;

    const CONFIG: &str = r#"
interfaces = ["eth0"]
[[provider]]
name = "url"
[[provider.source]]
url = "https://203.0.113.5/ranges.json"
format = "json"
items = "ip_ranges"
cidr = "range"
where = { service = "WEBHOOKS" }
serial = "syncToken"
[[provider]]
name = "file"
[[provider.source]]
file = "/etc/allowlist/office.txt"
[[provider]]
name = "static"
[[provider.source]]
static = ["192.0.2.0/24", "2001:db8::/48"]
as_of = "2026-11-01"
reference = "ticket 42"
[[provider]]
name = "dns"
[[provider.source]]
dns = "hooks.example.net"
resolver = "198.51.100.53:53"
dns_keep = "2h"
[[provider]]
name = "intercom"
preset = "intercom-eu"
"#;

    #[test]
    fn a_saved_lists_identity_is_byte_identical_across_releases() {
        let config = config::parse(CONFIG, Path::new("golden.toml")).unwrap();
        let got: Vec<(String, String, String)> = config
            .sources()
            .map(|s| {
                let text = serde_json::to_string(&s.location).unwrap();
                (s.id.clone(), text, definition(s))
            })
            .collect();
        let want: &[(&str, &str, &str)] = &[
            (
                "url/0",
                r#"{"url":{"url":"https://203.0.113.5/ranges.json","format":{"format":"json","items":["ip_ranges"],"cidr":["range"],"where":[{"field":"service","any_of":["WEBHOOKS"]}],"serial":"syncToken"}}}"#,
                "b887d2b33b7f0b539586839bfc1b62e8754309952c28c5ab87d14983f3f97ab2",
            ),
            (
                "file/0",
                r#"{"file":{"path":"/etc/allowlist/office.txt","format":{"format":"text"}}}"#,
                "da78b66112ef212cadd8be7c9a54c705ad77edfa3afbea6e009f530ce3534860",
            ),
            (
                "static/0",
                r#"{"static":{"prefixes":["192.0.2.0/24","2001:db8::/48"],"as_of":"2026-11-01","reference":"ticket 42"}}"#,
                "d6c2c38f0fa3578ba97b475dc6102a5035153482be9f2fa72520c2de1467aabb",
            ),
            (
                "dns/0",
                r#"{"dns":{"name":"hooks.example.net","resolver":"198.51.100.53:53","keep":"2h"}}"#,
                "da7b7c3e8e2a92ae6e692df8166bf4c905bac1b637ce630df04ea252efc999b8",
            ),
            (
                "intercom/intercom-eu",
                r#"{"url":{"url":"https://static.intercomcdn.com/intercom-ips/eu/intercom-ip-ranges.json","format":{"format":"json","items":["ip_ranges"],"cidr":["range"],"where":[{"field":"service","any_of":["INTERCOM-OUTBOUND"]}],"serial":"date"}}}"#,
                "3d1884fe0d05356ba20c4f4af1b98cbf20305ab6ad7f7c9102a89ad318f48117",
            ),
        ];
        let got: Vec<(&str, &str, &str)> = (got.iter())
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        assert_eq!(got, want);
    }
}
