//! Installs what building and testing the XDP program needs, following
//! ../shared/TOOLCHAIN.md: Debian's rustc 1.96 with its matching core sources (the
//! machine's rustup toolchains carry no rust-src and can't download one), bpf-linker
//! built against the same LLVM 22, and a rustup link to Debian's compiler. Each step
//! checks before it installs, so a second run takes a moment.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

pub(crate) const BPF_TOOLCHAIN: &str = "bpf-debian";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// Debian packages that building and running need: the BPF compiler pair and LLVM for
/// bpf-linker, clippy for the eBPF crate, bpftool to inspect the pins, iproute2 for
/// the demo's namespaces. None of them starts a service.
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "rust-web-clippy",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "iproute2",
];

/// The Debian package that carries `promtool`, which the alert-rule tests need. It
/// also carries a Prometheus server that its install scripts enable and start, so it
/// is never installed: `promtool` (a static binary) is taken out of the package.
const PROMTOOL_PACKAGE: &str = "prometheus";

pub(crate) fn ensure() -> Result<()> {
    put_cargo_bin_on_path();
    apt_packages()?;
    bpf_linker()?;
    toolchain_link()?;
    Ok(())
}

/// What only the tests need, on top of [`ensure`]: `promtool`, extracted from
/// Debian's package without running its install scripts (so no service is enabled or
/// started) into $CARGO_HOME/bin; `kubernetes-validate` with the Kubernetes API
/// schemas, in a virtualenv of its own; the systemd test's nspawn and Debian root
/// filesystems ([`crate::machines::ensure`]); and the image test's podman and runc
/// ([`crate::image::ensure_tools`]). cargo-deb comes with `cargo xtask package`.
pub(crate) fn ensure_test_tools() -> Result<()> {
    let promtool = cargo_home().join("bin").join("promtool");
    if !on_path("promtool") && !promtool.is_file() {
        eprintln!(
            "setup: extracting promtool from Debian's {PROMTOOL_PACKAGE} package (no install scripts, no service)"
        );
        extract_from_deb(PROMTOOL_PACKAGE, "usr/bin/promtool", &promtool)?;
    }
    kubernetes_validate()?;
    crate::machines::ensure()?;
    crate::image::ensure_tools()
}

/// The `kubernetes-validate` release whose bundled schemas the deployment test uses.
pub(crate) const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// `kubernetes-validate` from PyPI, pinned, in a virtualenv under $CARGO_HOME (never
/// the system's Python), linked as $CARGO_HOME/bin/kubernetes-validate.
fn kubernetes_validate() -> Result<()> {
    let link = cargo_home().join("bin").join("kubernetes-validate");
    // `--version` prints the version alone.
    let current = Command::new(&link)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if current.as_deref() == Some(KUBERNETES_VALIDATE_VERSION) {
        return Ok(());
    }
    eprintln!(
        "setup: installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} (PyPI) in a virtualenv under $CARGO_HOME"
    );
    let venv = cargo_home()
        .join("venvs")
        .join(format!("kubernetes-validate-{KUBERNETES_VALIDATE_VERSION}"));
    let _ = std::fs::remove_dir_all(&venv);
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!(
                "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
            )),
        "pip install kubernetes-validate",
    )?;
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(venv.join("bin/kubernetes-validate"), &link)
        .with_context(|| format!("linking {}", link.display()))
}

/// Copies `member` (a path inside the package, such as `usr/bin/promtool`) out of
/// Debian's `package` to `target`, executable, without installing the package: its
/// maintainer scripts never run.
pub(crate) fn extract_from_deb(package: &str, member: &str, target: &Path) -> Result<()> {
    let dir = env::temp_dir().join(format!("allowlist-deb-{package}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = extract_into(&dir, package, member, target);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn extract_into(dir: &Path, package: &str, member: &str, target: &Path) -> Result<()> {
    let download = || {
        Command::new("apt-get")
            .args(["download", package])
            .current_dir(dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !download() {
        if !is_root() {
            bail!("cannot download Debian's {package} package (apt-get update needs root)");
        }
        apt_update()?;
        if !download() {
            bail!("apt-get download {package} failed");
        }
    }
    let deb = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = dir.join("tree");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree),
        "dpkg-deb -x",
    )?;
    let file = tree.join(member);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(&file, target)
        .with_context(|| format!("copying {} to {}", file.display(), target.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// `cargo install` puts bpf-linker in $CARGO_HOME/bin; the eBPF build finds it on PATH.
fn put_cargo_bin_on_path() {
    let bin = cargo_home().join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined =
        env::join_paths(std::iter::once(bin).chain(env::split_paths(&path))).expect("PATH entries");
    // SAFETY: xtask is single-threaded at this point.
    unsafe { env::set_var("PATH", joined) };
}

fn apt_packages() -> Result<()> {
    apt_install(APT_PACKAGES, Recommends::Install)
}

/// Whether `apt-get install` also installs the packages' recommendations.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recommends {
    Install,
    Skip,
}

/// Installs those of `packages` that are missing (apt-get update first).
pub(crate) fn apt_install(packages: &[&str], recommends: Recommends) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    if !is_root() {
        bail!(
            "these packages are missing and installing them needs root: apt-get install -y {}",
            missing.join(" ")
        );
    }
    apt_update()?;
    let mut install = Command::new("apt-get");
    install.args(["install", "-y"]);
    if recommends == Recommends::Skip {
        install.arg("--no-install-recommends");
    }
    run(
        install
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )?;
    let still: Vec<&str> = missing.into_iter().filter(|p| !dpkg_installed(p)).collect();
    if !still.is_empty() {
        bail!("apt-get did not install {}", still.join(" "));
    }
    Ok(())
}

fn apt_update() -> Result<()> {
    run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get update",
    )
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
}

fn bpf_linker() -> Result<()> {
    let installed = cargo_home().join("bin").join("bpf-linker");
    if on_path("bpf-linker") || installed.is_file() {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    let path = env::join_paths(
        std::iter::once(PathBuf::from(LLVM_BIN))
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run(
        Command::new(cargo)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path),
        "cargo install bpf-linker",
    )
}

fn toolchain_link() -> Result<()> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with(BPF_TOOLCHAIN))
    {
        return Ok(());
    }
    eprintln!("setup: linking Debian's rustc as the rustup toolchain {BPF_TOOLCHAIN}");
    run(
        Command::new("rustup").args(["toolchain", "link", BPF_TOOLCHAIN, "/usr"]),
        "rustup toolchain link",
    )
}

pub(crate) fn on_path(name: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|p| env::split_paths(&p).any(|d| Path::new(&d).join(name).is_file()))
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
