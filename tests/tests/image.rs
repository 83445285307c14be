//! The agent's OCI image, built by `cargo xtask image` (a no-op rebuild of the release
//! binary when nothing changed) and run by podman as the DaemonSet runs it: its
//! arguments, capabilities, read-only root, seccomp, resource limits and mounts come
//! from deploy/kubernetes/daemonset.yaml. The saved archive loads into an empty store
//! and holds the agent and exactly the libraries it links; `--version` and `presets`
//! run from the image; the agent attaches to the veth of a test network namespace
//! (the "node" whose network it joins, as `hostNetwork` joins the node's) and filters
//! real traffic; a stopped pod leaves the filter enforcing; `detach`, from the image,
//! removes it. Needs root. Every container, pin and namespace is removed, even when a
//! test fails.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use allowlist_tests::{
    describe, image_tag,
    netns::require_root,
    provider_server::Response,
    repo, run, tool,
    world::{
        CLIENT_A, CLIENT_B, CLIENT_C, DOCUMENT_PATH, SERVER_V4, World, intercom_document,
        provider_toml,
    },
    xtask,
};
use serde::Deserialize as _;
use serde_yaml_ng::Value;

/// The image as `cargo xtask image` left it: its tag, its ID (what the containers
/// run, should another build retag it meanwhile) and its archive.
struct Image {
    tag: String,
    id: String,
    archive: PathBuf,
}

/// Builds the image once for this test binary, through the same code path as
/// `cargo xtask image`.
fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let stderr = xtask(&["image"]);
        // xtask prints the tag, then the archive's path, last.
        let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
        let [.., tag, archive] = lines[..] else {
            panic!("cargo xtask image printed too little:\n{stderr}");
        };
        assert_eq!(tag, image_tag(), "the tag names this version");
        assert!(archive.ends_with(".oci.tar"), "{stderr}");
        Image {
            tag: tag.to_owned(),
            id: podman_ok(&["image", "inspect", "--format", "{{.Id}}", tag]),
            archive: PathBuf::from(archive),
        }
    })
}

/// podman: on PATH, or where `cargo xtask image` puts it ($CARGO_HOME/bin).
fn podman() -> Command {
    Command::new(tool("podman").expect("`cargo xtask image` installs podman"))
}

fn podman_ok(args: &[&str]) -> String {
    let out = run(podman().args(args));
    assert!(out.status.success(), "podman {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// ---------------------------------------------------------------------------------
// The archive.

/// A podman store of its own in a temporary directory (vfs: plain directories, no
/// mounts left behind).
struct ScratchStore {
    dir: tempfile::TempDir,
}

impl ScratchStore {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn podman(&self, args: &[&str]) -> Output {
        let d = self.dir.path();
        run(podman()
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs"])
            .args(args))
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(out.status.success(), "podman {args:?}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for ScratchStore {
    fn drop(&mut self) {
        let _ = self.podman(&["image", "unmount", "--all"]);
    }
}

/// Every file (not directory) under `root`, as absolute paths inside it.
fn files_under(root: &Path) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read the image's tree") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if entry.file_type().expect("file type").is_dir() {
                dirs.push(path);
            } else {
                files.insert(Path::new("/").join(path.strip_prefix(root).unwrap()));
            }
        }
    }
    files
}

/// The absolute paths `ldd` prints for `binary`, the loader included.
fn ldd(binary: &Path) -> BTreeSet<PathBuf> {
    let out = run(Command::new("ldd").arg(binary));
    assert!(out.status.success(), "ldd: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => l.split_whitespace().next(),
            };
            path.filter(|p| p.starts_with('/')).map(PathBuf::from)
        })
        .collect()
}

