//! `allowlist history`: the applied, refused and failed updates.

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};

use crate::{
    config::Config,
    store,
    store::history::{Change, Prefixes},
};

use super::common::{check_readable, when};

/// `allowlist history`: the recorded updates, oldest first, of the last `since`, of
/// one source or provider.
pub(super) fn history(
    config: &Config,
    since: Option<Duration>,
    source: Option<&str>,
    json: bool,
) -> Result<()> {
    check_readable(config)?;
    store::check_dir(&config.state_dir)?;
    let mut changes = store::history::read(&config.state_dir)?;
    if let Some(wanted) = source {
        let is = |id: &str, provider: &str| id == wanted || provider == wanted;
        if !config.sources().any(|s| is(&s.id, &s.provider))
            && !changes.iter().any(|c| is(&c.source, &c.provider))
        {
            let ids: Vec<&str> = config.sources().map(|s| s.id.as_str()).collect();
            bail!(
                "no source or provider {wanted:?} in {} or in the history (sources: {})",
                config.path.display(),
                ids.join(", ")
            );
        }
        changes.retain(|c| is(&c.source, &c.provider));
    }
    if let Some(since) = since {
        let from = SystemTime::now()
            .checked_sub(since)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        changes.retain(|c| c.at >= from);
    }
    if json {
        for change in &changes {
            println!("{}", serde_json::to_string(change)?);
        }
        return Ok(());
    }
    if changes.is_empty() {
        println!(
            "no update recorded in {}",
            config.state_dir.join(store::HISTORY_FILE).display()
        );
        return Ok(());
    }
    print!("{}", render_history(&changes));
    Ok(())
}

/// At most this many prefixes of a side are printed (`--json` has them all).
const PRINTED_PREFIXES: usize = 20;

fn render_history(changes: &[Change]) -> String {
    let width = changes.iter().map(|c| c.source.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in changes {
        let counts = format!("+{} -{}", side_count(&c.added), side_count(&c.removed));
        let size = c
            .size_after
            .map(|n| format!("{n} in force"))
            .unwrap_or_default();
        let serial = c
            .serial
            .as_deref()
            .map(|v| format!("; serial {v}"))
            .unwrap_or_default();
        let what = match &c.outcome {
            store::history::Outcome::Applied => format!("applied: {counts}, {size}{serial}"),
            store::history::Outcome::Refused { guard, reason } => format!(
                "REFUSED by the {guard} guard: would be {counts}, {size} kept{serial}: {reason}"
            ),
            store::history::Outcome::Failed { error } => format!("FAILED: {size} kept: {error}"),
        };
        let _ = writeln!(s, "{}  {:<width$}  {what}", when(c.at), c.source);
        if let Some(note) = &c.note {
            let _ = writeln!(s, "    ({note})");
        }
        for (sign, side) in [('+', &c.added), ('-', &c.removed)] {
            let Some(nets) = side.listed() else { continue };
            for net in nets.iter().take(PRINTED_PREFIXES) {
                let _ = writeln!(s, "    {sign} {net}");
            }
            if nets.len() > PRINTED_PREFIXES {
                let _ = writeln!(
                    s,
                    "    {sign} ... and {} more (--json lists them)",
                    nets.len() - PRINTED_PREFIXES
                );
            }
        }
    }
    s
}

/// `12`, or `1500 (counted)` for a side the history did not list.
fn side_count(side: &Prefixes) -> String {
    match side {
        Prefixes::Listed(nets) => nets.len().to_string(),
        Prefixes::Counted(n) => format!("{n} (counted)"),
    }
}
