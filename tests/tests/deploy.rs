//! The deployment files in deploy/ agree with the agent and with each other: the
//! example configuration, the Kubernetes manifests and the Prometheus alerts. The
//! configurations are checked by the agent's own parser, the command lines by the
//! agent binary, the manifests by the Kubernetes API's schemas
//! (`kubernetes-validate`) and the alerts by `promtool`. All fast; the Debian package
//! and its systemd unit are installed and run under a real systemd in systemd.rs, the
//! image built and run in image.rs.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use allowlist_tests::{IMAGE_REPOSITORY, describe, image_tag, repo, run, tool, world::binary};
use allowlist_user::{Config, DEFAULT_PIN_DIR, DEFAULT_STATE_DIR, Location, Proxy};
use serde::Deserialize as _;
use serde_yaml_ng::Value;

/// The capabilities the agent needs (README): no CAP_SYS_ADMIN.
const CAPABILITIES: [&str; 4] = ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"];

/// The metrics the agent exports (README), by their exposed names.
const METRICS: &[&str] = &[
    "allowlist_packets_total",
    "allowlist_provider_hits_total",
    "allowlist_prefixes",
    "allowlist_refresh_total",
    "allowlist_refresh_last_success_timestamp_seconds",
    "allowlist_refresh_interval_seconds",
    "allowlist_source_consecutive_failures",
    "allowlist_guard_refusals_total",
    "allowlist_map_entries",
    "allowlist_map_capacity",
    "allowlist_interface_attached",
    "allowlist_state_write_failures_total",
    "allowlist_denied_known_sender_packets_total",
    "allowlist_denied_sources",
    "allowlist_info",
];

/// The alerts the runbook in README.md describes.
const ALERTS: &[&str] = &[
    "AllowlistAgentDown",
    "AllowlistAgentAbsent",
    "AllowlistInterfaceNotFiltered",
    "AllowlistStateNotSaved",
    "AllowlistSourceStale",
    "AllowlistSourceRefreshFailing",
    "AllowlistUpdateRefused",
    "AllowlistDropsRising",
    "AllowlistKnownSenderDropped",
    "AllowlistMapNearCapacity",
];

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn parse_config(text: &str, origin: &Path) -> Config {
    allowlist_user::parse_config(text, origin).unwrap_or_else(|e| panic!("{e}"))
}

/// The value that follows `flag` in a command line.
fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1).copied())
}

// ---------------------------------------------------------------------------------
// The example configuration (/etc/allowlist/allowlist.toml in the package).

#[test]
fn example_config_is_valid_and_uses_the_defaults() {
    let path = deploy("allowlist.example.toml");
    let config = parse_config(&read(&path), &path);
    assert_eq!(config.state_dir, Path::new(DEFAULT_STATE_DIR));
    assert_eq!(config.pin_dir, Path::new(DEFAULT_PIN_DIR));
    assert_eq!(config.ports, [443]);
    let metrics = config.metrics.expect("the example serves metrics");
    assert!(
        metrics.ip().is_loopback(),
        "a host's metrics stay on loopback by default, not {metrics}"
    );
    let intercom = config.provider("intercom").expect("an intercom provider");
    assert_eq!(intercom.preset.as_deref(), Some("intercom-us"));
    let office = config.provider("office").expect("an office provider");
    assert!(
        office
            .sources
            .iter()
            .all(|s| matches!(s.location, Location::Static(_))),
        "the office provider is a static list"
    );
}

#[test]
fn example_config_proxy_is_valid_when_uncommented() {
    let path = deploy("allowlist.example.toml");
    let text = read(&path);
    let line = "# proxy = \"http://proxy.internal:3128\"";
    assert!(text.contains(line), "the example shows a top-level proxy");
    let config = parse_config(&text.replacen(line, &line[2..], 1), &path);
    let fetched: Vec<_> = config.sources().filter(|s| s.is_fetched()).collect();
    assert!(!fetched.is_empty());
    for source in fetched {
        assert_eq!(
            source.fetch.proxy.to_string(),
            "http://proxy.internal:3128/",
            "{}",
            source.id
        );
    }
    // Left commented out, the environment's proxy applies.
    let config = parse_config(&text, &path);
    assert!(
        config
            .sources()
            .all(|s| s.fetch.proxy == Proxy::Environment)
    );
}

