//! What the systemd test (tests/tests/systemd.rs) boots: minimal Debian root
//! filesystems with systemd, made by mmdebstrap from Debian's mirror and cached as
//! tarballs under $CARGO_HOME/allowlist-test-roots/, so that only the first run
//! downloads (about a minute per release). The test extracts a fresh copy for every
//! run and boots it with systemd-nspawn; nothing here starts a service on the host.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::setup::{Recommends, apt_install, cargo_home, run};

/// The Debian releases the test boots, with the systemd each brings: 12 (252) and
/// 13 (257).
const RELEASES: &[&str] = &["bookworm", "trixie"];

/// What a root filesystem holds beyond `minbase` (which brings apt and dpkg): an init
/// to boot, `ip` for the agent's interface, and D-Bus, which systemctl talks over.
const PACKAGES: &str = "systemd,systemd-sysv,iproute2,dbus";

/// The directory of the cached tarballs; the test reads `<release>.tar` from it.
fn cache_dir() -> PathBuf {
    cargo_home().join("allowlist-test-roots")
}

/// Installs systemd-nspawn and mmdebstrap, and makes the root filesystem of every
/// release that is missing or was made with other arguments than today's.
pub(crate) fn ensure() -> Result<()> {
    apt_install(&["systemd-container", "mmdebstrap"], Recommends::Skip)?;
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for release in RELEASES {
        let tarball = dir.join(format!("{release}.tar"));
        // The arguments it was made with, beside it: other arguments, another tarball.
        let stamp = dir.join(format!("{release}.args"));
        let args = [
            "--variant=minbase".to_owned(),
            // A tarball, whatever the output's name says.
            "--format=tar".to_owned(),
            format!("--include={PACKAGES}"),
            (*release).to_owned(),
        ];
        let wanted = args.join(" ");
        if tarball.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&*wanted) {
            continue;
        }
        eprintln!(
            "setup: making a Debian {release} root filesystem with systemd for the systemd test (mmdebstrap, about a minute)"
        );
        let partial = dir.join(format!("{release}.tar.partial"));
        let _ = std::fs::remove_file(&partial);
        run(
            Command::new("mmdebstrap")
                .arg("--quiet")
                .args(&args)
                .arg(&partial),
            "mmdebstrap",
        )?;
        std::fs::rename(&partial, &tarball)
            .with_context(|| format!("moving {} into place", partial.display()))?;
        std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    }
    Ok(())
}
