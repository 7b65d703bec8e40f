//! The control path of `dataplane run`: its configuration ([`config`]:
//! `--port` flags and TOML, validated) and the daemon itself: [`run`]
//! (start, stop, the loop), `ports` (port add/del, interface supervision,
//! opening a port), `report` (states, statistics, FDB, metrics). Its
//! control socket and metrics are [`crate::control`].

pub mod config;
mod ports;
mod report;
pub mod run;

pub use report::{snapshot, stats_table, ControlHandler};