#[test]
fn archive_loads_and_holds_the_agent_and_exactly_the_libraries_it_links() {
    if !require_root() {
        return;
    }
    let image = image();
    // `podman load` into an empty store gives the same image under the same name.
    let store = ScratchStore::new();
    let archive = image.archive.to_str().expect("a UTF-8 path");
    let loaded = store.podman_ok(&["load", "--input", archive]);
    assert!(loaded.contains(&image.tag), "podman load: {loaded}");
    let id = store.podman_ok(&["image", "inspect", "--format", "{{.Id}}", &image.tag]);
    assert_eq!(id, image.id, "the archive holds the built image");
    let config: serde_json::Value = serde_json::from_str(&store.podman_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        &image.tag,
    ]))
    .expect("image config JSON");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/bin/allowlist"])
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    // Its files: the agent, and exactly what ldd lists for it (the loader included).
    let root = PathBuf::from(store.podman_ok(&["image", "mount", &image.tag]));
    let files = files_under(&root);
    let agent = root.join("usr/bin/allowlist");
    let mut expected = ldd(&agent);
    expected.insert(PathBuf::from("/usr/bin/allowlist"));
    assert_eq!(files, expected, "the image's files");
    eprintln!("the image holds {files:?}");

    // The agent runs with nothing but the image's files.
    let out = run(Command::new("chroot")
        .arg(&root)
        .args(["/usr/bin/allowlist", "--version"]));
    assert!(out.status.success(), "chroot: {}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("allowlist {}", env!("CARGO_PKG_VERSION"))
    );
}

// ---------------------------------------------------------------------------------
// The image, run as the DaemonSet runs it.

