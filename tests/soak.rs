//! Soak: mixed collectives (all-reduce, broadcast, all-gather, reduce-scatter, barrier, with an
//! occasional large all-reduce) with the communicator destroyed and created again every
//! `EVERY` calls, every result checked; and one long-lived communicator running many
//! collectives. Open descriptors (`/proc/self/fd`), threads (`Threads:`) and resident memory
//! (`VmRSS:`) are sampled after every round and must stay flat (generous tolerances: a leak of
//! one socket, one thread or a few MiB per round fails).
//!
//! CI runs the size (about 20 s on 2 cores): 10,000 mixed collectives with a new
//! communicator every 1,000, and 100,000 on one communicator, per transport. `benches/soak.sh`
//! runs the same tests in a release build and prints the series; the variables:
//!
//! | variable | meaning | CI default |
//! |---|---|---|
//! | `OXCCL_SOAK_COLLECTIVES` | mixed collectives in the init/destroy soak (per transport) | 10000 |
//! | `OXCCL_SOAK_EVERY` | collectives per communicator before it is destroyed | 1000 |
//! | `OXCCL_SOAK_LONG` | collectives on one communicator (the resource check; per transport) | 100000 |
//! | `OXCCL_SOAK_RANKS` | ranks | 4 |
//!
//! A process-ranks variant (4 processes; each rebuilds a communicator with `split` every round
//! and checks its own descriptors, threads and memory) runs at a fixed small size.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use oxccl::{Communicator, Config, ReduceOp, TransportKind};

/// Tests in this binary sample process-wide counters: they must not run at the same time.
static SERIAL: Mutex<()> = Mutex::new(());

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Counts the heap bytes live in this process: the exact leak measure (resident memory also
/// moves with the allocator's arenas and glibc's cache of exited threads' stacks).
struct Live;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Live {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Live = Live;

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Heap bytes live (see [`Live`]), in KiB.
    heap_kb: usize,
    fds: usize,
    threads: usize,
    rss_kb: usize,
    /// Shared-memory mappings (memfd segments and doorbells) in /proc/self/maps.
    shm_maps: usize,
}

fn sample() -> Sample {
    // Hand the allocator's free memory back to the system first: with threads-as-ranks every
    // round runs on new threads, whose malloc arenas keep freed pages resident in varying
    // amounts; RSS after the trim is what is actually live.
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |f: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(f))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    Sample {
        heap_kb: (LIVE.load(Ordering::Relaxed).max(0) as usize) >> 10,
        fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
        threads: field("Threads:"),
        rss_kb: field("VmRSS:"),
        shm_maps: std::fs::read_to_string("/proc/self/maps")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("memfd:"))
            .count(),
    }
}

/// Collective number `i` of the mixed sequence on `comm`, checked. `i` also varies sizes and
/// roots so that every algorithm and the chunked (pipelined) paths get their turn.
fn mixed(comm: &Communicator, i: usize) -> Result<(), String> {
    let (n, r) = (comm.size(), comm.rank());
    let what = |name: &str| format!("call {i} ({name}) on rank {r} of {n}");
    match i % 5 {
        0 => {
            // Every 50th call is large (1 MiB of f32: several chunks per peer).
            let len = if i % 50 == 0 {
                1 << 18
            } else {
                1 + i * 37 % 2000
            };
            let mut v = vec![(r + 1) as f32; len];
            comm.all_reduce(&mut v, ReduceOp::Sum)
                .map_err(|e| format!("{}: {e}", what("all-reduce")))?;
            let want = (n * (n + 1) / 2) as f32;
            if let Some(k) = v.iter().position(|&x| x != want) {
                return Err(format!(
                    "{}: [{k}] = {} want {want}",
                    what("all-reduce"),
                    v[k]
                ));
            }
        }
        1 => {
            let root = i / 5 % n;
            let len = 1 + i * 13 % 3000;
            let mut v = vec![if r == root { i as u32 } else { 0 }; len];
            comm.broadcast(&mut v, root)
                .map_err(|e| format!("{}: {e}", what("broadcast")))?;
            if v.iter().any(|&x| x != i as u32) {
                return Err(format!(
                    "{}: wrong data from root {root}",
                    what("broadcast")
                ));
            }
        }
        2 => {
            let count = 1 + i % 7;
            let send: Vec<u64> = (0..count).map(|j| (r * 1000 + j + i) as u64).collect();
            let mut recv = vec![0u64; n * count];
            comm.all_gather(&send, &mut recv)
                .map_err(|e| format!("{}: {e}", what("all-gather")))?;
            for k in 0..n {
                for j in 0..count {
                    if recv[k * count + j] != (k * 1000 + j + i) as u64 {
                        return Err(format!("{}: block {k} [{j}] wrong", what("all-gather")));
                    }
                }
            }
        }
        3 => {
            let count = 1 + i % 300;
            let send: Vec<i32> = (0..n * count)
                .map(|x| ((r + 1) * (x / count + 1)) as i32)
                .collect();
            let mut recv = vec![0i32; count];
            comm.reduce_scatter(&send, &mut recv, ReduceOp::Sum)
                .map_err(|e| format!("{}: {e}", what("reduce-scatter")))?;
            let want = ((r + 1) * n * (n + 1) / 2) as i32;
            if recv.iter().any(|&x| x != want) {
                return Err(format!(
                    "{}: got {} want {want}",
                    what("reduce-scatter"),
                    recv[0]
                ));
            }
        }
        _ => comm
            .barrier()
            .map_err(|e| format!("{}: {e}", what("barrier")))?,
    }
    Ok(())
}

