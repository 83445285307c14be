//! A source's slot: its set in force, where that came from, and the history of its
//! refreshes.

use std::{sync::Arc, time::SystemTime};

use ipnet::IpNet;
use thiserror::Error;

use super::{
    guards::Refusal,
    report::{Failure, Outcome, SetOrigin, SourceStatus},
};
use crate::{
    config::{Source, StaticList},
    sources::http::Conditional,
    store::{SavedList, StateError},
};

/// A source's set in force, and where it came from.
pub(super) enum InForce {
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
    pub(super) fn origin(&self) -> SetOrigin {
        match self {
            InForce::Nothing => SetOrigin::None,
            InForce::Static(_) => SetOrigin::Static,
            InForce::Snapshot(_) => SetOrigin::Snapshot,
            InForce::Saved(_) => SetOrigin::State,
            InForce::Fetched(_) => SetOrigin::Fetched,
        }
    }

    /// Aggregated.
    pub(super) fn prefixes(&self) -> &[IpNet] {
        match self {
            InForce::Nothing => &[],
            InForce::Static(list) | InForce::Snapshot(list) => &list.prefixes,
            InForce::Saved(list) | InForce::Fetched(list) => &list.prefixes,
        }
    }

    /// The date of a static list or snapshot.
    pub(super) fn as_of(&self) -> Option<&str> {
        match self {
            InForce::Static(list) | InForce::Snapshot(list) => list.as_of.as_deref(),
            _ => None,
        }
    }

    /// The last good list, saved or fetched: what the guards protect, and the
    /// validators of the next conditional request.
    pub(super) fn last_good(&self) -> Option<&SavedList> {
        match self {
            InForce::Saved(list) | InForce::Fetched(list) => Some(list),
            _ => None,
        }
    }

    pub(super) fn last_good_mut(&mut self) -> Option<&mut SavedList> {
        match self {
            InForce::Saved(list) | InForce::Fetched(list) => Some(list),
            _ => None,
        }
    }
}

/// What the refreshes of one source did. A reload keeps it while the source's
/// definition stays.
#[derive(Default)]
pub(super) struct History {
    pub(super) last_attempt: Option<SystemTime>,
    pub(super) last_success: Option<SystemTime>,
    /// When a fetch last changed the set in force.
    pub(super) last_change: Option<SystemTime>,
    pub(super) last_error: Option<LastError>,
    /// Attempts in a row that did not succeed (failures and refusals).
    pub(super) consecutive_failures: u32,
    pub(super) failures: u64,
    pub(super) refusals: u64,
    /// A dns source's last accepted answer holds until then (its TTL): the name is
    /// not asked again sooner, and a refresh before then is a success.
    pub(super) answer_fresh_until: Option<SystemTime>,
}

/// Why the last attempt did not fully succeed.
#[derive(Debug, Error)]
pub(super) enum LastError {
    #[error(transparent)]
    Failed(Arc<Failure>),
    #[error(transparent)]
    Refused(Refusal),
    /// The list was accepted and is in force, but a restart would not find it.
    #[error("the list is in force but could not be saved: {0}")]
    NotSaved(StateError),
}

impl History {
    pub(super) fn record(
        &mut self,
        now: SystemTime,
        outcome: &Outcome,
        not_saved: Option<LastError>,
    ) {
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

pub(super) struct Slot {
    pub(super) source: Source,
    /// Digest of the source's definition, stored with its state.
    pub(super) definition: String,
    pub(super) in_force: InForce,
    pub(super) history: History,
}

impl Slot {
    pub(super) fn conditional(&self) -> Conditional {
        self.in_force
            .last_good()
            .map(|list| Conditional {
                etag: list.etag.clone(),
                last_modified: list.last_modified.clone(),
            })
            .unwrap_or_default()
    }

    pub(super) fn status(&self) -> SourceStatus {
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
            kind: self.source.kind(),
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
