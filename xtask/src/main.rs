//! Project tasks that a build script can't do: toolchain set-up, tests that need root
//! and network namespaces, the demo, benchmarks, the Debian package and the image.
//!
//! Every command runs `setup` first, so a fresh machine of this kind needs nothing but
//! `cargo xtask <command>`.

mod bench;
mod image;
#[cfg(test)]
mod layout;
mod machines;
mod package;
mod setup;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "allowlist project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the XDP program needs (idempotent).
    Setup,
    /// Build the agent with its embedded XDP program.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Clippy on the host crates and on the eBPF crate, warnings denied.
    Clippy,
    /// Every test: host unit tests, clippy, verdict tests, end-to-end tests (needs root).
    Test {
        /// Skip the end-to-end network-namespace tests.
        #[arg(long)]
        no_e2e: bool,
    },
    /// Build the Debian package (target/debian/allowlist_<version>_<arch>.deb).
    Package {
        /// The package's version instead of the crate's (`0.1.0-2`, say: the systemd
        /// test upgrades to the same build under a higher version).
        #[arg(long, value_name = "VERSION")]
        deb_version: Option<String>,
    },
    /// Build the OCI image `localhost/allowlist:<version>` with podman, from scratch
    /// and without network, and save it as target/image/allowlist-<version>.oci.tar
    /// (needs root).
    Image,
    /// Benchmarks (needs root): decision cost per packet beside an empty program and
    /// the textbook filter, refresh costs, agent memory; writes target/bench/results.md.
    Bench {
        /// Passed to the benchmark binary (`cargo xtask bench -- --help` lists them).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The agent on its built-in demo, in a sandbox of network namespaces (needs root).
    Demo,
    /// Build the agent with its XDP program and run it with the privileges it needs
    /// (through `sudo -E` unless root), as aya-template's runner does:
    /// `cargo xtask run -- --config deploy/allowlist.example.toml run`.
    Run {
        /// The agent's arguments.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli.command) {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> Result<()> {
    setup::ensure()?;
    match task {
        Task::Setup => Ok(()),
        Task::Build { release } => {
            let mut args = vec!["build", "--package", "allowlist-user"];
            if release {
                args.push("--release");
            }
            cargo(&args)
        }
        Task::Clippy => clippy(),
        Task::Test { no_e2e } => test(no_e2e),
        Task::Package { deb_version } => package::run(deb_version.as_deref()).map(|_| ()),
        Task::Image => image::run(),
        Task::Bench { args } => bench::run(&args),
        Task::Demo => demo(),
        Task::Run { args } => run_agent(&args),
    }
}

fn test(no_e2e: bool) -> Result<()> {
    setup::ensure_test_tools()?;
    step("host unit tests");
    cargo(&["test", "--package", "allowlist-common"])?;
    cargo(&["test", "--package", "xtask"])?;
    cargo(&["test", "--package", "allowlist-user", "--lib", "--bins"])?;
    cargo(&["test", "--package", "allowlist-user", "--test", "fetch"])?;
    // Prints the real documents' parse and load times (or why they were skipped).
    cargo(&[
        "test",
        "--package",
        "allowlist-user",
        "--test",
        "presets",
        "--",
        "--nocapture",
    ])?;
    cargo(&["test", "--package", "allowlist-user", "--test", "dns"])?;
    // Its own binary: it sets HTTPS_PROXY and NO_PROXY for the whole process.
    cargo(&["test", "--package", "allowlist-user", "--test", "proxy_env"])?;
    step("clippy");
    clippy()?;
    require_root("the verdict and end-to-end tests load XDP programs")?;
    step("verdict tests (BPF_PROG_TEST_RUN)");
    cargo(&[
        "test",
        "--package",
        "allowlist-user",
        "--test",
        "verdict",
        "--",
        "--nocapture",
    ])?;
    if !no_e2e {
        step("end-to-end tests (network namespaces, real traffic)");
        // The tests drive the real binary, built beside them.
        cargo(&["build", "--package", "allowlist-user"])?;
        cargo(&["test", "--package", "allowlist-tests"])?;
    }
    step("all tests passed");
    Ok(())
}

fn clippy() -> Result<()> {
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "allowlist-ebpf",
        "--exclude",
        "allowlist-bench-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The eBPF crate separately, for the BPF target with Debian's toolchain: feature
    // unification with the host crates would otherwise drag std into it.
    let status = Command::new("rustup")
        .args([
            "run",
            setup::BPF_TOOLCHAIN,
            "cargo",
            "clippy",
            "--package",
            "allowlist-ebpf",
            "--package",
            "allowlist-bench-ebpf",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
        ])
        .args(["--target-dir", "target/bpf-clippy", "--", "-D", "warnings"])
        .env("RUSTC_BOOTSTRAP", "1")
        .status()
        .context("running clippy on the eBPF crate")?;
    if !status.success() {
        bail!("clippy on the eBPF crates failed");
    }
    Ok(())
}

fn run_agent(args: &[String]) -> Result<()> {
    cargo(&["build", "--package", "allowlist-user"])?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    let binary = format!("{target}/debug/allowlist");
    let mut command = if setup::is_root() {
        Command::new(&binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&binary);
        sudo
    };
    command.args(args);
    // Ctrl-C goes to the agent (a SIGINT stops it, leaving the filter pinned); xtask
    // waits for it.
    // SAFETY: ignoring SIGINT in this process only.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = command
        .status()
        .with_context(|| format!("starting {binary}"))?;
    if !status.success() {
        bail!("allowlist {} exited with {status}", args.join(" "));
    }
    Ok(())
}

fn demo() -> Result<()> {
    require_root("the demo creates network namespaces and attaches XDP")?;
    step("building the agent and the demo (release)");
    cargo(&["build", "--release", "--package", "allowlist-user"])?;
    cargo(&[
        "build",
        "--release",
        "--package",
        "allowlist-tests",
        "--bin",
        "allowlist-demo",
    ])?;
    step("demo");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    let mut child = Command::new(format!("{target}/release/allowlist-demo"))
        .env("ALLOWLIST_BIN", format!("{target}/release/allowlist"))
        .spawn()
        .context("starting the demo")?;
    // Ctrl-C reaches the demo too; it cleans up its sandbox and exits. xtask waits.
    // SAFETY: ignoring SIGINT in this process only; the demo installs its own handler.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = child.wait().context("waiting for the demo")?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}

/// Runs the cargo that runs xtask, so that the same toolchain builds everything.
fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn require_root(why: &str) -> Result<()> {
    if !setup::is_root() {
        bail!("{why}: run as root (for example `sudo -E cargo xtask test`)");
    }
    Ok(())
}
