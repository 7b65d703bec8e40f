//! The switching decision per frame (parse, learn, lookup) on 1 and 2
//! threads, two ways:
//! - `own_view`: what the PMDs do: each thread decides with its own
//!   `SwitchView`, without a lock, and hands sightings to a queue;
//! - `shared_lock`: what they did before: one switch behind a process-wide
//!   lock, taken once per burst of 64 frames, learning inline.
//!
//! The traffic: 2 ports with 1,024 hosts each, every host sending to one
//! on the other port, all learned beforehand (a steady state; new
//! addresses are the slow path's cost, not the PMD's). Throughput is in
//! frames decided per second over all threads: with 2 threads, the own
//! views should give about twice one thread's (on 2 free cores), and the
//! shared lock much less.
//!
//! Run: `cargo bench -p dataplane --bench decision`.

use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use dataplane::switch::{
    FdbConfig, Forwarding, Sighting, Switch, SwitchPort, SwitchView, VlanMode,
};
use dataplane_common::wire::build::{write_udp_ipv4, UdpIpv4};
use dataplane_common::wire::parse_l2;

const BURST: usize = 64;
const HOSTS_PER_PORT: usize = 1024;

fn mac(host: usize) -> [u8; 6] {
    let [.., hi, lo] = (host as u32).to_be_bytes();
    [2, 0, 0, 0, hi, lo]
}

/// (ingress port, frame) for every host: host `h` lives on port `h % 2`
/// and sends to host `h ^ 1`, on the other port.
fn traffic() -> Vec<(usize, Vec<u8>)> {
    (0..2 * HOSTS_PER_PORT)
        .map(|h| {
            let mut frame = vec![0u8; 64];
            write_udp_ipv4(
                &mut frame,
                &UdpIpv4 {
                    src_mac: mac(h),
                    dst_mac: mac(h ^ 1),
                    src_ip: [10, 0, 0, 1],
                    dst_ip: [10, 0, 0, 2],
                    src_port: 1,
                    dst_port: 2,
                },
            )
            .expect("64 bytes hold the headers");
            (h % 2, frame)
        })
        .collect()
}

/// A two-port switch that has learned every host.
fn learned_switch() -> Switch {
    let port = |name: &str| SwitchPort {
        name: name.into(),
        vlan: VlanMode::default(),
        up: true,
        max_macs: None,
    };
    let mut switch = Switch::new(
        vec![port("p0"), port("p1")],
        Forwarding::Learning,
        FdbConfig::default(),
    );
    let at = Instant::now();
    for h in 0..2 * HOSTS_PER_PORT {
        switch.learn(&Sighting {
            vlan: 0,
            mac: mac(h),
            port: h % 2,
            at,
            new: true,
        });
    }
    switch.fdb_mut().take_changes();
    switch
}

/// One burst decided with a thread's own view.
fn own_view_burst(
    view: &mut SwitchView,
    sightings: &ArrayQueue<Sighting>,
    burst: &[(usize, Vec<u8>)],
) {
    let now = Instant::now();
    for (in_port, frame) in burst {
        let header = parse_l2(frame.as_slice()).expect("valid frame");
        let (decision, seen) = view.decide(*in_port, &header, now);
        if let Some(seen) = seen {
            let _ = sightings.push(seen);
        }
        black_box(decision);
    }
}

/// The switch and one view, behind one lock (the former design).
struct Locked {
    switch: Switch,
    view: SwitchView,
}

fn shared_lock_burst(locked: &Mutex<Locked>, burst: &[(usize, Vec<u8>)]) {
    let now = Instant::now();
    let mut guard = locked.lock().unwrap();
    let Locked { switch, view } = &mut *guard;
    for (in_port, frame) in burst {
        let header = parse_l2(frame.as_slice()).expect("valid frame");
        let (decision, seen) = view.decide(*in_port, &header, now);
        if let Some(seen) = seen {
            switch.learn(&seen);
            let changes = switch.fdb_mut().take_changes();
            view.apply(&changes, now);
        }
        black_box(decision);
    }
}

/// Runs `per_thread(thread, iters)` on `threads` threads at once; the
/// time from a common start to the last one's end.
fn timed(threads: usize, iters: u64, per_thread: impl Fn(usize, u64) + Sync) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (barrier, per_thread) = (&barrier, &per_thread);
            s.spawn(move || {
                barrier.wait();
                per_thread(t, iters);
            });
        }
        barrier.wait();
        let start = Instant::now();
        // The scope joins every thread before it returns.
        start
    })
    .elapsed()
}

fn decision(c: &mut Criterion) {
    let traffic = traffic();
    let bursts: Vec<&[(usize, Vec<u8>)]> = traffic.chunks(BURST).collect();
    let mut group = c.benchmark_group("decision");
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements((BURST * threads) as u64));
        group.bench_with_input(
            BenchmarkId::new("own_view", threads),
            &threads,
            |b, &threads| {
                let switch = learned_switch();
                let views: Vec<Mutex<SwitchView>> =
                    (0..threads).map(|_| Mutex::new(switch.view())).collect();
                let queues: Vec<ArrayQueue<Sighting>> =
                    (0..threads).map(|_| ArrayQueue::new(4096)).collect();
                b.iter_custom(|iters| {
                    timed(threads, iters, |t, iters| {
                        // Each thread's own: locked once for the whole run.
                        let mut view = views[t].lock().unwrap();
                        for i in 0..iters as usize {
                            let burst = bursts[(i + t * 7) % bursts.len()];
                            own_view_burst(&mut view, &queues[t], burst);
                            while queues[t].pop().is_some() {}
                        }
                    })
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("shared_lock", threads),
            &threads,
            |b, &threads| {
                let switch = learned_switch();
                let view = switch.view();
                let locked = Arc::new(Mutex::new(Locked { switch, view }));
                b.iter_custom(|iters| {
                    timed(threads, iters, |t, iters| {
                        for i in 0..iters as usize {
                            let burst = bursts[(i + t * 7) % bursts.len()];
                            shared_lock_burst(&locked, burst);
                        }
                    })
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
