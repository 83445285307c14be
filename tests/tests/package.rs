//! The Debian package, installed for real: `cargo xtask package` builds it from the
//! release binary (a no-op rebuild when nothing changed, minutes otherwise), dpkg
//! installs it, the installed agent runs, and dpkg purges it again, even when the test
//! fails. Needs root; refuses to touch an existing installation.
//!
//! `ALLOWLIST_DEB=<path>` tests that package instead of building one.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use allowlist_tests::{describe, netns::require_root, repo, run};

const PACKAGE: &str = "allowlist";
const BINARY: &str = "/usr/bin/allowlist";
const UNIT: &str = "/lib/systemd/system/allowlist.service";
const CONFIG: &str = "/etc/allowlist/allowlist.toml";
const CONFIG_DIR: &str = "/etc/allowlist";
const STATE_DIR: &str = "/var/lib/allowlist";

/// Whether dpkg knows the package: installed, or removed with its conffiles kept.
fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .is_ok_and(|o| {
            let status = String::from_utf8_lossy(&o.stdout);
            o.status.success() && !status.is_empty() && !status.ends_with("not-installed")
        })
}

/// The package: `ALLOWLIST_DEB`, or what `cargo xtask package` builds.
fn build_package() -> PathBuf {
    if let Some(deb) = std::env::var_os("ALLOWLIST_DEB") {
        return PathBuf::from(deb);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = run(Command::new(cargo)
        .args(["xtask", "package"])
        .current_dir(repo()));
    assert!(
        out.status.success(),
        "cargo xtask package: {}",
        describe(&out)
    );
    // xtask prints the package's path last.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let deb = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("cargo xtask package named no .deb: {}", describe(&out)));
    PathBuf::from(deb)
}

/// Purges the package on drop, so that a failing test leaves no installation behind.
struct Installation;

impl Installation {
    fn purge() -> Output {
        run(Command::new("dpkg").args(["--purge", PACKAGE]))
    }
}

impl Drop for Installation {
    fn drop(&mut self) {
        if installed() {
            let out = Installation::purge();
            if !out.status.success() {
                eprintln!("dpkg --purge {PACKAGE} failed: {}", describe(&out));
            }
        }
    }
}

#[test]
fn debian_package_installs_runs_and_purges() {
    if !require_root() {
        return;
    }
    // Never replace or purge what someone installed or keeps here.
    assert!(
        !installed(),
        "the package {PACKAGE} is installed on this machine (or its conffiles are): this test would purge it"
    );
    for path in [CONFIG_DIR, STATE_DIR] {
        assert!(
            !Path::new(path).exists(),
            "{path} exists but the package is not installed: this test would install over it and purge it"
        );
    }

    let deb = build_package();
    let guard = Installation;
    let out = run(Command::new("dpkg").arg("--install").arg(&deb));
    assert!(
        out.status.success(),
        "dpkg --install {}: {}",
        deb.display(),
        describe(&out)
    );

    // The installed agent runs.
    let out = run(Command::new(BINARY).arg("--version"));
    assert!(
        out.status.success(),
        "{BINARY} --version: {}",
        describe(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("allowlist {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(Command::new(BINARY).arg("presets"));
    assert!(out.status.success(), "{BINARY} presets: {}", describe(&out));
    let presets = String::from_utf8_lossy(&out.stdout);
    for preset in ["intercom-us", "github-hooks", "stripe-webhooks"] {
        assert!(
            presets.contains(preset),
            "`allowlist presets` lacks {preset}:\n{presets}"
        );
    }

    // The files, as the repository has them; the config is a conffile.
    let deploy = repo().join("deploy");
    for (installed_path, source) in [
        (UNIT, deploy.join("systemd/allowlist.service")),
        (CONFIG, deploy.join("allowlist.example.toml")),
    ] {
        assert_eq!(
            std::fs::read(installed_path).unwrap_or_else(|e| panic!("{installed_path}: {e}")),
            std::fs::read(&source).expect("the repository's copy"),
            "{installed_path} differs from {}",
            source.display()
        );
    }
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(CONFIG),
        "{CONFIG} is not a conffile: {}",
        describe(&out)
    );
    let state = std::fs::metadata(STATE_DIR).expect("postinst creates the state directory");
    assert!(state.is_dir());
    assert_eq!(
        state.permissions().mode() & 0o777,
        0o700,
        "{STATE_DIR} mode"
    );

    // With the binary in place, the installed unit verifies as it is.
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let out = run(Command::new("systemd-analyze").args(["verify", "--man=no", UNIT]));
        assert!(
            out.status.success(),
            "systemd-analyze verify {UNIT}: {}",
            describe(&out)
        );
    }

    // Purge removes everything, the state and the config included.
    let out = Installation::purge();
    assert!(out.status.success(), "dpkg --purge: {}", describe(&out));
    drop(guard);
    for path in [BINARY, UNIT, CONFIG, CONFIG_DIR, STATE_DIR] {
        assert!(!Path::new(path).exists(), "{path} is left after the purge");
    }
}
