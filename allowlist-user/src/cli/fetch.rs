//! `allowlist fetch`: one refresh, as the agent would do it, without touching the maps.

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tracing::warn;

use crate::{
    config::Config,
    datapath::{self},
    policy::{Outcome, RefreshOptions, RefreshReport, Refresher, SourceReport},
    prefixes,
    sources::http::Fetcher,
    store,
};

use super::common::{open_maps, print_json};

pub(super) async fn fetch(config: &Config, force: bool, json: bool) -> Result<()> {
    // The refresher saves what it accepts; a scratch copy of the state directory keeps
    // this a dry run while still starting from the last good lists and validators.
    // Only files the agent would read itself are copied.
    store::check_dir(&config.state_dir)?;
    let scratch = tempfile::tempdir().context("creating a scratch state directory")?;
    for err in store::copy_json_files(&config.state_dir, scratch.path()) {
        warn!("{err}");
    }
    let mut scratch_config = config.clone();
    scratch_config.state_dir = scratch.path().to_owned();
    let mut refresher = Refresher::new(&scratch_config, Fetcher::default())?;
    refresher.bootstrap();
    let report = refresher.refresh_with(RefreshOptions { force }).await;
    let allowlist = refresher.allowlist();
    let desired = allowlist.entries();
    let live = if datapath::has_pinned_maps(&config.pin_dir) {
        Some(open_maps(config)?.live_entries()?)
    } else {
        None
    };
    let diff = live.as_ref().map(|live| prefixes::diff(live, &desired));
    let fetched: Vec<&SourceReport> = report
        .sources
        .iter()
        .filter(|s| !matches!(s.outcome, Outcome::Static))
        .collect();
    let all_failed = !fetched.is_empty()
        && fetched
            .iter()
            .all(|s| matches!(s.outcome, Outcome::Failed { .. } | Outcome::Refused { .. }));
    let verdict = || {
        if all_failed {
            bail!("every source failed or was refused: a refresh now would change nothing")
        }
        Ok(())
    };
    if json {
        print_fetch_json(&report, &allowlist, diff)?;
    } else {
        print_fetch_text(config, &report, &allowlist, diff)?;
    }
    verdict()
}

fn print_fetch_json(
    report: &RefreshReport,
    allowlist: &prefixes::Allowlist,
    diff: Option<prefixes::Diff>,
) -> Result<()> {
    #[derive(Serialize)]
    struct FetchOutput<'a> {
        report: &'a RefreshReport,
        allowlist: &'a prefixes::Allowlist,
        diff_against_live: Option<DiffOutput>,
    }
    #[derive(Serialize)]
    struct DiffOutput {
        add: Vec<String>,
        remove: Vec<String>,
    }
    print_json(&FetchOutput {
        report,
        allowlist,
        diff_against_live: diff.map(|d| DiffOutput {
            add: d.upserts.iter().map(|(n, _)| n.to_string()).collect(),
            remove: d.removals.iter().map(ToString::to_string).collect(),
        }),
    })?;
    Ok(())
}

fn print_fetch_text(
    config: &Config,
    report: &RefreshReport,
    allowlist: &prefixes::Allowlist,
    diff: Option<prefixes::Diff>,
) -> Result<()> {
    println!("sources:");
    for s in &report.sources {
        println!("  {:<28} {}", s.id, serde_json::to_string(&s.outcome)?);
        for w in &s.warnings {
            println!("  {:<28} warning: {w}", "");
        }
    }
    println!("allowlist:");
    for p in &allowlist.providers {
        println!("  {} ({} prefixes)", p.name, p.prefixes.len());
        for net in &p.prefixes {
            println!("    {net}");
        }
    }
    match diff {
        Some(d) if d.is_empty() => println!("no change against the live filter"),
        Some(d) => {
            println!("against the live filter:");
            for (net, _) in &d.upserts {
                println!("  + {net}");
            }
            for net in &d.removals {
                println!("  - {net}");
            }
        }
        None => println!(
            "no live filter under {} to compare with",
            config.pin_dir.display()
        ),
    }
    println!("(dry run: nothing was changed)");
    Ok(())
}