#[test]
fn example_config_dns_source_is_valid_when_uncommented() {
    let path = deploy("allowlist.example.toml");
    let text = read(&path);
    let start = text
        .find("# [[provider]]\n# name = \"adyen\"")
        .expect("the example shows a dns source");
    let block = &text[start..];
    let end = block.find("\n\n").unwrap_or(block.len());
    let block = &block[..end];
    let uncommented: String = block
        .lines()
        .map(|line| line.strip_prefix("# ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let config = parse_config(&text.replacen(block, &uncommented, 1), &path);
    let adyen = config.provider("adyen").expect("an adyen provider");
    let [source] = adyen.sources.as_slice() else {
        panic!("one source")
    };
    assert_eq!(source.kind().as_str(), "dns");
    assert!(matches!(
        &source.location,
        Location::Dns { name, resolver: Some(_), keep } if name == "out.adyen.com" && keep.as_secs() == 24 * 3600
    ));
}

// ---------------------------------------------------------------------------------
// The agent's command line, as the unit and the DaemonSet use it.

#[test]
fn agent_accepts_the_deployed_command_lines() {
    let agent = binary();
    let out = run(Command::new(&agent).arg("--version"));
    assert!(out.status.success(), "--version: {}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("allowlist {}", env!("CARGO_PKG_VERSION"))
    );

    let out = run(Command::new(&agent).args(["run", "--help"]));
    assert!(out.status.success(), "run --help: {}", describe(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--log-format", "--detach-on-exit"] {
        assert!(
            help.contains(flag),
            "`allowlist run --help` lacks {flag}:\n{help}"
        );
    }

    // The exact arguments of the container, with --help appended: clap parses them
    // all (flags, values, subcommand) before printing run's help. (The unit's
    // ExecStart runs for real in systemd.rs.)
    let container = Kubernetes::load().container();
    for (origin, args) in [
        (
            "the DaemonSet (IPv4 pod)",
            expand_args(&container, "192.0.2.1"),
        ),
        (
            "the DaemonSet (IPv6 pod)",
            expand_args(&container, "2001:db8::1"),
        ),
    ] {
        let out = run(Command::new(&agent).args(&args).arg("--help"));
        assert!(
            out.status.success(),
            "the agent rejects the arguments of {origin} {args:?}: {}",
            describe(&out)
        );
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("--detach-on-exit"),
            "the arguments of {origin} {args:?} do not select `run`:\n{help}"
        );
    }
}

// ---------------------------------------------------------------------------------
// The Kubernetes manifests.

/// Every document of every manifest in deploy/kubernetes, the kustomization apart.
struct Kubernetes {
    docs: Vec<(String, Value)>,
    kustomization: Value,
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(&read(path))
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("expected a list, found {value:?}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {value:?}"))
}

/// The container's args with `$(NAME)` expanded from its env, as the kubelet does;
/// a `status.podIP` field reference reads `pod_ip`. An undefined name panics (the
/// kubelet would pass `$(NAME)` on verbatim).
fn expand_args(container: &Value, pod_ip: &str) -> Vec<String> {
    let env: Vec<(String, String)> = container["env"]
        .as_sequence()
        .map(|env| {
            env.iter()
                .map(|var| {
                    let name = str_of(&var["name"], "env name").to_owned();
                    let value = match var["value"].as_str() {
                        Some(value) => value.to_owned(),
                        None => {
                            let field =
                                str_of(&var["valueFrom"]["fieldRef"]["fieldPath"], "fieldPath");
                            assert_eq!(field, "status.podIP", "env {name}: an unexpected field");
                            pod_ip.to_owned()
                        }
                    };
                    (name, value)
                })
                .collect()
        })
        .unwrap_or_default();
    strings(&container["args"])
        .into_iter()
        .map(|mut arg| {
            for (name, value) in &env {
                arg = arg.replace(&format!("$({name})"), value);
            }
            assert!(!arg.contains("$("), "an undefined variable in {arg:?}");
            arg
        })
        .collect()
}

/// The value of `flag` in a command line, as `flag VALUE` or `flag=VALUE`.
fn option_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter()
        .find_map(|a| a.strip_prefix(prefix.as_str()))
        .or_else(|| flag_value(args, flag))
}

