//! `allowlist denied`: who is being dropped.

use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};

use crate::{
    config::Config,
    denied::{DENIED_FILE, DeniedFile, report::Report},
};

use super::common::{check_readable, print_json};

/// `allowlist denied`: the agent's table of denied sources (it works while the agent
/// is stopped; the file is what it last wrote).
pub(super) fn denied(
    config: &Config,
    top: usize,
    since: Option<Duration>,
    json: bool,
) -> Result<()> {
    check_readable(config)?;
    let Some(file) = DeniedFile::read(&config.state_dir)? else {
        bail!(
            "no {DENIED_FILE} in {}: the agent has recorded no denied source yet (is it running with this --config?)",
            config.state_dir.display()
        );
    };
    let now = SystemTime::now();
    let report = Report::new(&file, top, since, now);
    if json {
        return print_json(&report);
    }
    print!("{}", report.render(now));
    Ok(())
}
