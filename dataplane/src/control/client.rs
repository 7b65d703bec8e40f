//! The client side of the control socket: `dataplane show`, `port`,
//! `stats`, `fdb` talk to a running `dataplane run` through it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::protocol::{Request, Response};

/// How long a request may take (adding a port attaches XDP and opens
/// sockets: well under this).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum Error {
    #[error("no switch is listening on {path}: {source} (is `dataplane run` running? it serves {path} unless started with another --control PATH)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {path}: the switch closed the connection without answering")]
    NoAnswer { path: String },
    #[error("control socket {path}: unreadable answer: {detail}")]
    BadAnswer { path: String, detail: String },
    /// The switch refused the request; its reason.
    #[error("{0}")]
    Refused(String),
}

/// A connection to a running switch.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the control socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, Error> {
        let shown = path.display().to_string();
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: shown.clone(),
            source,
        })?;
        let io = |source| Error::Io {
            path: shown.clone(),
            source,
        };
        stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `request`; returns the result, or the switch's refusal.
    pub fn request(&mut self, request: &Request) -> Result<serde_json::Value, Error> {
        let mut line = serde_json::to_string(request).expect("requests always encode");
        line.push('\n');
        let shown = self.path.display().to_string();
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| Error::Io {
                path: shown.clone(),
                source,
            })?;
        let mut answer = String::new();
        let n = self
            .reader
            .read_line(&mut answer)
            .map_err(|source| Error::Io {
                path: shown.clone(),
                source,
            })?;
        if n == 0 {
            return Err(Error::NoAnswer { path: shown });
        }
        let response: Response = serde_json::from_str(&answer).map_err(|e| Error::BadAnswer {
            path: shown.clone(),
            detail: e.to_string(),
        })?;
        match (response.ok, response.result, response.error) {
            (true, result, _) => Ok(result.unwrap_or(serde_json::Value::Null)),
            (false, _, error) => Err(Error::Refused(
                error.unwrap_or_else(|| "refused (no reason given)".into()),
            )),
        }
    }

    /// Sends `request` and decodes the result as `T`.
    pub fn call<T: serde::de::DeserializeOwned>(&mut self, request: &Request) -> Result<T, Error> {
        let value = self.request(request)?;
        serde_json::from_value(value).map_err(|e| Error::BadAnswer {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        })
    }
}

/// Where the control socket is unless `--control` says otherwise: one per
/// network namespace the switch runs in, so `dataplane -n NS show ports`
/// finds the switch started with `dataplane -n NS run`.
pub fn default_socket_path(netns: Option<&str>) -> PathBuf {
    PathBuf::from(format!(
        "/run/dataplane/{}.ctl",
        netns.unwrap_or("dataplane")
    ))
}