impl Kubernetes {
    fn load() -> Kubernetes {
        let dir = deploy("kubernetes");
        let mut docs = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("deploy/kubernetes")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if name == "kustomization.yaml" {
                continue;
            }
            for doc in yaml_docs(&file) {
                docs.push((name.clone(), doc));
            }
        }
        let kustomization = yaml_docs(&dir.join("kustomization.yaml")).remove(0);
        Kubernetes {
            docs,
            kustomization,
        }
    }

    fn one(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self
            .docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect();
        assert_eq!(found.len(), 1, "exactly one {kind}");
        found[0]
    }

    fn daemonset(&self) -> &Value {
        self.one("DaemonSet")
    }

    fn container(&self) -> Value {
        let containers = self.daemonset()["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        containers[0].clone()
    }
}

/// A probe's or endpoint's port: a number, or the name of a container port.
fn resolve_port(port: &Value, container: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = str_of(port, "port");
    container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

#[test]
fn kubernetes_manifests_agree_with_the_agent_and_each_other() {
    let k8s = Kubernetes::load();
    let namespace = str_of(&k8s.one("Namespace")["metadata"]["name"], "Namespace name");
    for (file, doc) in &k8s.docs {
        if doc["kind"].as_str() != Some("Namespace") {
            assert_eq!(
                doc["metadata"]["namespace"].as_str(),
                Some(namespace),
                "{file}: {} {:?} is in namespace {namespace}",
                str_of(&doc["kind"], "kind"),
                doc["metadata"]["name"]
            );
        }
    }

    // The kustomization lists every manifest but the optional ServiceMonitor.
    let kustomization = &k8s.kustomization;
    assert_eq!(kustomization["namespace"].as_str(), Some(namespace));
    let resources = strings(&kustomization["resources"]);
    let files: BTreeSet<&str> = k8s.docs.iter().map(|(f, _)| f.as_str()).collect();
    for file in &files {
        let listed = resources.iter().any(|r| r == file);
        assert!(
            listed || *file == "servicemonitor.yaml",
            "kustomization.yaml does not list {file}"
        );
    }
    for r in &resources {
        assert!(
            files.contains(r.as_str()),
            "kustomization.yaml lists a missing {r}"
        );
    }

    // The agent's configuration, as the agent reads it.
    let configmap = k8s.one("ConfigMap");
    let configmap_name = str_of(&configmap["metadata"]["name"], "ConfigMap name");
    let data = configmap["data"].as_mapping().expect("ConfigMap data");
    assert_eq!(data.len(), 1, "the ConfigMap holds the config file only");
    let (key, toml) = data.iter().next().unwrap();
    let key = str_of(key, "ConfigMap key");
    let config = parse_config(str_of(toml, "the config"), Path::new(key));
    // Metrics are set by the DaemonSet's `run --metrics`, which wins over the file:
    // the file must not open them on every address of the node.
    assert!(
        config.metrics.is_none_or(|m| m.ip().is_loopback()),
        "the ConfigMap's metrics = {:?}: leave it to the DaemonSet's --metrics, or loopback",
        config.metrics
    );

    let ds = k8s.daemonset();
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    assert_eq!(spec["dnsPolicy"].as_str(), Some("ClusterFirstWithHostNet"));
    assert!(spec["terminationGracePeriodSeconds"].as_u64().is_some());
    let tolerations = spec["tolerations"].as_sequence().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"].as_str() == Some("Exists") && t["key"].is_null()),
        "the DaemonSet tolerates every taint, to run on every node"
    );
    let labels = pod["metadata"]["labels"].as_mapping().expect("pod labels");
    for (k, v) in ds["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("selector")
    {
        assert_eq!(
            labels.get(k),
            Some(v),
            "the selector matches the pod labels"
        );
    }

    // The image `cargo xtask image` builds, at this version; the kustomization's
    // `images:` entry is where users put their registry's name instead.
    let container = k8s.container();
    assert_eq!(
        str_of(&container["image"], "image"),
        image_tag(),
        "the DaemonSet names the image `cargo xtask image` builds"
    );
    let images = kustomization["images"]
        .as_sequence()
        .expect("kustomization images");
    assert!(
        images
            .iter()
            .any(|i| i["name"].as_str() == Some(IMAGE_REPOSITORY)
                && i["newTag"].as_str() == Some(env!("CARGO_PKG_VERSION"))
                && i["newName"].is_null()),
        "kustomization.yaml's images: {IMAGE_REPOSITORY} at {}: {images:?}",
        env!("CARGO_PKG_VERSION")
    );
    // args: `--config <the ConfigMap's file>`, the `run` subcommand and its
    // `--metrics` on the pod's IP (the node's primary address, with hostNetwork).
    let args = strings(&container["args"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run_at = args
        .iter()
        .position(|a| *a == "run")
        .unwrap_or_else(|| panic!("the container runs `allowlist run`: {args:?}"));
    let run_args = &args[run_at + 1..];
    assert!(
        run_args.iter().all(|a| a.starts_with("--")),
        "only options follow `run`: {args:?}"
    );
    let listen = option_value(run_args, "--metrics")
        .unwrap_or_else(|| panic!("`run --metrics` in the container's args: {args:?}"));
    let (host, port) = listen
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("--metrics {listen}: ADDR:PORT"));
    assert_eq!(
        host, "[$(POD_IP)]",
        "metrics listen on the pod's IP (either family), not every address of the node"
    );
    let port: u64 = port.parse().expect("--metrics port");
    let pod_ip = container["env"]
        .as_sequence()
        .and_then(|env| env.iter().find(|v| v["name"].as_str() == Some("POD_IP")))
        .expect("env POD_IP");
    assert_eq!(
        pod_ip["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("status.podIP"),
        "POD_IP from the downward API"
    );
    assert!(
        !args.contains(&"--detach-on-exit"),
        "a restart keeps the filter enforcing"
    );
    let config_path = Path::new(flag_value(&args, "--config").expect("--config in args"));
    assert_eq!(
        config_path.file_name().unwrap(),
        key,
        "--config names the ConfigMap key"
    );
    let volumes = spec["volumes"].as_sequence().expect("volumes");
    let mounts = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts");
    let mount_of = |path: &Path| -> (&Value, &Value) {
        let mount = mounts
            .iter()
            .find(|m| Path::new(str_of(&m["mountPath"], "mountPath")) == path)
            .unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()));
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {:?}", mount["name"]));
        (mount, volume)
    };
    let (mount, volume) = mount_of(config_path.parent().unwrap());
    assert_eq!(volume["configMap"]["name"].as_str(), Some(configmap_name));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));

    // The bpffs mount holds pin_dir; the state dir is the host's, at the same path.
    let bpffs = mounts
        .iter()
        .find(|m| {
            config
                .pin_dir
                .starts_with(str_of(&m["mountPath"], "mountPath"))
        })
        .expect("a mount holding pin_dir");
    let bpffs_path = Path::new(str_of(&bpffs["mountPath"], "mountPath"));
    let (_, volume) = mount_of(bpffs_path);
    assert_eq!(
        Path::new(str_of(&volume["hostPath"]["path"], "bpffs hostPath")),
        bpffs_path,
        "the host's bpffs, at the same path"
    );
    assert_ne!(
        bpffs["mountPropagation"].as_str(),
        Some("Bidirectional"),
        "Bidirectional propagation needs a privileged container"
    );
    let (_, volume) = mount_of(&config.state_dir);
    assert_eq!(
        Path::new(str_of(&volume["hostPath"]["path"], "state hostPath")),
        config.state_dir,
        "the last good lists outlive the pod"
    );

    // One port: the --metrics port, named metrics; probes and scrape annotations
    // use it.
    let ports = container["ports"].as_sequence().expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| p["name"].as_str() == Some("metrics")
                && p["containerPort"].as_u64() == Some(port)),
        "containerPort {port} named metrics: {ports:?}"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some("/healthz"), "{probe}");
        assert_eq!(resolve_port(&get["port"], &container), port, "{probe} port");
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    // Exactly the documented capabilities, without privileged mode.
    let security = &container["securityContext"];
    assert_eq!(security["privileged"].as_bool(), Some(false));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let added: BTreeSet<String> = strings(&security["capabilities"]["add"])
        .into_iter()
        .collect();
    let wanted: BTreeSet<String> = CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
    assert_eq!(added, wanted);
    for kind in ["requests", "limits"] {
        let r = &container["resources"][kind];
        assert!(
            !r["memory"].is_null() && !r["cpu"].is_null(),
            "resources.{kind}"
        );
    }

    // The optional ServiceMonitor scrapes the same port through a headless Service.
    let service = k8s.one("Service");
    let monitor = k8s.one("ServiceMonitor");
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    for (k, v) in service["spec"]["selector"]
        .as_mapping()
        .expect("Service selector")
    {
        assert_eq!(
            labels.get(k),
            Some(v),
            "the Service selects the agent's pods"
        );
    }
    let service_labels = service["metadata"]["labels"]
        .as_mapping()
        .expect("Service labels");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("selector")
    {
        assert_eq!(
            service_labels.get(k),
            Some(v),
            "the ServiceMonitor selects the Service"
        );
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    let service_port = service["spec"]["ports"]
        .as_sequence()
        .expect("Service ports")
        .iter()
        .find(|p| p["name"] == endpoint["port"])
        .expect("the ServiceMonitor's port is a Service port");
    assert_eq!(resolve_port(&service_port["targetPort"], &container), port);
}

