//! The Debian package as hosts run it: installed with `apt-get install ./*.deb` into a
//! booted Debian 12 (systemd 252) and Debian 13 (systemd 257), then `systemctl enable
//! --now allowlist` with the shipped unit, and real TCP from a client namespace.
//!
//! Each machine is a fresh copy of the root filesystem that `cargo xtask test` makes
//! with mmdebstrap and caches under $CARGO_HOME/allowlist-test-roots/, booted by
//! systemd-nspawn in the server namespace of a test [`World`] (so the agent inside
//! filters the veth that the client's connections cross, to the test's listeners on
//! :443 and :80), with a bpffs of the test's own as its /sys/fs/bpf. The steps: start,
//! the running sandbox, reload with a new port, restart and `kill -9` (the filter keeps
//! enforcing), stop (still enforcing), an upgrade under a connecting client, remove
//! (detached), purge (nothing left), and the journal's priorities. `allowlist status`
//! inside the machine is checked against the traffic at each step. Needs root. The
//! machine, its bpffs, the namespaces and the copies are removed even when the test
//! fails; nothing runs on the host's systemd.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use allowlist_tests::{
    cargo_home, describe,
    netns::require_root,
    provider_server::{ProviderServer, Response},
    repo, run,
    world::{
        CLIENT_A, CLIENT_A6, CLIENT_B, CLIENT_B6, DOCUMENT_PATH, World, intercom_document,
        provider_toml, wait_until,
    },
    xtask,
};

const UNIT: &str = "allowlist.service";
const CONFIG: &str = "/etc/allowlist/allowlist.toml";
/// The test provider's CA, where operators keep a private CA: not in /etc/allowlist,
/// whose files a purge must remove, and readable under `ProtectHome=`.
const CA_FILE: &str = "/usr/local/share/ca-certificates/allowlist-test-provider.crt";
/// The agent's defaults, which the package's unit and scripts rely on.
const STATE_DIR: &str = "/var/lib/allowlist";
const PIN_DIR: &str = "/sys/fs/bpf/allowlist";
/// `systemd-analyze security` rates the shipped unit 2.4; this is the most it may.
const MAX_EXPOSURE: f64 = 2.5;
/// The capabilities the unit grants (README): no CAP_SYS_ADMIN.
const CAPABILITIES: [&str; 4] = [
    "CAP_BPF",
    "CAP_NET_ADMIN",
    "CAP_PERFMON",
    "CAP_SYS_RESOURCE",
];

// ---------------------------------------------------------------------------------
// The packages.

/// The package `cargo xtask package` builds from this tree, and the same build again
/// under a higher Debian version, to upgrade to. Held in memory: cargo-deb deletes
/// the previous package when it makes the next.
struct Packages {
    current: Vec<u8>,
    newer: Vec<u8>,
    newer_version: String,
}

fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        let newer_version = format!("{}-2", env!("CARGO_PKG_VERSION"));
        Packages {
            current: package(&[]),
            newer: package(&["--deb-version", &newer_version]),
            newer_version,
        }
    })
}

/// `cargo xtask package <args>`: the package it made (its path is printed last).
fn package(args: &[&str]) -> Vec<u8> {
    let stderr = xtask(&[&["package"], args].concat());
    let deb = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("cargo xtask package named no .deb:\n{stderr}"));
    std::fs::read(deb).unwrap_or_else(|e| panic!("{deb}: {e}"))
}

// ---------------------------------------------------------------------------------
// A booted machine.

/// A Debian release that `cargo xtask test` caches a root filesystem of.
struct Release {
    name: &'static str,
    systemd: u32,
}

/// A booted copy of a release's root filesystem, in the server namespace of a world.
/// Dropping it kills the machine, unmounts its bpffs and deletes the copy.
struct Machine {
    release: &'static Release,
    dir: tempfile::TempDir,
    nspawn: Child,
    /// The machine's init, as the host sees it.
    leader: i32,
    /// The cgroups the machine runs in, one per hierarchy systemd uses.
    cgroups: Vec<PathBuf>,
}

