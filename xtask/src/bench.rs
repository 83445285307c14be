//! `cargo xtask bench`: builds the agent and the benchmark (with its baseline XDP
//! programs) in release, and runs the benchmark as root. It prints the table and
//! writes target/bench/results.md. Performance figures come only from here, never
//! from timed assertions in tests.

use anyhow::{Context as _, Result, bail};
use std::{path::PathBuf, process::Command};

use crate::setup::{self, Recommends};

/// What the flood part compares the allowlist with, from Debian: `nft`, `ipset` and
/// `iptables` (with their libraries). None of them starts a service: ipset and
/// iptables have no maintainer scripts that touch services, and nftables' postinst
/// enables `nftables.service` only where an administrator had enabled it before and
/// restarts it only on an upgrade, and only if it is running (`try-restart`). The
/// rulesets the benchmark writes live in its own throwaway network namespaces.
const FLOOD_PACKAGES: &[&str] = &["nftables", "ipset", "iptables"];

pub(crate) fn run(extra: &[String]) -> Result<()> {
    crate::require_root("the benchmarks load XDP programs and create network namespaces")?;
    if runs_flood(extra) {
        setup::apt_install(FLOOD_PACKAGES, Recommends::Skip)?;
    }
    crate::step("building the agent and the benchmarks (release)");
    crate::cargo(&[
        "build",
        "--release",
        "--package",
        "allowlist-user",
        "--package",
        "allowlist-bench",
    ])?;
    let target = target_dir()?;
    let bench = target.join("release").join("allowlist-bench");
    let out = target.join("bench").join("results.md");
    crate::step("benchmarks");
    let status = Command::new(&bench)
        .arg("--agent")
        .arg(target.join("release").join("allowlist"))
        .arg("--out")
        .arg(&out)
        .args(extra)
        .status()
        .with_context(|| format!("running {}", bench.display()))?;
    if !status.success() {
        bail!("the benchmarks failed ({status})");
    }
    Ok(())
}

/// Whether the benchmark arguments select the flood part: no `--only`, or an `--only`
/// that names it (`--only flood`, `--only=decision,flood`).
fn runs_flood(args: &[String]) -> bool {
    let mut only = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--only" {
            only.extend(iter.next().map(String::as_str));
        } else if let Some(value) = arg.strip_prefix("--only=") {
            only.push(value);
        }
    }
    only.is_empty()
        || only
            .iter()
            .any(|list| list.split(',').any(|part| part == "flood"))
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set).
fn target_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the workspace root")?
        .to_owned();
    Ok(root.join("target"))
}

#[cfg(test)]
mod tests {
    use super::runs_flood;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_flood_tools_are_installed_only_when_the_flood_part_runs() {
        assert!(runs_flood(&args(&[])));
        assert!(runs_flood(&args(&["--rounds", "3"])));
        assert!(runs_flood(&args(&["--only", "flood"])));
        assert!(runs_flood(&args(&["--only=decision,flood"])));
        assert!(runs_flood(&args(&["--only", "refresh", "--only", "flood"])));
        assert!(!runs_flood(&args(&["--only", "decision"])));
        assert!(!runs_flood(&args(&["--only=decision,refresh"])));
    }
}
