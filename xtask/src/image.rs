//! `cargo xtask image`: the agent's OCI image, built by podman without network access,
//! `FROM scratch`: the release binary (with its embedded XDP program), exactly the
//! shared libraries `ldd` lists for it and the dynamic loader, nothing else. Tagged
//! `localhost/allowlist:<version>` in the machine's podman store, and saved as an OCI
//! archive (target/image/allowlist-<version>.oci.tar) for `podman load`,
//! `ctr -n k8s.io images import` or `kind load image-archive`.
//!
//! No CA bundle: the agent verifies providers with the webpki roots compiled into it
//! (reqwest's `rustls-tls`), or with a source's own `ca_file`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::setup::{self, Recommends};

/// The image's name; the DaemonSet and the kustomization name it with the version.
pub(crate) const REPOSITORY: &str = "localhost/allowlist";

/// What podman runs with, from Debian: conmon, the OCI runtime, the containers
/// configuration (seccomp profile, policy.json) and podman's libraries. None of their
/// maintainer scripts enables or starts a service (containernetworking-plugins, pulled
/// in by the configuration, only re-enables units an administrator enabled before).
/// runc rather than crun: Debian 12's crun refuses hosts whose cgroup v2 hierarchy
/// sits beside v1 controllers (hybrid mode), and runc is what containerd runs
/// Kubernetes pods with.
const APT_PACKAGES: &[&str] = &[
    "conmon",
    "runc",
    "golang-github-containers-common",
    "libgpgme11",
    "libsubid4",
    "libdevmapper1.02.1",
    "libseccomp2",
];

/// Debian's podman package enables podman.socket, podman-restart.service and
/// podman-auto-update.timer on install, and starts them under systemd: it is never
/// installed. `podman` itself is taken out of it, as promtool is out of prometheus.
const PODMAN_PACKAGE: &str = "podman";

/// podman (on PATH, or taken out of Debian's package into $CARGO_HOME/bin) and what
/// it runs with. Idempotent.
pub(crate) fn ensure_tools() -> Result<()> {
    setup::apt_install(APT_PACKAGES, Recommends::Skip)?;
    let podman = setup::cargo_home().join("bin").join("podman");
    if setup::on_path("podman") || podman.is_file() {
        return Ok(());
    }
    eprintln!(
        "image: extracting podman from Debian's {PODMAN_PACKAGE} package (no install scripts, no service)"
    );
    setup::extract_from_deb(PODMAN_PACKAGE, "usr/bin/podman", &podman)
}

/// Builds the image and its archive, and prints the tag and the archive's path last.
pub(crate) fn run() -> Result<()> {
    if !setup::is_root() {
        bail!("podman builds the image as root: run `sudo -E cargo xtask image`");
    }
    ensure_tools()?;
    super::step("release build of the agent (with its XDP program)");
    super::cargo(&["build", "--release", "--package", "allowlist-user"])?;
    let target =
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned()));
    let target = fs::canonicalize(&target).with_context(|| format!("{}", target.display()))?;
    let binary = target.join("release").join("allowlist");
    let version = version(&binary)?;
    let tag = format!("{REPOSITORY}:{version}");

    super::step(&format!("image {tag} (podman, from scratch, no network)"));
    let dir = target.join("image");
    let context = dir.join("context");
    let _ = fs::remove_dir_all(&context);
    let rootfs = context.join("rootfs");
    let files = stage(&binary, &rootfs)?;
    for file in &files {
        eprintln!("  {}", file.display());
    }
    fs::write(context.join("Containerfile"), containerfile(&version))?;

    let previous = image_id(&tag);
    let mut build = Command::new("podman");
    build
        .args(["build", "--pull=never", "--network=none", "--layers=false"])
        .args(["--file", "Containerfile", "--tag", &tag])
        .current_dir(&context);
    // The last commit's time on the files and as the creation time: the same binary
    // gives the same image ID.
    if let Some(epoch) = commit_time() {
        build.args(["--timestamp", &epoch]);
    }
    setup::run(build.arg("."), "podman build")?;
    let id = image_id(&tag).context("podman build left no image")?;
    if let Some(old) = previous.filter(|old| *old != id) {
        // Untagged by this build; kept if a container still uses it.
        let _ = Command::new("podman").args(["rmi", &old]).output();
    }

    let archive = dir.join(format!("allowlist-{version}.oci.tar"));
    let _ = fs::remove_file(&archive);
    setup::run(
        Command::new("podman")
            .args(["save", "--quiet", "--format", "oci-archive", "--output"])
            .arg(&archive)
            .arg(&tag),
        "podman save",
    )?;
    let size = fs::metadata(&archive)?.len();
    eprintln!(
        "image {tag} ({}), archive {:.1} MB:",
        &id[..12.min(id.len())],
        size as f64 / 1e6
    );
    eprintln!("{tag}");
    eprintln!("{}", archive.display());
    Ok(())
}

/// `allowlist --version` of the binary: "allowlist <version>".
fn version(binary: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().strip_prefix("allowlist ") {
        Some(v) if out.status.success() && !v.is_empty() => Ok(v.to_owned()),
        _ => bail!("{} --version printed {text:?}", binary.display()),
    }
}

/// Copies the binary to rootfs/usr/bin and every library `ldd` resolves for it,
/// the loader included, to the same path under rootfs; returns the image's files.
fn stage(binary: &Path, rootfs: &Path) -> Result<Vec<PathBuf>> {
    let mut files = vec![PathBuf::from("/usr/bin/allowlist")];
    files.extend(linked_libraries(binary)?);
    for file in &files {
        let from = if file == Path::new("/usr/bin/allowlist") {
            binary
        } else {
            file.as_path()
        };
        let to = rootfs.join(file.strip_prefix("/").expect("absolute"));
        fs::create_dir_all(to.parent().expect("a parent"))?;
        // Follows symlinks: the image gets the files themselves, at the linked names.
        fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(files)
}

/// The absolute paths `ldd` prints for `binary`: each `name => /path (addr)` and the
/// loader's `/path (addr)`; the vDSO has none. Nothing for a static binary.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if text.contains("statically linked") || stderr.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), stderr.trim());
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("ldd {}: {line}", binary.display());
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    if libraries.is_empty() {
        bail!("ldd {} listed no library: {text}", binary.display());
    }
    Ok(libraries)
}

fn containerfile(version: &str) -> String {
    format!(
        r#"# Written by `cargo xtask image`; rootfs/ holds the agent, the libraries it links
# and the loader.
FROM scratch
COPY rootfs/ /
LABEL org.opencontainers.image.title="allowlist" \
      org.opencontainers.image.description="XDP source-IP allowlist filter and its agent" \
      org.opencontainers.image.version="{version}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
ENTRYPOINT ["/usr/bin/allowlist"]
CMD ["run"]
"#
    )
}

fn image_id(tag: &str) -> Option<String> {
    let out = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !id.is_empty()).then_some(id)
}

fn commit_time() -> Option<String> {
    let out = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .output()
        .ok()?;
    let epoch = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && epoch.parse::<u64>().is_ok()).then_some(epoch)
}
