//! What /proc says about a process: CPU time and thread states.

/// User+system CPU time of a process, in clock ticks (from /proc/PID/stat).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Scheduler state letters (R, S, ...) of the threads of `pid` named `comm`.
pub fn thread_states(pid: u32, comm: &str) -> Vec<char> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = task.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(p.join("stat")) {
            if let Some(state) = stat[stat.rfind(')').unwrap() + 2..].chars().next() {
                out.push(state);
            }
        }
    }
    out
}
