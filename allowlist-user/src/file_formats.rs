//! The files the agent writes, pinned: each fixture in `tests/files/` is read by
//! the reader the agent uses (an older agent's file must still be read) and written
//! back byte for byte by the writer it uses (a renamed, dropped or reordered field
//! is a format change, to be made on purpose).

use std::{fs, path::Path};

use crate::{
    denied::DeniedFile,
    observe::status::AgentStatus,
    store::{self, StateStore, history},
};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/files")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A private state directory holding `bytes` as `name`, as the agent writes it.
fn state_dir_with(name: &str, bytes: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    store::prepare_dir(tmp.path()).unwrap();
    store::write_atomic(&tmp.path().join(name), bytes.as_bytes()).unwrap();
    tmp
}

#[test]
fn status_json() {
    let text = fixture("status.json");
    let dir = state_dir_with(store::STATUS_FILE, &text);
    let status = AgentStatus::read(dir.path()).unwrap().expect("a status");
    assert_eq!(status.sources[0].id, "intercom/intercom-us");
    let out = tempfile::tempdir().unwrap();
    store::prepare_dir(out.path()).unwrap();
    status.write(out.path()).unwrap();
    let written = fs::read_to_string(out.path().join(store::STATUS_FILE)).unwrap();
    assert_eq!(written, text);
}

#[test]
fn saved_list() {
    let text = fixture("saved-list.json");
    let tmp = tempfile::tempdir().unwrap();
    let store = StateStore::open(tmp.path()).unwrap();
    store::write_atomic(&store.path_for("office/0"), text.as_bytes()).unwrap();
    let list = store.load("office/0").unwrap().expect("a saved list");
    assert_eq!(list.prefixes.len(), 2);
    assert_eq!(list.seen.len(), 1);
    fs::remove_file(store.path_for("office/0")).unwrap();
    store.save(&list).unwrap();
    assert_eq!(
        fs::read_to_string(store.path_for("office/0")).unwrap(),
        text
    );
}

#[test]
fn history_lines() {
    let text = fixture("history.jsonl");
    let dir = state_dir_with(store::HISTORY_FILE, &text);
    let changes = history::read(dir.path()).unwrap();
    assert_eq!(changes.len(), 3, "every line read");
    let out = tempfile::tempdir().unwrap();
    store::prepare_dir(out.path()).unwrap();
    let mut log = history::Log::open(out.path());
    for change in &changes {
        log.append(change).unwrap();
    }
    let written = fs::read_to_string(out.path().join(store::HISTORY_FILE)).unwrap();
    assert_eq!(written, text);
}

#[test]
fn denied_json() {
    let text = fixture("denied.json");
    let dir = state_dir_with(store::DENIED_FILE, &text);
    let file = DeniedFile::read(dir.path())
        .unwrap()
        .expect("a denied file");
    assert_eq!(file.records.len(), 2);
    let out = tempfile::tempdir().unwrap();
    store::prepare_dir(out.path()).unwrap();
    store::write_json_atomic(&DeniedFile::path(out.path()), &file).unwrap();
    let written = fs::read_to_string(DeniedFile::path(out.path())).unwrap();
    assert_eq!(written, text);
}
