//! How a retrieved list is judged: read, validated, checked by the guards, and
//! put in force or refused.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use thiserror::Error;
use tracing::{info, warn};

use super::{
    guards::{self, Refusal},
    report::{Failure, Outcome, RefreshOptions, SourceReport},
    slot::{InForce, LastError, Slot},
};
use crate::{
    config::{Fetched, Guards, Source},
    prefixes,
    sources::{
        dns::{self, Answer},
        format::{self, Format},
        http::{self, Conditional, FetchOutcome, FetchSettings, Fetcher},
    },
    store::{self, SavedList, StateStore},
};

/// A last good list, saved or kept across a reload, checked by the current guards
/// (prefix lengths, capacity) before it is put in force again.
pub(super) fn admit(
    mut list: SavedList,
    source: &Source,
    guards: &Guards,
) -> Result<SavedList, Rejected> {
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
pub(super) enum Retrieved {
    /// A url or file source's document, and how it is read.
    Document(FetchOutcome, Box<Format>),
    /// A dns source's answer, and how long its addresses are kept.
    Answer(Answer, Duration),
}

/// Fetches a url source, reads a file source or resolves a dns source.
pub(super) async fn retrieve(
    fetcher: &Fetcher,
    fetched: Fetched,
    settings: &FetchSettings,
    conditional: &Conditional,
) -> Result<Retrieved, Failure> {
    match fetched {
        Fetched::Url { url, format } => Ok(Retrieved::Document(
            fetcher.fetch(&url, settings, conditional).await?,
            Box::new(format),
        )),
        Fetched::File { path, format } => {
            let bytes = http::read_file(&path, settings.max_bytes).await?;
            let body = FetchOutcome::Body {
                bytes,
                etag: None,
                last_modified: None,
                content_type: None,
                final_url: None,
            };
            Ok(Retrieved::Document(body, Box::new(format)))
        }
        Fetched::Dns {
            name,
            resolver,
            keep,
        } => {
            let query = dns::Query {
                name: &name,
                resolver,
                timeout: settings.timeout,
                retries: settings.retries,
            };
            Ok(Retrieved::Answer(dns::resolve(&query).await?, keep))
        }
    }
}

/// What judging one source's update needs besides the source.
pub(super) struct Context<'a> {
    pub(super) guards: &'a Guards,
    /// The prefixes the other sources have in force: the maps hold them too.
    pub(super) others: &'a HashSet<IpNet>,
    pub(super) options: RefreshOptions,
    pub(super) now: SystemTime,
}