/// The Kubernetes release whose API schemas the manifests are checked against: the
/// newest that `kubernetes-validate` (pinned in xtask/src/setup.rs) bundles.
const KUBERNETES_VERSION: &str = "1.37.0";

/// Kinds the Kubernetes API has no schema for: skipped by name, with the reason.
const WITHOUT_SCHEMA: &[(&str, &str, &str)] = &[(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    "a Prometheus Operator CRD: its schema comes with the operator, not with Kubernetes",
)];

/// `kubernetes-validate --strict` against `KUBERNETES_VERSION` on `files`; panics
/// unless each of `expected` (kind, name) passed, and nothing but the kinds of
/// `WITHOUT_SCHEMA` went unchecked.
fn validate(tool: &Path, files: &[PathBuf], expected: &[(String, String)]) {
    let out = run(Command::new(tool)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate: {}",
        describe(&out)
    );
    for line in text.lines().filter(|l| !l.starts_with("INFO")) {
        assert!(
            WITHOUT_SCHEMA.iter().any(|(api, kind, _)| {
                line.contains(&format!("for kind {kind} with api version {api} "))
            }),
            "kubernetes-validate: {line}"
        );
    }
    for (kind, name) in expected {
        let passed = format!("passed for resource {}/{name} ", kind.to_lowercase());
        assert!(
            text.lines()
                .any(|l| l.starts_with("INFO") && l.contains(&passed)),
            "{kind} {name} was not validated:\n{text}"
        );
    }
}

