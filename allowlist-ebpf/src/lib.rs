//! Empty on purpose, as in aya-template: the library target lets `allowlist-user`
//! name this crate as a build-dependency, so that cargo rebuilds the agent when the
//! program's sources change. The program is `main.rs`.
#![no_std]
#![allow(
    unused_crate_dependencies,
    reason = "the dependencies are the program's (main.rs), not this empty library's"
)]
