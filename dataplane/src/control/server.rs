//! The daemon's listeners: the unix control socket and the Prometheus
//! metrics endpoint, on a tokio runtime of their own thread, so that no
//! client (slow, hostile or many) ever touches the PMD threads.
//!
//! Requests are executed on tokio's blocking pool: opening a port can take
//! a few hundred milliseconds of syscalls, and the listeners keep
//! accepting meanwhile.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::sys::private_socket;

use super::protocol::{parse_request, Request, Response, MAX_REQUEST_BYTES};

/// How long a connection may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an answer may take to be taken by the client: one that never
/// reads would otherwise hold its task (and fd) for ever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once, per listener. Any local user can connect to
/// the metrics port: past this, new connections are closed at once, so a
/// flood cannot exhaust the daemon's file descriptors (which its ports and
/// interface queries need).
const MAX_CONNECTIONS: usize = 64;
/// Longest HTTP request head the metrics endpoint reads.
const MAX_HTTP_HEAD: usize = 8 * 1024;

#[derive(Debug, Error)]
pub enum Error {
    #[error("control socket {path}: creating its directory: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {path}: another dataplane is serving it (stop it, or give this one --control PATH)")]
    InUse { path: String },
    #[error("control socket {path}: {what}: {source}")]
    Socket {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "metrics on {addr}: {source} (is the address in use? choose another with --metrics ADDR)"
    )]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the control thread: {0}")]
    Thread(std::io::Error),
    #[error("control socket {0} (or give --control PATH)")]
    Private(private_socket::Error),
}

/// What the daemon does with requests.
pub trait Handler: Send + Sync + 'static {
    /// Executes a control request (may block).
    fn handle(&self, request: Request) -> Response;
    /// Prometheus text exposition of the current counters.
    fn metrics(&self) -> String;
}

/// The running listeners; dropping it stops them and removes the socket.
pub struct Server {
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    socket_path: Option<PathBuf>,
}

