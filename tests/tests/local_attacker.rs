//! A local user who can write where the agent keeps its state must not get addresses
//! into the allowlist, nor make the agent (root) write through a link: a world-writable
//! `state_dir`, a state file of another user's, a symlink planted as the pid file.
//! Each test builds its own world and removes it, even on failure.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::PathBuf,
    process::ExitStatus,
    time::Duration,
};

use allowlist_tests::{netns::require_root, world::*};

/// The state file of the one source of `provider_publishing` ("partner/0").
const STATE_FILE: &str = "source-partner%2F0.json";
const NOBODY: u32 = 65534;

fn a(ip: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

fn assert_denied(world: &World, src: IpAddr) {
    world.assert_denied(
        src,
        "a client the genuine list does not hold must not get in",
    );
}

/// The pins under the world's `pin_dir` (name and inode: a re-pinned object is a new
/// inode), sorted; empty when there is no `pin_dir`.
fn pins(world: &World) -> Vec<(String, u64)> {
    let mut out: Vec<_> = fs::read_dir(&world.pin_dir)
        .map(|entries| {
            entries
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().unwrap().ino(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Waits up to 10 s for an agent expected to refuse to start; `None` if it kept running.
fn exit_of(agent: &mut Agent) -> Option<ExitStatus> {
    wait_until(Duration::from_secs(10), || {
        matches!(agent.child.try_wait(), Ok(Some(_)))
    });
    agent.child.try_wait().unwrap()
}

/// Runs the agent once (its filter stays attached with the genuine list, 192.0.2.0/24),
/// then edits the state file it saved: CLIENT_B's 198.51.100.0/24 added, and a /15
/// besides, so that the genuine list, which lacks both, would remove nearly all the
/// addresses and be refused by the shrink guard. Returns the state file's path.
fn forge_state_file(world: &World) -> PathBuf {
    let agent = world.start_agent();
    agent.signal(libc::SIGTERM);
    let mut agent = agent;
    assert!(
        agent.wait(Duration::from_secs(10)).success(),
        "{}",
        agent.log()
    );
    let path = world.state_dir().join(STATE_FILE);
    let mut state: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).expect("the agent saved its list"))
            .expect("state JSON");
    let prefixes = state["prefixes"].as_array_mut().expect("a prefixes array");
    assert_eq!(prefixes, &["192.0.2.0/24"]);
    prefixes.push("198.51.100.0/24".into());
    prefixes.push("198.18.0.0/15".into());
    fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    path
}

/// A world-writable `state_dir` holding a forged state file: the agent refuses to start
/// and says why; the filter in place keeps the genuine list, and with none in place
/// nothing is attached.
#[test]
fn a_world_writable_state_dir_is_refused() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "refresh = \"1h\"");
    let state_dir = world.state_dir();
    let forged = forge_state_file(&world);
    // What anyone could do there: replace the agent's file with their own.
    std::os::unix::fs::chown(&forged, Some(NOBODY), Some(NOBODY)).unwrap();
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let pins_before = pins(&world);
    assert!(!pins_before.is_empty());

    let mut agent = world.spawn_agent(&[], &world.dir.path().join("refused.log"));
    let exit = exit_of(&mut agent);
    // Whatever the agent did, the forged list must not be in force.
    assert_denied(&world, a(CLIENT_B));
    let log = agent.log();
    let status =
        exit.unwrap_or_else(|| panic!("the agent started with a world-writable state_dir:\n{log}"));
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("refusing state_dir {}", state_dir.display()))
            && log.contains("0777")
            && log.contains("chmod 0700"),
        "the message must name the state_dir, its mode and the fix:\n{log}"
    );
    world
        .exchange(a(CLIENT_A), 443)
        .expect("the filter in place keeps working");
    assert_eq!(
        pins(&world),
        pins_before,
        "the refused agent touched the pins"
    );

    // With no filter in place, the refused agent attaches none.
    assert!(world.cli(&["detach"]).status.success());
    let mut agent = world.spawn_agent(&[], &world.dir.path().join("refused-again.log"));
    let status = exit_of(&mut agent).expect("the agent must refuse again");
    assert!(!status.success(), "{}", agent.log());
    assert_eq!(pins(&world), [], "pins were created");
    assert!(!world.xdp_attached(), "XDP was attached");
    assert!(forged.exists(), "the forged file is left for inspection");
}

/// A state file owned by another user in a proper `state_dir`: the agent starts, says
/// which file it ignores and why, fetches the genuine list, and CLIENT_B stays out.
#[test]
fn a_state_file_of_another_user_is_ignored() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "refresh = \"1h\"");
    let forged = forge_state_file(&world);
    std::os::unix::fs::chown(&forged, Some(NOBODY), Some(NOBODY)).unwrap();
    // No filter in place: only what the new agent loads counts.
    assert!(world.cli(&["detach"]).status.success());

    let agent = world.start_agent();
    world
        .exchange(a(CLIENT_A), 443)
        .unwrap_or_else(|e| panic!("allowed client: {e}\n{}", agent.log()));
    assert_denied(&world, a(CLIENT_B));
    let log = agent.log();
    assert!(
        log.contains(&forged.display().to_string()) && log.contains("uid 65534"),
        "the warning must name the file and why it is ignored:\n{log}"
    );
    // The fetched genuine list replaced it.
    let meta = fs::symlink_metadata(&forged).unwrap();
    assert_eq!(meta.uid(), 0);
    assert!(
        !fs::read_to_string(&forged)
            .unwrap()
            .contains("198.51.100.0/24")
    );
    // The agent made its state_dir private when it created it.
    let mode = fs::metadata(world.state_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o700, "state_dir mode {mode:04o}");
}

/// A symlink planted as `state_dir/allowlist.pid`: the agent refuses to start, names
/// the pid file, and leaves the link's target as it was.
#[test]
fn a_symlinked_pid_file_is_refused() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "refresh = \"1h\"");
    let state_dir = world.state_dir();
    fs::create_dir(&state_dir).unwrap();
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let target = world.dir.path().join("precious.conf");
    fs::write(&target, "precious contents\n").unwrap();
    let pid_file = state_dir.join("allowlist.pid");
    std::os::unix::fs::symlink(&target, &pid_file).unwrap();

    let mut agent = world.spawn_agent(&[], &world.dir.path().join("refused.log"));
    let exit = exit_of(&mut agent);
    let log = agent.log();
    assert_eq!(
        fs::read_to_string(&target).unwrap(),
        "precious contents\n",
        "the agent wrote through the link:\n{log}"
    );
    let status = exit.unwrap_or_else(|| panic!("the agent started:\n{log}"));
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&pid_file.display().to_string()) && log.contains("symbolic link"),
        "the message must name the pid file:\n{log}"
    );
    assert!(fs::symlink_metadata(&pid_file).unwrap().is_symlink());
    assert!(!world.xdp_attached(), "XDP was attached");
}
