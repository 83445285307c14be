//! Which list is in force for every source, and why: the refresh cycle, each source's slot,
//! the judging of what a refresh retrieved, the guards, and what is reported.
//!
//! Every source always has a set in force: its last good set (from disk or the last
//! accepted fetch), else the preset's embedded snapshot, else its static list. A
//! refresh only replaces that set with a fetched one that parses, validates and
//! passes the [guards](guards); anything else keeps the set in force and is
//! reported. What an operator sees of a source ([`SourceStatus`]) is derived from
//! its set in force and the history of its refreshes, which a reload keeps.

mod guards;
mod judging;
mod report;
mod slot;
#[cfg(test)]
mod tests;

pub use report::{Outcome, RefreshOptions, RefreshReport, SetOrigin, SourceReport, SourceStatus};

use std::{collections::HashMap, time::SystemTime};

use ipnet::IpNet;
use tokio::task::JoinSet;
use tracing::{Instrument, info_span, warn};

use self::{
    judging::{Context, Retrieved, admit, apply, others_in_force, retrieve},
    report::Failure,
    slot::{History, InForce, Slot},
};
use crate::{
    config::{Config, Guards, Location, Source},
    prefixes::Allowlist,
    sources::http::Fetcher,
    store::{self, StateError, StateStore},
};

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
            log: store::history::Log::open(&config.state_dir),
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
    fn record_restored(&mut self, restored: &[usize]) -> Result<(), store::history::HistoryError> {
        for slot in restored.iter().map(|&i| &self.slots[i]) {
            let Some(list) = slot.in_force.last_good() else {
                continue;
            };
            if self.log.knows(&slot.source.id) {
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
            let results = self.retrieve_all(fresh).await;
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
                        Ok(Retrieved::Answer(answer, _)) => Some(answer.ttl),
                        _ => None,
                    };
                    let context = Context {
                        guards: &self.guards,
                        others: &others,
                        options,
                        now,
                    };
                    let source_report = apply(slot, result, &context, &self.store, &mut self.log);
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

    /// Retrieves every fetched source that is not `fresh`, all at once: each
    /// slot's result, `None` for those not asked (or whose task was lost).
    async fn retrieve_all(
        &self,
        fresh: impl Fn(&Slot) -> bool,
    ) -> Vec<Option<Result<Retrieved, Failure>>> {
        let mut tasks = JoinSet::new();
        for (index, slot) in self.slots.iter().enumerate() {
            let Some(fetched) = slot.source.fetched().filter(|_| !fresh(slot)) else {
                continue;
            };
            let fetcher = self.fetcher.clone();
            let settings = slot.source.fetch.clone();
            let conditional = slot.conditional();
            tasks.spawn(async move {
                let retrieved = retrieve(&fetcher, fetched, &settings, &conditional).await;
                (index, retrieved)
            });
        }
        let mut results: Vec<Option<Result<Retrieved, Failure>>> = std::iter::repeat_with(|| None)
            .take(self.slots.len())
            .collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, result)) => results[index] = Some(result),
                Err(err) => warn!(error = %err, "a fetch task failed"),
            }
        }
        results
    }

    /// The change history and the refused updates, as written.
    pub(crate) fn history(&self) -> &store::history::Log {
        &self.log
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
