//! The `dataplane` binary's commands that are more than a call into the
//! library: the client of a running switch's control socket, and the status
//! views. (The binary's own modules: the library does not depend on them.)

pub mod control;
pub mod status;