impl Machine {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn bpffs(dir: &Path) -> PathBuf {
        dir.join("bpf")
    }

    fn boot(release: &'static Release, world: &World) -> Machine {
        let tarball = cargo_home()
            .join("allowlist-test-roots")
            .join(format!("{}.tar", release.name));
        assert!(
            tarball.is_file(),
            "{} is missing: `cargo xtask test` makes it (mmdebstrap)",
            tarball.display()
        );
        let parent = repo().join("target").join("systemd-test");
        std::fs::create_dir_all(&parent).expect("target/systemd-test");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-{}-", release.name, world.id))
            .tempdir_in(&parent)
            .expect("machine dir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("root dir");
        let out = run(Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-xf")
            .arg(&tarball));
        assert!(out.status.success(), "tar -x: {}", describe(&out));
        // A bpffs of the test's own, seen by the machine as its /sys/fs/bpf (Debian 13
        // has no mount point for one in a container; 12 would let us mount it inside).
        let bpf = Self::bpffs(dir.path());
        std::fs::create_dir(&bpf).expect("bpf dir");
        let out = run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpf));
        assert!(out.status.success(), "mount bpffs: {}", describe(&out));
        let console = std::fs::File::create(dir.path().join("console.log")).expect("console log");
        // With no systemd on the host, nspawn's machine lives in the cgroup nspawn was
        // started in. Two machines in one cgroup manage one tree: one's
        // `systemctl stop` kills the other's allowlist.service (which then fails to
        // start, 219/CGROUP). So each machine gets cgroups of its own, joined by the
        // shell that then becomes systemd-nspawn.
        let cgroups = own_cgroups(&format!("allowlist-test-{}-{}", release.name, world.id));
        let join: String = (cgroups.iter())
            .map(|cg| format!("echo $$ > {}/cgroup.procs && ", cg.display()))
            .collect();
        let nspawn = Command::new("sh")
            .arg("-c")
            .arg(format!("{join}exec systemd-nspawn \"$@\""))
            .arg("sh")
            .args(["--quiet", "--keep-unit", "--register=no", "--boot"])
            .arg(format!("--machine={}-{}", release.name, world.id))
            .arg("--directory")
            .arg(&root)
            .arg(format!(
                "--network-namespace-path={}",
                world.server.path().display()
            ))
            .arg("--capability=all")
            .arg("--system-call-filter=bpf perf_event_open")
            .arg(format!("--bind={}:/sys/fs/bpf", bpf.display()))
            .arg("--console=pipe")
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("console log"))
            .stderr(console)
            .spawn()
            .expect("start systemd-nspawn (cargo xtask test installs systemd-container)");
        let mut machine = Machine {
            release,
            dir,
            nspawn,
            leader: 0,
            cgroups,
        };
        machine.leader = machine.find_leader();
        // Until systemd listens on its socket, systemctl cannot ask; then `--wait`
        // waits for the boot to finish.
        let mut state = String::new();
        let answered = wait_until(Duration::from_secs(60), || {
            let out = machine.exec(&["systemctl", "is-system-running", "--wait"]);
            state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            !state.is_empty()
        });
        assert!(
            answered,
            "{}: systemd did not answer within 60 s\n{}",
            release.name,
            machine.console()
        );
        // Debian 13's systemd-modules-load fails in a container (no modules to load);
        // nothing else may.
        let failed = machine.ok(&[
            "systemctl",
            "list-units",
            "--failed",
            "--plain",
            "--no-legend",
        ]);
        let failed: Vec<&str> = failed
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|u| *u != "systemd-modules-load.service")
            .collect();
        assert!(
            (state == "running" || state == "degraded") && failed.is_empty(),
            "{}: the system is {state:?}, failed units {failed:?}\n{}",
            release.name,
            machine.console()
        );
        machine
    }

    /// The machine's init: the child of systemd-nspawn running systemd.
    fn find_leader(&mut self) -> i32 {
        let nspawn = self.nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let children =
                std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
                    .unwrap_or_default();
            let init = children.split_whitespace().find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "systemd")
            });
            if let Some(pid) = init {
                return pid.parse().expect("a pid");
            }
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({status}):\n{}", self.console());
            }
            assert!(
                Instant::now() < deadline,
                "no systemd under systemd-nspawn after 30 s:\n{}",
                self.console()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Runs `args` inside the machine (its mount, UTS, IPC, network and PID
    /// namespaces, its root), with a clean environment.
    fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("nsenter")
            .arg("--target")
            .arg(self.leader.to_string())
            .args([
                "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd=/",
            ])
            .args(["--", "/usr/bin/env", "-i"])
            .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("LANG=C.UTF-8")
            .args(args))
    }

    /// [`Self::exec`] that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{}: {args:?}: {}\njournal:\n{}",
            self.release.name,
            describe(&out),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a file inside the machine.
    fn write(&self, path: &str, contents: impl AsRef<[u8]>) {
        let host = self.root().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(host.parent().expect("a parent")).expect("create the parent");
        std::fs::write(&host, contents).unwrap_or_else(|e| panic!("{}: {e}", host.display()));
    }

    fn exists(&self, path: &str) -> bool {
        self.exec(&["test", "-e", path]).status.success()
    }

    /// The unit's journal since boot, for failure messages.
    fn journal(&self) -> String {
        let out = self.exec(&["journalctl", "--no-pager", "-b", "-u", UNIT]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `allowlist status --json` inside the machine.
    fn status(&self) -> serde_json::Value {
        let out = self.ok(&["allowlist", "status", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"))
    }

    /// A `systemctl show` property of the unit.
    fn property(&self, name: &str) -> String {
        self.ok(&["systemctl", "show", "--value", "-p", name, UNIT])
            .trim()
            .to_owned()
    }

    /// The agent's pid inside the machine, per systemd (0: none).
    fn main_pid(&self) -> u32 {
        self.property("MainPID").parse().expect("MainPID")
    }

    /// Waits until the unit is active with a main process other than `not`, and its
    /// agent has written a status with that pid.
    fn wait_active(&self, not: u32, what: &str) -> u32 {
        let mut pid = 0;
        let came_back = wait_until(Duration::from_secs(60), || {
            pid = self.main_pid();
            pid != 0
                && pid != not
                && self.property("ActiveState") == "active"
                && self.status()["agent"]["pid"].as_u64() == Some(u64::from(pid))
        });
        assert!(
            came_back,
            "{}: {what}: the service is not active again within 60 s\njournal:\n{}",
            self.release.name,
            self.journal()
        );
        pid
    }

    /// Unit state and `allowlist status` agree with a running, enforcing agent on
    /// `interface` protecting `ports`.
    fn assert_running(&self, interface: &str, ports: &[u16], what: &str) -> serde_json::Value {
        let status = self.status();
        let pid = self.main_pid();
        let context = format!("{}: {what}: {status:#}", self.release.name);
        assert_eq!(self.property("ActiveState"), "active", "{context}");
        assert_eq!(
            status["agent_pid"].as_u64(),
            Some(u64::from(pid)),
            "{context}"
        );
        assert_eq!(
            status["attached"],
            serde_json::json!([interface]),
            "{context}"
        );
        assert_eq!(status["agent"]["mode"], "enforce", "{context}");
        assert_eq!(
            status["agent"]["ports"],
            serde_json::json!(ports),
            "{context}"
        );
        status
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.leader > 0 {
            // SAFETY: kill has no memory-safety preconditions; the pid is the
            // machine's init, a descendant of this process.
            unsafe { libc::kill(self.leader, libc::SIGKILL) };
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        let bpf = Self::bpffs(self.dir.path());
        let out = run(Command::new("umount").arg(&bpf));
        if !out.status.success() {
            eprintln!("umount {}: {}", bpf.display(), describe(&out));
        }
        for cgroup in &self.cgroups {
            remove_cgroup(cgroup);
        }
    }
}

/// A new cgroup named `name` in each hierarchy systemd uses here: the unified one,
/// and on a hybrid host also the named `systemd` one.
fn own_cgroups(name: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let hierarchies = if base.join("cgroup.procs").exists() {
        vec![base.to_owned()]
    } else {
        ["systemd", "unified"]
            .iter()
            .map(|h| base.join(h))
            .filter(|h| h.join("cgroup.procs").exists())
            .collect()
    };
    assert!(
        !hierarchies.is_empty(),
        "no cgroup hierarchy under {}",
        base.display()
    );
    hierarchies
        .into_iter()
        .map(|h| {
            let cgroup = h.join(name);
            std::fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("{}: {e}", cgroup.display()));
            cgroup
        })
        .collect()
}

/// Removes a cgroup and what the machine's systemd made under it, deepest first
/// (a cgroup empties a moment after its last process is reaped).
fn remove_cgroup(cgroup: &Path) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut pending = vec![cgroup.to_owned()];
    while let Some(dir) = pending.pop() {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        dirs.push(dir);
    }
    for dir in dirs.iter().rev() {
        let removed = wait_until(Duration::from_secs(10), || {
            std::fs::remove_dir(dir).is_ok() || !dir.exists()
        });
        if !removed {
            eprintln!("cannot remove the cgroup {}", dir.display());
        }
    }
}

// ---------------------------------------------------------------------------------
// Traffic.

fn packets(status: &serde_json::Value, reason: &str, action: &str) -> u64 {
    status["counters"]["packets"][reason][action]
        .as_u64()
        .unwrap_or(0)
}

/// Listed sources get in on `port`, over IPv4 and IPv6; unlisted ones time out.
fn assert_filtering(world: &World, port: u16, what: &str) {
    for src in [IpAddr::V4(CLIENT_A), IpAddr::V6(CLIENT_A6)] {
        if let Err(e) = world.exchange(src, port) {
            panic!("{what}: {src} is listed and must get in on :{port}: {e}");
        }
    }
    for src in [IpAddr::V4(CLIENT_B), IpAddr::V6(CLIENT_B6)] {
        match world.exchange(src, port) {
            Ok(()) => panic!("{what}: {src} is not listed and got in on :{port}"),
            Err(e) => assert!(
                e.contains("timed out"),
                "{what}: {src}: expected a timeout, got {e}"
            ),
        }
    }
}

/// Everyone gets in on `port`: nothing filters it.
fn assert_open(world: &World, port: u16, what: &str) {
    for src in [
        IpAddr::V4(CLIENT_A),
        IpAddr::V4(CLIENT_B),
        IpAddr::V6(CLIENT_B6),
    ] {
        if let Err(e) = world.exchange(src, port) {
            panic!("{what}: {src} must reach the unprotected :{port}: {e}");
        }
    }
}

/// Runs `step` while a listed client connects in a loop; panics on any failure.
fn with_listed_client(world: &World, what: &str, step: impl FnOnce()) {
    let client = world.client_loop(IpAddr::V4(CLIENT_A), 443);
    step();
    // A few more connections after the step, through whatever it left.
    let after = client.successes() + 20;
    assert!(
        wait_until(Duration::from_secs(20), || client.successes() >= after),
        "{what}: the listed client stopped connecting"
    );
    let (ok, failed) = client.finish();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} connections of the listed client failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    eprintln!("{what}: {ok} connections of the listed client, none failed");
}

// ---------------------------------------------------------------------------------
// The test.

/// The config an operator writes: the world's interface, :443, a provider whose list
/// selects CLIENT_A's ranges, and one whose document is gone (a failing source).
fn config(world: &World, provider: &ProviderServer, ports: &[u16]) -> String {
    let ca = provider.ca_file().display().to_string();
    let partner = provider_toml("partner", provider).replace(&ca, CA_FILE);
    let gone = provider_toml("gone", provider)
        .replace(&ca, CA_FILE)
        .replace(DOCUMENT_PATH, "/gone.json");
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "interfaces = [\"{}\"]\nports = [{}]\n{partner}\n{gone}\n",
        world.server_if,
        ports.join(", ")
    )
}

