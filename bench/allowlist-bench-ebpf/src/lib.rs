//! Empty on purpose, as in aya-template: the library target lets the bench crate
//! name this one as a build-dependency, so that cargo rebuilds it when the baseline
//! programs change. The programs are `main.rs`.
#![no_std]
#![allow(
    unused_crate_dependencies,
    reason = "the dependencies are the programs' (main.rs), not this empty library's"
)]
