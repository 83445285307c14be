//! `allowlist list`: the prefixes in force, by provider.

use anyhow::{Result, bail};
use ipnet::IpNet;
use serde::Serialize;

use crate::config::Config;

use super::common::{live_table, open_maps, print_json};

#[derive(Serialize)]
struct ListEntry {
    prefix: IpNet,
    provider: String,
    rule_id: u32,
}

pub(super) fn list(config: &Config, provider: Option<&str>, json: bool) -> Result<()> {
    if let Some(p) = provider
        && config.provider(p).is_none()
    {
        let known: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "no provider {p:?} in {} (providers: {})",
            config.path.display(),
            known.join(", ")
        );
    }
    let maps = open_maps(config)?;
    let entries: Vec<ListEntry> = live_table(config, &maps)?
        .into_iter()
        .filter(|(_, _, name)| provider.is_none_or(|p| p == name))
        .map(|(prefix, rule_id, provider)| ListEntry {
            prefix,
            provider,
            rule_id,
        })
        .collect();
    if json {
        return print_json(&entries);
    }
    for e in &entries {
        println!("{:<44} {}", e.prefix, e.provider);
    }
    Ok(())
}
