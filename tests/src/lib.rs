//! End-to-end test support: network namespaces, real TCP traffic, the real agent
//! binary, a local HTTPS provider server, a CONNECT proxy and a DNS server.
#![cfg_attr(
    test,
    allow(
        unused_crate_dependencies,
        reason = "the dev-dependencies serve the integration tests"
    )
)]

pub mod connect_proxy;
pub mod dns_server;
pub mod netns;
pub mod provider_server;
pub mod world;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The repository of the image `cargo xtask image` builds, tagged with the version;
/// the DaemonSet and the kustomization name it.
pub const IMAGE_REPOSITORY: &str = "localhost/allowlist";

/// The image `cargo xtask image` builds from this version of the agent.
pub fn image_tag() -> String {
    format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// A tool on PATH, or where `cargo xtask test` installs the tools it takes out of
/// Debian's or PyPI's packages ($CARGO_HOME/bin).
pub fn tool(name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }) {
        return Some(path);
    }
    Some(cargo_home().join("bin").join(name)).filter(|p| p.is_file())
}

/// $CARGO_HOME, where `cargo xtask test` keeps the tools and root filesystems it
/// installs or makes.
pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// Makes `cmd` run as user and group nobody (65534), as a local user without rights.
pub fn as_nobody(cmd: &mut Command) -> &mut Command {
    // SAFETY: setgid/setuid are async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Runs `cmd` to completion; panics if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs `cargo xtask ARGS` in the repository, as the README's commands do; panics
/// with its output if it fails, and prints how long it took. Its stderr is what the
/// task printed (its results' paths last).
pub fn xtask(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let started = std::time::Instant::now();
    let out = run(Command::new(cargo)
        .arg("xtask")
        .args(args)
        .current_dir(repo()));
    assert!(
        out.status.success(),
        "cargo xtask {}: {}",
        args.join(" "),
        describe(&out)
    );
    eprintln!(
        "cargo xtask {}: {:.1} s",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A process's exit status and output, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
