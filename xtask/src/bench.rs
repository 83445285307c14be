//! `cargo xtask bench`: builds the agent and the benchmark (with its baseline XDP
//! programs) in release, and runs the benchmark as root. It prints the table and
//! writes target/bench/results.md. Performance figures come only from here, never
//! from timed assertions in tests.

use anyhow::{Context as _, Result, bail};
use std::{path::PathBuf, process::Command};

pub(crate) fn run(extra: &[String]) -> Result<()> {
    crate::require_root("the benchmarks load XDP programs and create network namespaces")?;
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
