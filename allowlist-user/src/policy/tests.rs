use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{guards::Refusal, report::*, *};
use crate::config;
use crate::config::StaticList;

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
        warnings.iter().any(
            |w| w.starts_with("source p/0: the list in force is refused by the current guards")
        ),
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
        store::history::Prefixes::Listed(nets) => nets.iter().map(ToString::to_string).collect(),
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

/// The identity a saved list is kept under. An upgrade that changes it for an
/// unchanged source throws the source's saved list away and sends it back to its
/// snapshot (or to nothing), so these bytes are pinned: change them only on purpose.
mod identity {
    use std::path::Path;

    use crate::config;
    use crate::policy::definition;

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
