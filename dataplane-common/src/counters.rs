//! Per-CPU outcome counters of the `steer` program.

/// What `steer` did with a frame. Every frame is counted under exactly one
/// outcome, so the counters add up to the frames the program saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Outcome {
    /// Handed to the AF_XDP socket of the frame's rx queue.
    Redirected = 0,
    /// Given to the kernel stack because the policy did not select it.
    Passed = 1,
    /// Dropped because the policy says so (`drop` mode: a counting sink).
    Dropped = 2,
    /// Too short for the headers it announces; given to the kernel, which drops runts.
    Malformed = 3,
    /// Selected for redirect, but no socket is registered for its rx queue:
    /// given to the kernel stack so nothing is lost silently.
    NoSocket = 4,
    /// Learned unicast redirected to its egress device by the fast path.
    FastPath = 5,
    /// Learned unicast passed to the kernel with a tc hand-off: the tc
    /// program `deliver` redirects the skb, keeping its checksum-offload and
    /// segmentation state (see `fastpath::TcHandoff`).
    FastPathTc = 6,
    /// For the switch, on a container port: passed to the kernel with a
    /// tc hand-off to the switch's punt device, whose other end gives it to
    /// the port's AF_XDP socket (segmented, checksum completed).
    Punted = 7,
}

impl Outcome {
    /// Number of outcomes: the length of the `COUNTERS` array.
    pub const COUNT: u32 = 8;

    /// All outcomes, in counter-index order.
    pub const ALL: [Outcome; Self::COUNT as usize] = [
        Outcome::Redirected,
        Outcome::Passed,
        Outcome::Dropped,
        Outcome::Malformed,
        Outcome::NoSocket,
        Outcome::FastPath,
        Outcome::FastPathTc,
        Outcome::Punted,
    ];

    /// Index into the `COUNTERS` map.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Short lowercase name, used in `dataplane status` and in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Redirected => "redirected",
            Outcome::Passed => "passed",
            Outcome::Dropped => "dropped",
            Outcome::Malformed => "malformed",
            Outcome::NoSocket => "no_socket",
            Outcome::FastPath => "fast_path",
            Outcome::FastPathTc => "fast_path_tc",
            Outcome::Punted => "punted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_match_all() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index() as usize, i);
        }
    }
}
