//! The control path of `dataplane run`: its configuration ([`config`]:
//! `--port` flags and TOML, validated) and the daemon itself ([`run`]:
//! start, port add/del, interface supervision, reporting, stop). Its
//! control socket and metrics are [`crate::control`].

pub mod config;
pub mod run;
