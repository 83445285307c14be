//! `allowlist presets`: the built-in providers.

use crate::sources::presets;

pub(super) fn presets() {
    for preset in presets::all() {
        println!("{preset}");
    }
}
