//! Operating a running switch from outside: the control socket (protocol,
//! server, client) and the Prometheus metrics endpoint.

pub mod client;
pub mod metrics;
pub mod protocol;
pub mod server;

pub use client::{default_socket_path, Client};
pub use protocol::{FdbRow, PmdStatus, PortStatus, Request, Response, RxqStatus, Stats};
pub use server::{Handler, Server};