fn installed_version(machine: &Machine) -> String {
    machine
        .ok(&["dpkg-query", "-W", "-f=${Version}", "allowlist"])
        .trim()
        .to_owned()
}

/// A capability set of the agent process (`CapEff`, `CapBnd`, ...) as a mask.
fn capabilities(machine: &Machine, pid: u32, field: &str) -> u64 {
    let status = machine.ok(&["cat", &format!("/proc/{pid}/status")]);
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    u64::from_str_radix(hex.trim(), 16).expect("a hex mask")
}

/// The mask of [`CAPABILITIES`], by their numbers in linux/capability.h.
fn granted_mask() -> u64 {
    CAPABILITIES
        .iter()
        .map(|name| match *name {
            "CAP_NET_ADMIN" => 12,
            "CAP_SYS_RESOURCE" => 24,
            "CAP_PERFMON" => 38,
            "CAP_BPF" => 39,
            other => panic!("{other}: add its number"),
        })
        .fold(0, |mask, bit| mask | 1 << bit)
}

/// What the agent's sandbox allows, as seen from inside its own mount namespace.
fn assert_sandbox(machine: &Machine, pid: u32) {
    let name = machine.release.name;
    let status = machine.ok(&["cat", &format!("/proc/{pid}/status")]);
    for (field, want) in [("NoNewPrivs", "1"), ("Seccomp", "2")] {
        let have = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(str::trim);
        assert_eq!(have, Some(want), "{name}: {field} of the agent");
    }
    let pid_text = pid.to_string();
    // `test -w` from inside the agent's mount namespace: writable where it writes,
    // read-only elsewhere (the bpffs is the one exception under /sys).
    let test = |flag: &str, path: &str| {
        machine
            .exec(&[
                "nsenter", "--target", &pid_text, "--mount", "--", "test", flag, path,
            ])
            .status
            .success()
    };
    let writable = |path: &str| test("-w", path);
    for path in [PIN_DIR, STATE_DIR] {
        assert!(writable(path), "{name}: the agent cannot write {path}");
    }
    for path in [
        "/sys/class/net",
        "/proc/sys/net",
        "/usr/bin",
        "/etc/allowlist",
        "/sys/fs/cgroup",
    ] {
        assert!(!writable(path), "{name}: the agent may write {path}");
    }
    let readable = |path: &str| test("-r", path);
    assert!(
        readable("/sys/kernel/btf/vmlinux"),
        "{name}: BTF is hidden from the agent"
    );
    // Inaccessible: systemd mounts a node of mode 000 over it (root would still pass
    // `test -r`, hence the mode).
    // (nspawn gives its machines no /proc/kcore; a host has one.)
    for path in ["/proc/kallsyms", "/proc/kcore"] {
        if !machine.exists(path) {
            continue;
        }
        let mode = machine.ok(&[
            "nsenter", "--target", &pid_text, "--mount", "--", "stat", "-L", "-c", "%a", path,
        ]);
        assert_eq!(
            mode.trim(),
            "0",
            "{name}: {path} is not made inaccessible to the agent"
        );
    }
}