fn cfg(transport: TransportKind) -> Config {
    Config {
        transport: Some(transport),
        timeout: Some(Duration::from_secs(60)),
        ..Config::default()
    }
}

fn print_series(title: &str, rows: &[(usize, Sample)]) {
    println!("{title}");
    println!("| after collectives | fds | threads | heap live (KiB) | VmRSS (kB) | shm mappings |");
    println!("|---|---|---|---|---|---|");
    for (k, s) in rows {
        println!(
            "| {k} | {} | {} | {} | {} | {} |",
            s.fds, s.threads, s.heap_kb, s.rss_kb, s.shm_maps
        );
    }
}

/// Checks that a series is flat after its first `warm` samples: descriptors and threads within
/// a couple of the level after warm-up; live heap within 8 MiB (plus 25%) of it, the leak
/// check proper; resident memory within 64 MiB (plus 25%), which leaves room for what glibc
/// keeps of its own accord (up to 40 MiB of exited threads' stacks, and malloc arenas).
fn assert_flat(what: &str, rows: &[(usize, Sample)], warm: usize) {
    let warm = warm.min(rows.len().saturating_sub(1));
    let base = rows[warm].1;
    let max_rss_base = rows[..=warm].iter().map(|r| r.1.rss_kb).max().unwrap_or(0);
    let max_heap_base = rows[..=warm].iter().map(|r| r.1.heap_kb).max().unwrap_or(0);
    for (k, s) in &rows[warm..] {
        assert!(
            s.fds <= base.fds + 2,
            "{what}: descriptors grew from {} to {} after {k} collectives",
            base.fds,
            s.fds
        );
        assert!(
            s.threads <= base.threads + 1,
            "{what}: threads grew from {} to {} after {k} collectives",
            base.threads,
            s.threads
        );
        assert!(
            s.shm_maps <= base.shm_maps,
            "{what}: shared-memory mappings grew from {} to {} after {k} collectives",
            base.shm_maps,
            s.shm_maps
        );
        for (name, base, now, slack_kb) in [
            ("live heap", max_heap_base, s.heap_kb, 8 * 1024),
            ("RSS", max_rss_base, s.rss_kb, 64 * 1024),
        ] {
            let bound = base + base / 4 + slack_kb;
            assert!(
                now <= bound,
                "{what}: {name} grew from {base} KiB to {now} KiB after {k} collectives (bound {bound} KiB)"
            );
        }
    }
}

/// `total` mixed collectives on `n` threads-as-ranks, a fresh communicator (store, listeners,
/// links) every `every` calls; resources sampled after each communicator is destroyed.
fn init_destroy_soak(transport: TransportKind) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let n = env_usize("OXCCL_SOAK_RANKS", 4);
    let total = env_usize("OXCCL_SOAK_COLLECTIVES", 10_000);
    let every = env_usize("OXCCL_SOAK_EVERY", 1000).max(1);
    let rounds = total.div_ceil(every);
    let t0 = Instant::now();
    let mut rows = vec![(0usize, sample())];
    for round in 0..rounds {
        let first = round * every;
        let last = total.min(first + every);
        let res = run_ranks(n, cfg(transport), Duration::from_secs(600), move |comm| {
            (first..last).try_for_each(|i| mixed(&comm, i))
        });
        for (r, x) in res.into_iter().enumerate() {
            x.unwrap_or_else(|e| panic!("round {round}, rank {r}: {e}"));
        }
        rows.push((last, sample()));
    }
    let took = t0.elapsed();
    print_series(
        &format!(
            "\ninit/destroy soak, {} ranks (threads), {}: {total} mixed collectives, a new communicator every {every}, {took:.1?} ({:.0} collectives/s)",
            n,
            transport.name(),
            total as f64 / took.as_secs_f64()
        ),
        &rows,
    );
    // The first round sets up what lives for the process (the logger, thread-local arenas).
    assert_flat(
        &format!("init/destroy soak ({})", transport.name()),
        &rows,
        1,
    );
}

