//! `cargo xtask package`: the Debian package, made by cargo-deb from the release build
//! of the agent (which embeds the XDP program). What goes in it is declared in
//! `[package.metadata.deb]` of allowlist-user/Cargo.toml; the files come from deploy/.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Installed when no cargo-deb is on PATH; it builds with rustc 1.85 and newer.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Files the package must hold, as `dpkg-deb --contents` lists them.
const EXPECTED_FILES: &[&str] = &[
    "./usr/bin/allowlist",
    "./lib/systemd/system/allowlist.service",
    "./etc/allowlist/allowlist.toml",
];

/// Control files: the example configuration is a conffile, and the maintainer
/// scripts create the state directory and detach the filter on removal.
const EXPECTED_CONTROL: &[&str] = &["conffiles", "postinst", "prerm", "postrm"];

/// Builds the package (under `deb_version` rather than the crate's version, if given)
/// and returns its path.
pub(crate) fn run(deb_version: Option<&str>) -> Result<PathBuf> {
    super::step("release build of the agent (with its XDP program)");
    super::cargo(&["build", "--release", "--package", "allowlist-user"])?;
    ensure_cargo_deb()?;
    super::step("Debian package (cargo-deb)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // cargo-deb prints the path of the package on stdout, and its progress on stderr.
    let mut deb = Command::new(&cargo);
    deb.args(["deb", "--package", "allowlist-user", "--no-build"]);
    if let Some(version) = deb_version {
        deb.args(["--deb-version", version]);
    }
    let out = deb
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!("`cargo deb` failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb printed no package path: {stdout:?}"))?;
    check(&deb)?;
    eprintln!("{}", deb.display());
    Ok(deb)
}

fn ensure_cargo_deb() -> Result<()> {
    let installed = Command::new("cargo-deb")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    eprintln!("package: installing cargo-deb {CARGO_DEB_VERSION} (a few minutes)");
    super::cargo(&[
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ])
}

/// Fails unless the package holds the files and control files it must.
fn check(deb: &Path) -> Result<()> {
    let contents = dpkg_deb("--contents", deb, &[])?;
    let paths: Vec<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    let missing: Vec<&str> = EXPECTED_FILES
        .iter()
        .copied()
        .filter(|f| !paths.contains(f))
        .collect();
    if !missing.is_empty() {
        bail!("{} lacks {}", deb.display(), missing.join(", "));
    }
    // `dpkg-deb --info` lists the control files as
    // "<size> bytes, <n> lines [*] <name> [<first line of a script>]".
    let info = dpkg_deb("--info", deb, &[])?;
    let control_files: Vec<&str> = info
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip(4);
            words
                .next()
                .map(|w| if w == "*" { words.next() } else { Some(w) })?
        })
        .collect();
    let missing: Vec<&str> = EXPECTED_CONTROL
        .iter()
        .copied()
        .filter(|c| !control_files.contains(c))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks the control files {}",
            deb.display(),
            missing.join(", ")
        );
    }
    let conffiles = dpkg_deb("--info", deb, &["conffiles"])?;
    if !conffiles
        .lines()
        .any(|l| l.trim() == "/etc/allowlist/allowlist.toml")
    {
        bail!(
            "{}: /etc/allowlist/allowlist.toml is not a conffile",
            deb.display()
        );
    }
    Ok(())
}

fn dpkg_deb(action: &str, deb: &Path, rest: &[&str]) -> Result<String> {
    let out = Command::new("dpkg-deb")
        .arg(action)
        .arg(deb)
        .args(rest)
        .output()
        .context("running dpkg-deb")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb {action} {} {} failed: {}",
            deb.display(),
            rest.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