/// Every line the agent wrote went to the journal with its level's priority and no
/// timestamp of its own; `journalctl -p warning` shows warnings and errors only.
fn assert_journal(machine: &Machine) {
    let name = machine.release.name;
    let entries = |priority: Option<&str>| -> Vec<serde_json::Value> {
        let mut args = vec!["journalctl", "--no-pager", "-b", "-u", UNIT, "-o", "json"];
        if let Some(p) = priority {
            args.extend(["-p", p]);
        }
        machine
            .ok(&args)
            .lines()
            .map(|l| serde_json::from_str(l).expect("journal JSON"))
            // The agent's and `allowlist reload`'s lines; not systemd's own.
            .filter(|e: &serde_json::Value| e["SYSLOG_IDENTIFIER"] == "allowlist")
            .collect()
    };
    let all = entries(None);
    assert!(all.len() > 5, "{name}: the agent logged little: {all:#?}");
    let mut seen = std::collections::BTreeSet::new();
    for entry in &all {
        let message = entry["MESSAGE"].as_str().unwrap_or_default();
        let priority = entry["PRIORITY"].as_str().unwrap_or_default();
        // The level is the line's first word (the second, after a timestamp).
        let level = message
            .split_whitespace()
            .take(2)
            .find(|w| ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(w));
        let want = match level {
            Some("ERROR") => "3",
            Some("WARN") => "4",
            Some("INFO") => "6",
            Some(_) => "7",
            // A fatal error's last words.
            None if message.starts_with("allowlist: ") => "3",
            // The continuation of a message of several lines keeps the message's
            // priority, which its first line was checked for.
            None => priority,
        };
        assert_eq!(priority, want, "{name}: priority of {message:?}");
        assert!(
            !message.starts_with('<')
                && !message.contains('\u{1b}')
                && !message
                    .as_bytes()
                    .get(..4)
                    .is_some_and(|head| head.iter().all(u8::is_ascii_digit)),
            "{name}: a prefix, a colour or a timestamp of its own: {message:?}"
        );
        seen.insert(priority.to_owned());
    }
    assert!(
        seen.contains("4") && seen.contains("6"),
        "{name}: expected warnings (the gone source) and infos, saw priorities {seen:?}"
    );
    let warnings = entries(Some("warning"));
    assert!(
        warnings.iter().any(|e| e["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.contains("refresh failed"))),
        "{name}: journalctl -p warning lacks the failing source: {warnings:#?}"
    );
    for entry in &warnings {
        let p: u8 = entry["PRIORITY"]
            .as_str()
            .unwrap_or("9")
            .parse()
            .unwrap_or(9);
        assert!(p <= 4, "{name}: -p warning showed {entry:#}");
    }
}

fn package_runs_under_systemd(release: &'static Release) {
    if !require_root() {
        return;
    }
    let packages = packages();
    let world = World::new();
    let provider = world.provider();
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["192.0.2.0/24", "2001:db8:a::/64"])),
    );
    provider.set("/gone.json", Response::status(404));
    let machine = Machine::boot(release, &world);
    let name = release.name;
    let version = machine.ok(&["systemctl", "--version"]);
    assert!(
        version.starts_with(&format!("systemd {} ", release.systemd)),
        "{name}: {version}"
    );

    // Install: apt resolves the package's declared dependencies against what a
    // minimal Debian has, offline.
    machine.write("/root/allowlist.deb", &packages.current);
    machine.ok(&[
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "/root/allowlist.deb",
    ]);
    assert_eq!(
        machine.ok(&["allowlist", "--version"]).trim(),
        format!("allowlist {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        machine
            .ok(&["allowlist", "presets"])
            .contains("intercom-us")
    );
    // What the package installed is what the repository has; the config is a
    // conffile, the state directory 0700, and nothing is started yet.
    let unit_path = "/lib/systemd/system/allowlist.service";
    for (inside, source) in [
        (unit_path, "deploy/systemd/allowlist.service"),
        (CONFIG, "deploy/allowlist.example.toml"),
    ] {
        assert_eq!(
            machine.ok(&["cat", inside]),
            std::fs::read_to_string(repo().join(source)).expect(source),
            "{name}: {inside} differs from {source}"
        );
    }
    assert!(
        machine
            .ok(&["dpkg-query", "-W", "-f=${Conffiles}", "allowlist"])
            .contains(CONFIG),
        "{name}: {CONFIG} is not a conffile"
    );
    assert_eq!(machine.ok(&["stat", "-c", "%a", STATE_DIR]).trim(), "700");
    assert_eq!(machine.property("ActiveState"), "inactive");
    assert_eq!(machine.property("UnitFileState"), "disabled");
    // The installed unit verifies, and is as hard as promised.
    machine.ok(&["systemd-analyze", "verify", "--man=no", unit_path]);
    let security = machine.ok(&["systemd-analyze", "security", "--offline=yes", unit_path]);
    let exposure: f64 = security
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for allowlist.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no exposure level in:\n{security}"));
    eprintln!("{name}: systemd-analyze security: exposure {exposure}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "{name}: the unit's exposure is {exposure}, above {MAX_EXPOSURE}:\n{security}"
    );
    // Before the filter: everyone reaches :443.
    assert_open(&world, 443, "before the service");

    // Start.
    machine.write(CONFIG, config(&world, &provider, &[443]));
    machine.write(CA_FILE, provider.ca_pem());
    machine.ok(&["systemctl", "enable", "--now", UNIT]);
    let pid = machine.main_pid();
    assert_eq!(
        machine.property("StatusText"),
        format!("filtering {}", world.server_if),
        "{name}: Type=notify's status"
    );
    assert_filtering(&world, 443, "started");
    assert_open(&world, 80, "started (80 is not protected)");
    let status = machine.assert_running(&world.server_if, &[443], "started");
    assert!(packets(&status, "allowlisted", "pass") > 0, "{status:#}");
    assert!(
        packets(&status, "not_allowlisted", "drop") > 0,
        "{status:#}"
    );
    // Exactly the unit's capabilities, less any the machine itself lacks (this
    // sandbox's bounding set has no CAP_SYS_RESOURCE, say).
    let system = capabilities(&machine, 1, "CapBnd");
    for set in ["CapEff", "CapBnd"] {
        assert_eq!(
            capabilities(&machine, pid, set),
            granted_mask() & system,
            "{name}: the agent's {set}: {CAPABILITIES:?} (of the system's {system:#x})"
        );
    }
    assert_sandbox(&machine, pid);

    // Reload: a new protected port takes effect; the agent stays the same process.
    machine.write(CONFIG, config(&world, &provider, &[80, 443]));
    machine.ok(&["systemctl", "reload", UNIT]);
    assert!(
        wait_until(
            Duration::from_secs(20),
            || machine.status()["agent"]["ports"] == serde_json::json!([80, 443])
        ),
        "{name}: the reload did not take effect:\n{}",
        machine.journal()
    );
    assert_eq!(
        machine.main_pid(),
        pid,
        "{name}: a reload restarted the agent"
    );
    assert_filtering(&world, 80, "reloaded");
    assert_filtering(&world, 443, "reloaded");
    machine.assert_running(&world.server_if, &[80, 443], "reloaded");
    // A config that does not validate fails the reload and changes nothing.
    machine.write(CONFIG, "ports = [0]\n");
    let out = machine.exec(&["systemctl", "reload", UNIT]);
    assert!(
        !out.status.success(),
        "{name}: a broken config reloaded: {}",
        describe(&out)
    );
    machine.write(CONFIG, config(&world, &provider, &[80, 443]));
    assert_eq!(machine.main_pid(), pid);
    machine.assert_running(&world.server_if, &[80, 443], "after a refused reload");

    // Restart: the pinned filter enforces throughout.
    with_listed_client(&world, &format!("{name}: systemctl restart"), || {
        machine.ok(&["systemctl", "restart", UNIT]);
    });
    let pid = machine.wait_active(pid, "restart");
    assert_filtering(&world, 443, "restarted");
    machine.assert_running(&world.server_if, &[80, 443], "restarted");

    // kill -9: systemd restarts it (Restart=on-failure), the filter enforces meanwhile.
    with_listed_client(&world, &format!("{name}: kill -9"), || {
        // The shell's own kill: a minimal Debian has no /bin/kill.
        machine.ok(&["sh", "-c", &format!("kill -9 {pid}")]);
        assert_filtering(&world, 443, "killed");
    });
    let pid = machine.wait_active(pid, "kill -9");
    machine.assert_running(&world.server_if, &[80, 443], "after kill -9");

    // Stop: the agent is gone, the filter still enforces, and status says both.
    machine.ok(&["systemctl", "stop", UNIT]);
    assert_eq!(machine.property("ActiveState"), "inactive");
    assert_filtering(&world, 443, "stopped");
    let status = machine.status();
    assert!(status["agent_pid"].is_null(), "{name}: stopped: {status:#}");
    assert_eq!(
        status["attached"],
        serde_json::json!([world.server_if]),
        "{name}: stopped: {status:#}"
    );
    machine.ok(&["systemctl", "start", UNIT]);
    let pid = machine.wait_active(pid, "start after stop");

    // Upgrade to a higher version while the listed client connects: postinst
    // restarts the agent on the new package; not one connection fails.
    machine.write("/root/allowlist-newer.deb", &packages.newer);
    with_listed_client(
        &world,
        &format!("{name}: apt-get install (upgrade)"),
        || {
            machine.ok(&["apt-get", "install", "-y", "/root/allowlist-newer.deb"]);
        },
    );
    assert_eq!(installed_version(&machine), packages.newer_version);
    machine.wait_active(pid, "upgrade");
    assert_filtering(&world, 443, "upgraded");
    machine.assert_running(&world.server_if, &[80, 443], "upgraded");

    assert_journal(&machine);

    // Remove: prerm stops the agent and detaches the filter, and says so.
    let out = machine.exec(&["apt-get", "remove", "-y", "allowlist"]);
    assert!(
        out.status.success(),
        "{name}: apt-get remove: {}",
        describe(&out)
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("the filter is detached"),
        "{name}: apt-get remove said:\n{said}"
    );
    assert_open(&world, 443, "removed");
    assert!(
        !world.xdp_attached(),
        "{name}: XDP is still attached after the removal"
    );
    assert!(
        !machine.exists(PIN_DIR),
        "{name}: {PIN_DIR} is left after the removal"
    );
    assert_eq!(machine.property("ActiveState"), "inactive");

    // Purge: nothing of ours is left.
    machine.ok(&["apt-get", "purge", "-y", "allowlist"]);
    for path in [
        "/usr/bin/allowlist",
        unit_path,
        "/etc/allowlist",
        STATE_DIR,
        PIN_DIR,
        "/etc/systemd/system/multi-user.target.wants/allowlist.service",
    ] {
        assert!(
            !machine.exists(path),
            "{name}: {path} is left after the purge"
        );
    }
    // list-unit-files exits 1 when nothing matches.
    let out = machine.exec(&["systemctl", "list-unit-files", "--no-legend", UNIT]);
    assert!(
        out.stdout.is_empty(),
        "{name}: systemd still knows {UNIT}: {}",
        describe(&out)
    );
    assert_eq!(
        machine.property("LoadState"),
        "not-found",
        "{name}: {UNIT} after the purge"
    );
}

#[test]
fn debian_12_bookworm_systemd_252() {
    static RELEASE: Release = Release {
        name: "bookworm",
        systemd: 252,
    };
    package_runs_under_systemd(&RELEASE);
}

#[test]
fn debian_13_trixie_systemd_257() {
    static RELEASE: Release = Release {
        name: "trixie",
        systemd: 257,
    };
    package_runs_under_systemd(&RELEASE);
}
