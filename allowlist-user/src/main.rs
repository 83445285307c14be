#![allow(
    unused_crate_dependencies,
    reason = "the binary is a thin main over the library, whose dependencies these are"
)]
use std::process::ExitCode;

fn main() -> ExitCode {
    allowlist_user::main()
}