#[test]
fn soak_init_destroy_shm() {
    init_destroy_soak(TransportKind::Auto);
}

#[test]
fn soak_init_destroy_tcp() {
    init_destroy_soak(TransportKind::Tcp);
}

/// One communicator, `OXCCL_SOAK_LONG` mixed collectives; resources sampled by rank 0 ten times
/// along the way (the other ranks are threads of the same process, so this is the whole job).
fn long_lived(transport: TransportKind) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let n = env_usize("OXCCL_SOAK_RANKS", 4);
    let total = env_usize("OXCCL_SOAK_LONG", 100_000);
    let step = total.div_ceil(10).max(1);
    let t0 = Instant::now();
    let res = run_ranks(n, cfg(transport), Duration::from_secs(3600), move |comm| {
        let mut rows = Vec::new();
        for i in 0..total {
            mixed(&comm, i)?;
            if (i + 1) % step == 0 || i + 1 == total {
                // Everyone stops at the same call, so the sample sees a quiet job.
                comm.barrier().map_err(|e| format!("barrier: {e}"))?;
                if comm.rank() == 0 {
                    rows.push((i + 1, sample()));
                }
                comm.barrier().map_err(|e| format!("barrier: {e}"))?;
            }
        }
        Ok::<_, String>(rows)
    });
    let took = t0.elapsed();
    let mut rows = Vec::new();
    for (r, x) in res.into_iter().enumerate() {
        let x = x.unwrap_or_else(|e| panic!("rank {r}: {e}"));
        if r == 0 {
            rows = x;
        }
    }
    print_series(
        &format!(
            "\nlong-lived communicator, {n} ranks (threads), {}: {total} mixed collectives in {took:.1?} ({:.0}/s)",
            transport.name(),
            total as f64 / took.as_secs_f64()
        ),
        &rows,
    );
    assert_flat(
        &format!("long-lived communicator ({})", transport.name()),
        &rows,
        1,
    );
}

#[test]
fn soak_long_lived_shm() {
    long_lived(TransportKind::Auto);
}

#[test]
fn soak_long_lived_tcp() {
    long_lived(TransportKind::Tcp);
}

// ---------------------------------------------------------------------------------------------
// Processes as ranks.

const CHILD: &str = "soak_child";
const PROC_ROUNDS: usize = 8;
const PROC_EVERY: usize = 50;

#[test]
#[ignore = "a child process of this file's tests (they run it with --include-ignored)"]
fn soak_child() {
    if !is_child(CHILD) {
        return;
    }
    child_main(|| {
        let world = Communicator::from_env().map_err(|e| e.to_string())?;
        let r = world.rank();
        let mut rows = vec![(0usize, sample())];
        for round in 0..PROC_ROUNDS {
            // A whole new communicator each round: its own store, listener, links.
            let sub = world
                .split(Some(0), r as u32, Config::default())
                .map_err(|e| format!("round {round}: split: {e}"))?
                .ok_or("split returned no communicator")?;
            for i in round * PROC_EVERY..(round + 1) * PROC_EVERY {
                mixed(&sub, i)?;
            }
            drop(sub);
            world.barrier().map_err(|e| format!("barrier: {e}"))?;
            let s = sample();
            println!(
                "RES round {round} fds {} threads {} rss_kb {}",
                s.fds, s.threads, s.rss_kb
            );
            rows.push(((round + 1) * PROC_EVERY, s));
        }
        let flat = std::panic::catch_unwind(|| assert_flat("process rank", &rows, 1));
        flat.map_err(|_| format!("rank {r}: resources not flat: {rows:?}"))
    });
}

#[test]
fn soak_init_destroy_processes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let n = 4;
    let t0 = Instant::now();
    let mut g = ProcGroup::spawn(CHILD, n, &[("OXCCL_TIMEOUT_MS", "60000")]);
    let ok = g.wait(Instant::now() + Duration::from_secs(120), true);
    let report = g.report();
    assert!(ok, "process ranks failed:\n{report}");
    for r in 0..n {
        assert_eq!(
            g.status(r).and_then(|s| s.code()),
            Some(0),
            "rank {r}:\n{report}"
        );
    }
    let out = g.output(0);
    println!(
        "\nprocess ranks ({n}, auto transport): {PROC_ROUNDS} rounds of split + {PROC_EVERY} mixed collectives + destroy in {:.1?}; rank 0's series:",
        t0.elapsed()
    );
    // (The harness may print its "test ... " prefix on the first line.)
    for l in out.lines().filter_map(|l| l.find("RES ").map(|i| &l[i..])) {
        println!("  {l}");
    }
    assert_eq!(
        out.lines().filter(|l| l.contains("RES ")).count(),
        PROC_ROUNDS,
        "rank 0 did not report every round:\n{report}"
    );
}