/// (kind, name) of every document in `docs` that the API has a schema for.
fn schema_checked<'a>(docs: impl Iterator<Item = &'a Value>) -> Vec<(String, String)> {
    docs.filter_map(|doc| {
        let api = str_of(&doc["apiVersion"], "apiVersion");
        let kind = str_of(&doc["kind"], "kind");
        let name = str_of(&doc["metadata"]["name"], "metadata.name");
        if let Some((_, _, why)) = WITHOUT_SCHEMA
            .iter()
            .find(|(a, k, _)| *a == api && *k == kind)
        {
            eprintln!("SKIPPED the schema of {kind} {name}: {why}");
            return None;
        }
        Some((kind.to_owned(), name.to_owned()))
    })
    .collect()
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    // On PATH, or where `cargo xtask test` puts it: a virtualenv under $CARGO_HOME.
    let Some(validate_tool) = tool("kubernetes-validate") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate is missing: `cargo xtask test` installs it (PyPI, in a virtualenv)"
        );
        eprintln!(
            "SKIPPED: kubernetes-validate is missing (`cargo xtask test` installs it); \
             the manifests were checked against each other only"
        );
        return;
    };
    let k8s = Kubernetes::load();
    let dir = deploy("kubernetes");
    let files: BTreeSet<&str> = k8s.docs.iter().map(|(f, _)| f.as_str()).collect();
    let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    let expected = schema_checked(k8s.docs.iter().map(|(_, d)| d));
    assert!(
        expected.iter().any(|(kind, _)| kind == "DaemonSet"),
        "{expected:?}"
    );
    validate(&validate_tool, &files, &expected);

    // The check bites: a misspelt field in the DaemonSet is refused.
    let scratch = tempfile::tempdir().expect("temp dir");
    let daemonset = read(&dir.join("daemonset.yaml"));
    let field = "readOnlyRootFilesystem: true";
    assert!(daemonset.contains(field));
    let broken = scratch.path().join("daemonset.yaml");
    std::fs::write(
        &broken,
        daemonset.replace(field, "readOnlyRootFileSystem: true"),
    )
    .expect("write the broken copy");
    let out = run(Command::new(&validate_tool)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&broken));
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("readOnlyRootFileSystem"),
        "a misspelt securityContext field must fail: {}",
        describe(&out)
    );

    // What `kubectl apply -k` applies: the kustomization, rendered by kubectl's own
    // kustomize.
    let Some(kubectl) = tool("kubectl") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubectl is missing: this kind of machine comes with it"
        );
        eprintln!("SKIPPED: kubectl is missing; the kustomization was not rendered");
        return;
    };
    let out = run(Command::new(kubectl).arg("kustomize").arg(&dir));
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        describe(&out)
    );
    let rendered = scratch.path().join("rendered.yaml");
    std::fs::write(&rendered, &out.stdout).expect("write the rendered kustomization");
    let docs = yaml_docs(&rendered);
    let expected = schema_checked(docs.iter());
    assert_eq!(
        expected.len(),
        strings(&k8s.kustomization["resources"]).len(),
        "one document per resource: {expected:?}"
    );
    validate(&validate_tool, &[rendered], &expected);
    let daemonset = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .expect("a rendered DaemonSet");
    assert_eq!(
        daemonset["spec"]["template"]["spec"]["containers"][0]["image"].as_str(),
        Some(image_tag().as_str()),
        "the rendered DaemonSet runs the image `cargo xtask image` builds"
    );
}

