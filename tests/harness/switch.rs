//! `dataplane run` as a test drives it ([`RunningSwitch`]: started, waited
//! for, stopped with a signal, its output and run summary read), and the
//! steer counters of an interface.

use super::*;

/// Everything `child` prints on stdout and stderr, gathered line by line
/// into one string by two threads (join them once the child has exited).
pub fn capture_output(
    child: &mut std::process::Child,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    Vec<std::thread::JoinHandle<()>>,
) {
    use std::io::{BufRead, BufReader};
    let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut readers = Vec::new();
    for pipe in [
        Box::new(child.stdout.take().expect("stdout piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr piped")),
    ] {
        let out = output.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut o = out.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        }));
    }
    (output, readers)
}

/// `dataplane run` in a namespace, stopped with SIGINT on drop (as Ctrl-C
/// would), so every test exercises the real shutdown path.
pub struct RunningSwitch {
    child: Option<std::process::Child>,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Where it writes its `--summary-json` at a clean exit.
    summary: PathBuf,
}

/// The frame accounting of a switch's `--summary-json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameAccounting {
    pub total: u64,
    pub free: u64,
    pub in_rx_rings: u64,
    pub in_tx_rings: u64,
    pub unaccounted: i64,
    pub refused_frees: u64,
}

/// Names each switch's summary file apart (several run in one test binary).
static SUMMARIES: AtomicU32 = AtomicU32::new(0);

impl RunningSwitch {
    /// Starts `dataplane --netns NS run ARGS` and waits until it says it
    /// runs and, unless `--no-control`, serves its control socket.
    pub fn start(ns: &NetNs, args: &[&str]) -> RunningSwitch {
        Self::start_with_env(ns, args, &[])
    }

    /// [`RunningSwitch::start`] with extra environment variables.
    pub fn start_with_env(ns: &NetNs, args: &[&str], env: &[(&str, &str)]) -> RunningSwitch {
        let control = !args.contains(&"--no-control");
        use std::process::Stdio;
        let summary = std::env::temp_dir().join(format!(
            "dp-test-summary-{}-{}.json",
            std::process::id(),
            SUMMARIES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&summary);
        let mut child = Command::new(dataplane_bin())
            .args(["--netns", ns.name(), "run"])
            .args(args)
            .arg("--summary-json")
            .arg(&summary)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dataplane run");
        let (output, readers) = capture_output(&mut child);
        let mut sw = RunningSwitch {
            child: Some(child),
            output,
            readers,
            summary,
        };
        let ready = wait_for(Duration::from_secs(20), || {
            let out = sw.output();
            if out.contains("switch running") && (!control || out.contains("control socket ready"))
            {
                return Some(true);
            }
            match sw.child.as_mut().unwrap().try_wait() {
                Ok(Some(_)) => Some(false),
                _ => None,
            }
        });
        assert_eq!(
            ready,
            Some(true),
            "dataplane run did not start:\n{}",
            sw.output()
        );
        sw
    }

    /// Process id of the switch.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything it printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends a signal (e.g. SIGUSR1 for statistics).
    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// Waits up to `timeout` for the switch to exit by itself; returns its
    /// exit status (`None`: still running) and everything it printed.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<std::process::ExitStatus>, String) {
        let status = self
            .child
            .as_mut()
            .and_then(|c| wait_for(timeout, || c.try_wait().ok().flatten()));
        if status.is_some() {
            self.child = None;
            for r in self.readers.drain(..) {
                let _ = r.join();
            }
        }
        (status, self.output())
    }

    /// SIGINT, wait for a clean exit, and check its `--summary-json`: every
    /// frame of every UMEM accounted for and no free refused. Returns
    /// everything it printed and the accounting (for more checks).
    pub fn stop_accounted(self) -> (String, FrameAccounting) {
        self.stop_with_accounted(libc::SIGINT)
    }

    /// [`RunningSwitch::stop_accounted`] with another signal.
    pub fn stop_with_accounted(mut self, sig: i32) -> (String, FrameAccounting) {
        let ok = self.stop_with_inner(sig);
        let out = self.output();
        assert!(
            ok,
            "dataplane run did not exit cleanly on signal {sig}:\n{out}"
        );
        // Read before `self` drops: the drop removes the file.
        let frames = read_frame_accounting(&self.summary)
            .unwrap_or_else(|e| panic!("reading {}: {e}\n{out}", self.summary.display()));
        assert!(
            frames.total > 0,
            "no frames in the summary: {frames:?}\n{out}"
        );
        assert_eq!(
            (frames.unaccounted, frames.refused_frees),
            (0, 0),
            "frames lost or freed twice: {frames:?}\n{out}"
        );
        (out, frames)
    }

    /// SIGINT, wait for exit; returns (exit success, everything printed).
    pub fn stop(mut self) -> (bool, String) {
        let ok = self.stop_inner();
        (ok, self.output())
    }

    /// Sends `sig` and waits for the exit, as [`RunningSwitch::stop`] does
    /// with SIGINT.
    pub fn stop_with(mut self, sig: i32) -> (bool, String) {
        let ok = self.stop_with_inner(sig);
        (ok, self.output())
    }

    fn stop_inner(&mut self) -> bool {
        self.stop_with_inner(libc::SIGINT)
    }

    fn stop_with_inner(&mut self, sig: i32) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten());
        let ok = match status {
            Some(s) => s.success(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                false
            }
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        ok
    }
}

impl Drop for RunningSwitch {
    fn drop(&mut self) {
        if self.child.is_some() && !self.stop_inner() {
            // Killed (a test failed with the switch stuck): it could not
            // remove its control socket itself.
            self.remove_control_socket();
        }
        let _ = std::fs::remove_file(&self.summary);
    }
}

/// The `frames` object of a `--summary-json` file.
fn read_frame_accounting(path: &std::path::Path) -> Result<FrameAccounting, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let frames = &json["frames"];
    let u = |key: &str| {
        frames[key]
            .as_u64()
            .ok_or_else(|| format!("frames.{key} missing in {text}"))
    };
    Ok(FrameAccounting {
        total: u("total")?,
        free: u("free")?,
        in_rx_rings: u("in_rx_rings")?,
        in_tx_rings: u("in_tx_rings")?,
        unaccounted: frames["unaccounted"]
            .as_i64()
            .ok_or_else(|| format!("frames.unaccounted missing in {text}"))?,
        refused_frees: u("refused_frees")?,
    })
}

impl RunningSwitch {
    /// Removes the control socket the switch said it serves (and
    /// /run/dataplane if that leaves it empty).
    fn remove_control_socket(&self) {
        let out = self.output();
        let Some(path) = out
            .lines()
            .filter(|l| l.contains("control socket ready"))
            .find_map(|l| l.split("socket=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
        else {
            return;
        };
        let path = std::path::Path::new(path);
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            let _ = std::fs::remove_file(path);
            if let Some(dir) = path.parent() {
                // Fails, as it should, while anything else is in it.
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// A `steer` outcome counter of `ifname`, from `dataplane status --json`.
pub fn steer_counter(sw: &NetNs, ifname: &str, outcome: &str) -> u64 {
    let out = sw.dataplane_ok(&["status", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    list.as_array()
        .expect("a list")
        .iter()
        .find(|s| s["interface"] == ifname)
        .and_then(|s| s["counters"][outcome].as_u64())
        .unwrap_or_else(|| panic!("no {outcome} counter for {ifname} in {out}"))
}