/// Every prefix in force from the sources other than `except`.
pub(super) fn others_in_force(slots: &[Slot], except: usize) -> HashSet<IpNet> {
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
pub(super) fn apply(
    slot: &mut Slot,
    result: Result<Retrieved, Failure>,
    context: &Context<'_>,
    store: &StateStore,
    log: &mut store::history::Log,
) -> SourceReport {
    let now = context.now;
    let mut notes = Notes::default();
    let (outcome, entry) = match evaluate(slot, result, context, &mut notes.warnings) {
        Ok(Accepted::NotModified) => {
            if let Some(list) = slot.in_force.last_good_mut() {
                list.fetched_at = now;
            }
            notes.history(log.clear_refused(&slot.source.id));
            (Outcome::NotModified, None)
        }
        Ok(Accepted::Set(list)) => put_in_force(slot, *list, now, store, log, &mut notes),
        Err(Rejected::Failed(error)) => {
            warn!(source = %slot.source.id, %error, "refresh failed; keeping the list in force");
            let entry = change(
                slot,
                now,
                store::history::Outcome::Failed {
                    error: error.to_string(),
                },
                None,
                (Vec::new(), Vec::new()),
                slot.in_force.prefixes().len(),
            );
            (Outcome::Failed { error }, Some(entry))
        }
        Err(Rejected::Refused { reason, update }) => {
            refuse(slot, reason, update, now, log, &mut notes)
        }
    };
    if let Some(entry) = &entry {
        notes.history(log.append(entry));
    }
    notes.report(slot, now, outcome)
}

/// What judging a retrieval has to say beside its outcome: warnings, and whether
/// the list or the history could not be written.
#[derive(Default)]
struct Notes {
    warnings: Vec<String>,
    not_saved: Option<LastError>,
    history_errors: Vec<store::history::HistoryError>,
}

impl Notes {
    fn history(&mut self, written: Result<(), store::history::HistoryError>) {
        self.history_errors.extend(written.err());
    }

    fn report(mut self, slot: &mut Slot, now: SystemTime, outcome: Outcome) -> SourceReport {
        let history_failed = !self.history_errors.is_empty();
        for err in &self.history_errors {
            (self.warnings).push(format!("the change history could not be written: {err}"));
        }
        let save_failed = self.not_saved.is_some();
        slot.history.record(now, &outcome, self.not_saved);
        for warning in &self.warnings {
            warn!(source = %slot.source.id, "{warning}");
        }
        SourceReport {
            id: slot.source.id.clone(),
            outcome,
            warnings: self.warnings,
            save_failed,
            history_failed,
        }
    }
}

/// A history entry about `slot`'s source.
fn change(
    slot: &Slot,
    now: SystemTime,
    outcome: store::history::Outcome,
    update: Option<&SavedList>,
    (added, removed): (Vec<IpNet>, Vec<IpNet>),
    size_after: usize,
) -> store::history::Change {
    store::history::Change {
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
    }
}

/// An accepted list: saved (unless the same list is on disk already), put in
/// force, and recorded when it changed the set or is the source's first.
fn put_in_force(
    slot: &mut Slot,
    list: SavedList,
    now: SystemTime,
    store: &StateStore,
    log: &mut store::history::Log,
    notes: &mut Notes,
) -> (Outcome, Option<store::history::Change>) {
    // A source's first list is recorded even when it is the snapshot it replaces.
    let first_load = slot.in_force.last_good().is_none();
    let same_on_disk = slot.in_force.last_good().is_some_and(|old| {
        old.prefixes == list.prefixes
            && old.etag == list.etag
            && old.last_modified == list.last_modified
            && old.serial == list.serial
            && old.seen == list.seen
    });
    if !same_on_disk && let Err(err) = store.save(&list) {
        let err = LastError::NotSaved(err);
        notes.warnings.push(err.to_string());
        notes.not_saved = Some(err);
    }
    let current = slot.in_force.prefixes();
    let (added, removed) = differences(current, &list.prefixes);
    let changed = list.prefixes != current;
    let (n_added, n_removed) = (added.len(), removed.len());
    let entry = (changed || first_load).then(|| {
        let mut entry = change(
            slot,
            now,
            store::history::Outcome::Applied,
            Some(&list),
            (added, removed),
            list.prefixes.len(),
        );
        // What the first list replaced, when it was not nothing.
        if let InForce::Snapshot(snapshot) = &slot.in_force {
            entry.note = Some(format!(
                "the first list fetched; it replaced the preset's snapshot{}",
                (snapshot.as_of.as_deref())
                    .map(|d| format!(" of {d}"))
                    .unwrap_or_default()
            ));
        }
        entry
    });
    notes.history(log.clear_refused(&slot.source.id));
    slot.in_force = InForce::Fetched(list);
    let outcome = if changed {
        slot.history.last_change = Some(now);
        info!(source = %slot.source.id, added = n_added, removed = n_removed, "list updated");
        Outcome::Updated {
            added: n_added,
            removed: n_removed,
        }
    } else {
        Outcome::Unchanged
    };
    (outcome, entry)
}

/// An update a guard refused: recorded, with the refused list kept for review.
fn refuse(
    slot: &Slot,
    reason: Refusal,
    update: Option<Box<SavedList>>,
    now: SystemTime,
    log: &mut store::history::Log,
    notes: &mut Notes,
) -> (Outcome, Option<store::history::Change>) {
    warn!(source = %slot.source.id, %reason, "update refused; keeping the list in force");
    let current = slot.in_force.prefixes();
    let differences = (update.as_ref())
        .map(|list| differences(current, &list.prefixes))
        .unwrap_or_default();
    let mut entry = change(
        slot,
        now,
        store::history::Outcome::Refused {
            guard: reason.guard().to_owned(),
            reason: reason.to_string(),
        },
        update.as_deref(),
        differences,
        current.len(),
    );
    if let Some(update) = update {
        let refused = store::history::RefusedUpdate {
            source: slot.source.id.clone(),
            provider: slot.source.provider.clone(),
            at: now,
            guard: reason.guard().to_owned(),
            reason: reason.to_string(),
            prefixes: update.prefixes,
        };
        notes.history(log.record_refusal(refused, &mut entry));
    }
    (Outcome::Refused { reason }, Some(entry))
}

/// The prefixes of `new` not in `old`, and those of `old` not in `new`.
pub(super) fn differences(old: &[IpNet], new: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
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

pub(super) enum Accepted {
    NotModified,
    Set(Box<SavedList>),
}

#[derive(Debug, Error)]
pub(super) enum Rejected {
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
    pub(super) fn failed(failure: impl Into<Failure>) -> Self {
        Rejected::Failed(Arc::new(failure.into()))
    }
}

pub(super) fn evaluate(
    slot: &Slot,
    result: Result<Retrieved, Failure>,
    context: &Context<'_>,
    warnings: &mut Vec<String>,
) -> Result<Accepted, Rejected> {
    let source = &slot.source;
    let last_good = slot.in_force.last_good();
    let (document, format) = match result.map_err(Rejected::failed)? {
        Retrieved::Document(document, format) => (document, format),
        Retrieved::Answer(answer, keep) => {
            return evaluate_answer(slot, answer, keep, context, warnings);
        }
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
    let parsed = format::parse_fetched(&format, &bytes, &source.id, content_type.as_deref())
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
pub(super) fn judge(
    verdict: Result<(), Refusal>,
    list: Box<SavedList>,
) -> Result<Accepted, Rejected> {
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
pub(super) fn evaluate_answer(
    slot: &Slot,
    answer: Answer,
    keep: Duration,
    context: &Context<'_>,
    warnings: &mut Vec<String>,
) -> Result<Accepted, Rejected> {
    let source = &slot.source;
    let last_good = slot.in_force.last_good();
    let now = context.now;
    let entries: Vec<String> = answer.addrs.iter().map(ToString::to_string).collect();
    let validated = prefixes::validate(&entries, &source.id, source.trust(), context.guards)
        .map_err(Rejected::failed)?;
    warnings.extend(validated.warnings);
    let mut seen = BTreeMap::new();
    if !answer.addrs.is_empty() {
        let within = |at: &SystemTime| now.duration_since(*at).unwrap_or(Duration::ZERO) < keep;
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