// ---------------------------------------------------------------------------------
// The Prometheus alerts.

/// The `allowlist_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<&str> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("allowlist_") {
        let boundary = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let len = rest[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - at);
        if boundary {
            names.insert(&rest[at..at + len]);
        }
        rest = &rest[at + len..];
    }
    names
}

#[test]
fn prometheus_alerts_use_the_agents_metrics() {
    let path = deploy("prometheus/allowlist-alerts.yaml");
    let doc = yaml_docs(&path).remove(0);
    let mut alerts = Vec::new();
    let mut watched = BTreeSet::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = str_of(&rule["alert"], "alert").to_owned();
            let expr = str_of(&rule["expr"], "expr");
            for metric in metric_names(expr) {
                assert!(METRICS.contains(&metric), "{name}: unknown metric {metric}");
                watched.insert(metric.to_owned());
            }
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("critical" | "warning" | "info")
                ),
                "{name}: severity"
            );
            for annotation in ["summary", "description", "runbook", "runbook_url"] {
                assert!(
                    rule["annotations"][annotation]
                        .as_str()
                        .is_some_and(|a| !a.is_empty()),
                    "{name}: no {annotation} annotation"
                );
            }
            alerts.push(name);
        }
    }
    let unique: BTreeSet<&str> = alerts.iter().map(String::as_str).collect();
    assert_eq!(unique.len(), alerts.len(), "alert names are unique");
    assert_eq!(unique, ALERTS.iter().copied().collect(), "the alerts");
    // The alerts of the issue, by what they watch.
    for metric in [
        "allowlist_refresh_last_success_timestamp_seconds",
        "allowlist_refresh_interval_seconds",
        "allowlist_source_consecutive_failures",
        "allowlist_guard_refusals_total",
        "allowlist_packets_total",
        "allowlist_map_entries",
        "allowlist_map_capacity",
        "allowlist_interface_attached",
        "allowlist_state_write_failures_total",
        "allowlist_denied_known_sender_packets_total",
        "allowlist_info",
    ] {
        assert!(watched.contains(metric), "no alert watches {metric}");
    }
}

#[test]
fn promtool_checks_the_alerts_and_runs_their_unit_tests() {
    // On PATH, or where `cargo xtask test` puts it: taken out of Debian's prometheus
    // package without installing the server.
    let Some(promtool) = tool("promtool") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing: `cargo xtask test` installs it (extracted from Debian's prometheus package)"
        );
        eprintln!(
            "SKIPPED: promtool is missing (`cargo xtask test` installs it); \
             prometheus_alerts_use_the_agents_metrics checked the structure only"
        );
        return;
    };
    let dir = deploy("prometheus");
    let out = run(Command::new(&promtool)
        .args(["check", "rules", "allowlist-alerts.yaml"])
        .current_dir(&dir));
    assert!(
        out.status.success(),
        "promtool check rules: {}",
        describe(&out)
    );
    let out = run(Command::new(&promtool)
        .args(["test", "rules", "allowlist-alerts.test.yaml"])
        .current_dir(&dir));
    assert!(
        out.status.success(),
        "promtool test rules: {}",
        describe(&out)
    );
}
