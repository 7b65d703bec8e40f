//! The `dataplane` binary's own modules (the library does not depend on
//! them): the command line's shape ([`args`]), the commands that are more
//! than a call into the library (`run` in [`run`], `gen` in [`gen`]), the
//! client of a running switch's control socket ([`control`]) and the status
//! views ([`status`]). `main.rs` dispatches.

pub mod args;
pub mod control;
pub mod gen;
pub mod run;
pub mod status;