/// The DaemonSet's pod spec and its one container.
fn daemonset() -> (Value, Value) {
    let path = repo().join("deploy/kubernetes/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("daemonset.yaml");
    let doc = Value::deserialize(serde_yaml_ng::Deserializer::from_str(&text))
        .expect("daemonset.yaml is YAML");
    let spec = doc["spec"]["template"]["spec"].clone();
    let container = spec["containers"][0].clone();
    (spec, container)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("expected a list, found {value:?}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// Capability numbers, for reading /proc/<pid>/status.
fn capability_bit(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("no bit known for CAP_{other}"),
    }
}

/// A capability mask from /proc/<pid>/status (`CapEff`, `CapBnd`, ...).
fn capability_mask(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The runtime's default seccomp profile (the DaemonSet asks for `RuntimeDefault`),
/// with bpf() allowed to CAP_BPF and perf_event_open() to CAP_PERFMON, as containerd's
/// and Docker's defaults have them, when this runtime's allows them only to
/// CAP_SYS_ADMIN (containers/common's profile, as Debian 12 ships it).
fn runtime_default_seccomp(dir: &Path) -> PathBuf {
    let info: serde_json::Value =
        serde_json::from_str(&podman_ok(&["info", "--format", "json"])).expect("podman info");
    let path = info["host"]["security"]["seccompProfilePath"]
        .as_str()
        .expect("podman info: host.security.seccompProfilePath")
        .to_owned();
    let mut profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the seccomp profile"))
            .expect("seccomp JSON");
    let syscalls = profile["syscalls"].as_array_mut().expect("syscalls");
    let allows = |rules: &[serde_json::Value], name: &str, cap: &str| {
        rules.iter().any(|r| {
            r["action"] == "SCMP_ACT_ALLOW"
                && r["names"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|n| n == name))
                && r["args"].as_array().is_none_or(|a| a.is_empty())
                && r["includes"]["caps"]
                    .as_array()
                    .is_none_or(|c| c.iter().any(|c| c == cap))
        })
    };
    for (name, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        if allows(syscalls, name, cap) {
            continue;
        }
        eprintln!(
            "NOTE: {path} allows {name}() only with CAP_SYS_ADMIN; the test adds it for {cap}, \
             as containerd's and Docker's default profiles have it (see the DaemonSet's seccompProfile)"
        );
        for rule in syscalls.iter_mut() {
            if rule["action"] != "SCMP_ACT_ALLOW"
                && let Some(names) = rule["names"].as_array_mut()
            {
                names.retain(|n| n != name);
            }
        }
        syscalls.push(serde_json::json!({
            "names": [name],
            "action": "SCMP_ACT_ALLOW",
            "includes": { "caps": [cap] },
        }));
    }
    let amended = dir.join("seccomp.json");
    std::fs::write(&amended, profile.to_string()).expect("write the seccomp profile");
    amended
}

/// Kubernetes quantities as podman's flags take them: memory `256Mi` → `256m`, CPU
/// `500m` → `0.5`.
fn memory_flag(quantity: &str) -> String {
    for (suffix, unit) in [("Ki", "k"), ("Mi", "m"), ("Gi", "g")] {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return format!("{n}{unit}");
        }
    }
    panic!("a memory quantity this test does not convert: {quantity}")
}

fn cpu_flag(quantity: &str) -> String {
    match quantity.strip_suffix('m') {
        Some(milli) => format!("{}", milli.parse::<f64>().expect("millicores") / 1000.0),
        None => quantity.to_owned(),
    }
}

/// One "node": a test world whose server namespace plays the node's network, and the
/// files that the DaemonSet's volumes are on it.
struct Node {
    world: World,
    config_dir: PathBuf,
    seccomp: PathBuf,
}

impl Node {
    /// `podman run` with the DaemonSet's pod and container settings, the image, and
    /// `args` after it. `extra` goes before the image (test-only mounts, --detach).
    fn pod(&self, extra: &[&str], args: &[String]) -> Command {
        let (spec, container) = daemonset();
        let security = &container["securityContext"];
        let mut cmd = podman();
        cmd.args(["run", "--pull=never", "--runtime", "runc"]);
        // hostNetwork: the node's network namespace.
        assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
        cmd.arg(format!(
            "--network=ns:{}",
            self.world.server.path().display()
        ));
        // securityContext.
        assert_eq!(security["privileged"].as_bool(), Some(false));
        for cap in strings(&security["capabilities"]["drop"]) {
            cmd.arg(format!("--cap-drop={cap}"));
        }
        for cap in strings(&security["capabilities"]["add"]) {
            cmd.arg(format!("--cap-add={cap}"));
        }
        if security["readOnlyRootFilesystem"].as_bool() == Some(true) {
            // As in Kubernetes: no tmpfs on /tmp, /var/tmp and /run either.
            cmd.args(["--read-only", "--read-only-tmpfs=false"]);
        }
        if security["allowPrivilegeEscalation"].as_bool() == Some(false) {
            cmd.args(["--security-opt", "no-new-privileges"]);
        }
        let uid = security["runAsUser"].as_u64().expect("runAsUser");
        cmd.arg(format!("--user={uid}:{uid}"));
        assert_eq!(
            security["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault")
        );
        cmd.arg("--security-opt")
            .arg(format!("seccomp={}", self.seccomp.display()));
        // resources.limits.
        let limits = &container["resources"]["limits"];
        cmd.arg(format!(
            "--memory={}",
            memory_flag(limits["memory"].as_str().expect("memory limit"))
        ));
        cmd.arg(format!(
            "--cpus={}",
            cpu_flag(limits["cpu"].as_str().expect("cpu limit"))
        ));
        // Rootful podman's default RLIMIT_NOFILE and RLIMIT_NPROC are above what a
        // host without CAP_SYS_RESOURCE (this sandbox) may raise them to: keep this
        // process's open-files limit; root is not held to RLIMIT_NPROC, so any value
        // below podman's own does.
        if capability_mask("self", "CapBnd") & (1 << capability_bit("SYS_RESOURCE")) == 0 {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct it is given.
            assert_eq!(
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
                0
            );
            cmd.arg(format!(
                "--ulimit=nofile={}:{}",
                limit.rlim_cur, limit.rlim_max
            ));
            cmd.arg("--ulimit=nproc=4096:4096");
        }
        // env.
        for var in container["env"].as_sequence().expect("env") {
            let name = var["name"].as_str().expect("env name");
            assert_eq!(
                var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
                Some("status.podIP")
            );
            cmd.arg(format!("--env={name}={SERVER_V4}"));
        }
        // volumeMounts, each on the node's stand-in for its volume.
        let volumes = spec["volumes"].as_sequence().expect("volumes");
        for mount in container["volumeMounts"].as_sequence().expect("mounts") {
            let at = mount["mountPath"].as_str().expect("mountPath");
            let volume = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("the mount's volume");
            let source = if volume["configMap"].is_mapping() {
                self.config_dir.clone()
            } else {
                match volume["hostPath"]["path"].as_str().expect("a hostPath") {
                    "/sys/fs/bpf" => PathBuf::from("/sys/fs/bpf"),
                    "/var/lib/allowlist" => self.world.state_dir(),
                    other => panic!("no stand-in for the hostPath {other}"),
                }
            };
            let mut options = Vec::new();
            if mount["readOnly"].as_bool() == Some(true) {
                options.push("ro");
            }
            match mount["mountPropagation"].as_str() {
                Some("HostToContainer") => options.push("rslave"),
                None => {}
                Some(other) => panic!("mountPropagation {other}"),
            }
            let options = if options.is_empty() {
                String::new()
            } else {
                format!(":{}", options.join(","))
            };
            cmd.arg(format!("--volume={}:{at}{options}", source.display()));
        }
        cmd.args(extra).arg(&image().id).args(args);
        cmd
    }

    /// The DaemonSet's args, `$(POD_IP)` expanded as the kubelet does.
    fn args() -> Vec<String> {
        let (_, container) = daemonset();
        strings(&container["args"])
            .into_iter()
            .map(|a| a.replace("$(POD_IP)", &SERVER_V4.to_string()))
            .collect()
    }
}

/// A container started by the test; removed on drop, even when the test fails.
struct Container {
    name: String,
}

impl Container {
    fn inspect(&self, format: &str) -> String {
        podman_ok(&["inspect", "--format", format, &self.name])
    }

    fn logs(&self) -> String {
        let out = run(podman().args(["logs", &self.name]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn exec(&self, args: &[&str]) -> Output {
        run(podman().args(["exec", &self.name]).args(args))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run(podman().args(["rm", "--force", "--time", "0", &self.name]));
    }
}

/// GET `path` from `addr` inside the node's network namespace: (status, response).
fn http_get(world: &World, addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_owned();
    world.server.run(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return (0, String::new());
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        let code = reply
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, reply)
    })
}

fn counter(status: &serde_json::Value, reason: &str, action: &str) -> u64 {
    status["counters"]["packets"][reason][action]
        .as_u64()
        .unwrap_or(0)
}

fn a(ip: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

#[test]
fn image_runs_as_the_daemonset_runs_it_and_filters_traffic() {
    if !require_root() {
        return;
    }
    let image = image();
    let (_, container) = daemonset();
    assert_eq!(
        container["image"].as_str(),
        Some(image.tag.as_str()),
        "the DaemonSet runs the image `cargo xtask image` builds"
    );

    let world = World::new();
    let provider = world.provider();
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["192.0.2.0/24"])),
    );
    // The ConfigMap's stand-in: this node's interface and pin_dir (unique to the
    // test), the DaemonSet's state mount, and the test provider.
    let args = Node::args();
    let config_path = PathBuf::from(
        args.iter()
            .position(|a| a == "--config")
            .and_then(|i| args.get(i + 1))
            .expect("--config in the DaemonSet's args"),
    );
    let config_dir = world.dir.path().join("configmap");
    std::fs::create_dir(&config_dir).unwrap();
    let state_mount = "/var/lib/allowlist";
    std::fs::write(
        config_dir.join(config_path.file_name().unwrap()),
        format!(
            "interfaces = [\"{}\"]\nports = [443]\nrefresh = \"1h\"\nstate_dir = \"{state_mount}\"\npin_dir = \"{}\"\n{}",
            world.server_if,
            world.pin_dir.display(),
            provider_toml("partner", &provider)
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(world.state_dir())
            .unwrap();
    }
    let seccomp = runtime_default_seccomp(world.dir.path());
    let node = Node {
        config_dir,
        seccomp,
        world,
    };
    let world = &node.world;
    // The test provider's CA, where the config names it.
    let ca_dir = provider.ca_file().parent().unwrap().to_owned();
    let ca_mount = format!("--volume={0}:{0}:ro", ca_dir.display());
    let one_off = |args: &[&str]| -> Output {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        run(&mut node.pod(&["--rm", &ca_mount], &args))
    };

    // --version and presets, from the image.
    let out = one_off(&["--version"]);
    assert!(out.status.success(), "--version: {}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("allowlist {}", env!("CARGO_PKG_VERSION"))
    );
    let out = one_off(&["presets"]);
    assert!(out.status.success(), "presets: {}", describe(&out));
    let presets = String::from_utf8_lossy(&out.stdout);
    for preset in ["intercom-us", "github-hooks", "stripe-webhooks"] {
        assert!(
            presets.contains(preset),
            "presets lacks {preset}:\n{presets}"
        );
    }

    // The agent, with the DaemonSet's args.
    let pod = Container {
        name: format!("allowlist-test-{}", world.id),
    };
    let started = Instant::now();
    let out = run(&mut node.pod(&["--detach", "--name", &pod.name, &ca_mount], &args));
    assert!(out.status.success(), "podman run: {}", describe(&out));
    let status_file = world.state_dir().join("status.json");
    loop {
        let attached = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| v["interfaces"].as_array().is_some_and(|a| !a.is_empty()));
        if attached {
            break;
        }
        assert!(
            pod.inspect("{{.State.Running}}") == "true",
            "the agent's container exited ({}):\n{}",
            pod.inspect("{{.State.ExitCode}}"),
            pod.logs()
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent did not attach within 30 s:\n{}",
            pod.logs()
        );
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "attached {:.1} s after podman run",
        started.elapsed().as_secs_f64()
    );
    assert!(
        world.xdp_attached(),
        "no XDP program on {}",
        world.server_if
    );

    // It holds the DaemonSet's capabilities (those the runtime itself has), and no
    // CAP_SYS_ADMIN.
    let pid = pod.inspect("{{.State.Pid}}");
    let effective = capability_mask(&pid, "CapEff");
    let host = capability_mask("self", "CapBnd");
    let mut wanted = 0u64;
    for cap in strings(&container["securityContext"]["capabilities"]["add"]) {
        let bit = 1u64 << capability_bit(&cap);
        if host & bit == 0 {
            eprintln!("NOTE: this host's runtime lacks CAP_{cap}, so the container cannot get it");
        } else {
            wanted |= bit;
        }
    }
    assert_eq!(
        effective, wanted,
        "the container's effective capabilities: {effective:#x}"
    );
    assert_eq!(effective & (1 << capability_bit("SYS_ADMIN")), 0);

    // The readiness probe: /healthz on the pod IP's --metrics port, 200 once the
    // filter is attached and the first sync succeeded.
    let metrics = args
        .iter()
        .find_map(|a| a.strip_prefix("--metrics="))
        .expect("--metrics= in the args");
    // `[ADDR]:PORT`, with brackets around an IPv4 address too.
    let (host, port) = metrics.rsplit_once(':').expect("--metrics ADDR:PORT");
    let host: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .expect("--metrics address");
    let metrics = SocketAddr::new(host, port.parse().expect("--metrics port"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, reply) = http_get(world, metrics, "/healthz");
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz: {code} {reply}\n{}",
            pod.logs()
        );
        thread::sleep(Duration::from_millis(200));
    }

    // Real traffic through the node's interface.
    world
        .exchange(a(CLIENT_A), 443)
        .unwrap_or_else(|e| panic!("the listed client: {e}\n{}", pod.logs()));
    world.assert_denied(a(CLIENT_B), &pod.logs());
    world.assert_denied(a(CLIENT_C), &pod.logs());
    world
        .exchange(a(CLIENT_B), 80)
        .expect("everyone reaches :80");

    // `kubectl exec <pod> -- allowlist status` (README), counting that traffic.
    let out = pod.exec(&["allowlist", "status", "--json"]);
    assert!(out.status.success(), "status: {}", describe(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let passed = counter(&status, "allowlisted", "pass");
    let dropped = counter(&status, "not_allowlisted", "drop");
    assert!(passed >= 3, "the listed client's segments: {status:#}");
    assert!(
        dropped >= 2,
        "the SYNs of the two unlisted clients: {status:#}"
    );
    let (code, exposition) = http_get(world, metrics, "/metrics");
    assert_eq!(code, 200);
    assert!(
        exposition.contains(&format!(
            "allowlist_packets_total{{reason=\"not_allowlisted\",action=\"drop\"}} {dropped}"
        )),
        "{exposition}"
    );
    eprintln!("in the container: {passed} packets passed, {dropped} dropped");

    // A pod that stops (SIGTERM, as the kubelet sends) leaves the filter enforcing.
    podman_ok(&["stop", "--time", "30", &pod.name]);
    assert_eq!(pod.inspect("{{.State.ExitCode}}"), "0", "{}", pod.logs());
    assert!(
        pod.logs().contains("the filter stays attached"),
        "{}",
        pod.logs()
    );
    assert!(world.xdp_attached(), "the filter outlives the pod");
    world.assert_denied(a(CLIENT_B), "after the pod stopped");
    world
        .exchange(a(CLIENT_A), 443)
        .expect("the listed client, after the pod stopped");

    // `detach`, from the image, with the pod's mounts: the filter and its pins go.
    let out = one_off(&["--config", config_path.to_str().unwrap(), "detach"]);
    assert!(out.status.success(), "detach: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("the filter is detached"),
        "{}",
        describe(&out)
    );
    assert!(!world.xdp_attached(), "XDP still attached after detach");
    assert!(!world.pin_dir.exists(), "pins left after detach");
    world
        .exchange(a(CLIENT_B), 443)
        .expect("traffic flows after detach");
}