impl Server {
    /// Binds the control socket at `control` (owner-only permissions) and
    /// the metrics endpoint at `metrics`, then serves them on a thread.
    pub fn start(
        control: Option<&Path>,
        metrics: Option<SocketAddr>,
        handler: Arc<dyn Handler>,
    ) -> Result<Server, Error> {
        let unix = control.map(bind_control).transpose()?;
        let tcp = metrics
            .map(|addr| {
                let l = std::net::TcpListener::bind(addr)
                    .map_err(|source| Error::Metrics { addr, source })?;
                l.set_nonblocking(true)
                    .map_err(|source| Error::Metrics { addr, source })?;
                Ok::<_, Error>(l)
            })
            .transpose()?;
        let (shutdown, stop) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("dataplane-ctl".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("control runtime: {e}; control socket and metrics are off");
                        return;
                    }
                };
                rt.block_on(serve(unix, tcp, handler, stop));
            })
            .map_err(Error::Thread)?;
        Ok(Server {
            shutdown,
            thread: Some(thread),
            socket_path: control.map(Path::to_path_buf),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
            // Leave /run as found: the directory goes once no switch uses it
            // (remove_dir fails, harmlessly, while another socket is in it).
            if let Some(dir) = p.parent().filter(|d| d.ends_with("dataplane")) {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Creates the socket file: its directory if needed, a stale socket of a
/// dead daemon replaced, a live one refused; mode 0600 (the control socket
/// reconfigures the switch: only its owner may talk to it).
fn bind_control(path: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
    let shown = path.display().to_string();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::Directory {
            path: shown.clone(),
            source,
        })?;
    }
    let listener = match private_socket::listen(path, None) {
        // Another switch exiting just removed the shared directory.
        Err(private_socket::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            private_socket::listen(path, None)
        }
        other => other,
    }
    .map_err(|e| match e {
        private_socket::Error::InUse { .. } => Error::InUse {
            path: shown.clone(),
        },
        other => Error::Private(other),
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| Error::Socket {
            path: shown,
            what: "set_nonblocking",
            source,
        })?;
    Ok(listener)
}

async fn serve(
    unix: Option<std::os::unix::net::UnixListener>,
    tcp: Option<std::net::TcpListener>,
    handler: Arc<dyn Handler>,
    stop: watch::Receiver<bool>,
) {
    let mut tasks = Vec::new();
    if let Some(l) = unix {
        match tokio::net::UnixListener::from_std(l) {
            Ok(l) => tasks.push(tokio::spawn(accept_loop(
                "control socket",
                l,
                control_connection,
                handler.clone(),
                stop.clone(),
            ))),
            Err(e) => tracing::error!("control socket: {e}"),
        }
    }
    if let Some(l) = tcp {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => tasks.push(tokio::spawn(accept_loop(
                "metrics",
                l,
                metrics_connection,
                handler.clone(),
                stop.clone(),
            ))),
            Err(e) => tracing::error!("metrics listener: {e}"),
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// A listener the accept loop can serve: the control socket or the
/// metrics port.
trait Accept: Send + 'static {
    type Stream: Send + 'static;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Accepts connections until `stop` changes, each served by its own task.
/// An accept error (out of fds, say) is logged and retried after a pause
/// rather than ending the server.
async fn accept_loop<L, F, Fut>(
    what: &'static str,
    listener: L,
    serve: F,
    handler: Arc<dyn Handler>,
    mut stop: watch::Receiver<bool>,
) where
    L: Accept,
    F: Fn(L::Stream, Arc<dyn Handler>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut refused = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept_one() => match accepted {
                Ok(stream) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let served = serve(stream, handler.clone());
                        tokio::spawn(async move {
                            served.await;
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        // Dropped: closed at once. Said once per 1000.
                        if refused.is_multiple_of(1000) {
                            tracing::warn!(
                                "{what}: {MAX_CONNECTIONS} connections open already; closing new ones ({} so far)",
                                refused + 1
                            );
                        }
                        refused += 1;
                    }
                },
                Err(e) => {
                    tracing::warn!("{what} accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Serves one client: request lines in, answer lines out, until it closes,
/// stalls, or sends something too long to be a request.
async fn control_connection(stream: tokio::net::UnixStream, handler: Arc<dyn Handler>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        // One byte beyond the limit tells "too long" from "exactly full".
        let mut limited = (&mut reader).take(MAX_REQUEST_BYTES as u64 + 1);
        let read = tokio::time::timeout(READ_TIMEOUT, limited.read_until(b'\n', &mut line)).await;
        let (answer, close) = match read {
            Err(_) => (
                Response::error("no complete request line within 30 s; closing"),
                true,
            ),
            Ok(Err(e)) => {
                tracing::debug!("control client: {e}");
                return;
            }
            Ok(Ok(0)) => return,
            Ok(Ok(n)) if n > MAX_REQUEST_BYTES => (
                Response::error(format!(
                    "request longer than {MAX_REQUEST_BYTES} bytes; closing the connection"
                )),
                // The rest of the line is not read: close rather than parse
                // its tail as a request.
                true,
            ),
            Ok(Ok(_)) => match parse_request(&line) {
                Err(why) => (Response::error(why), false),
                Ok(request) => {
                    let h = handler.clone();
                    let answer = match tokio::task::spawn_blocking(move || h.handle(request)).await
                    {
                        Ok(r) => r,
                        Err(e) => Response::error(format!("internal error: {e}")),
                    };
                    (answer, false)
                }
            },
        };
        let written =
            tokio::time::timeout(WRITE_TIMEOUT, write.write_all(answer.to_line().as_bytes())).await;
        if !matches!(written, Ok(Ok(()))) || close {
            return;
        }
    }
}

/// Minimal HTTP/1.x: reads the request head, answers `GET /metrics` (and
/// `/`) with the text exposition format, anything else with 404.
async fn metrics_connection(mut stream: tokio::net::TcpStream, handler: Arc<dyn Handler>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HTTP_HEAD {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let request_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let request_line = String::from_utf8_lossy(request_line);
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = if method == "GET" && (target == "/metrics" || target == "/")
    {
        let h = handler.clone();
        let body = tokio::task::spawn_blocking(move || h.metrics())
            .await
            .unwrap_or_default();
        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: metrics are at GET /metrics\n".to_string(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
