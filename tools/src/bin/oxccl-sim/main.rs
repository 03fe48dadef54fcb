//! `oxccl-sim`: replays oxccl's real Programs (`oxccl::internals::algo::build`) of a collective on a
//! modelled network (`oxccl::sim`) and prints, per size, the predicted time, algbw and busbw
//! (nccl-tests' factors) and the tuner's pick.
//!
//! ```text
//! oxccl-sim allreduce --algo ring --ranks 16384 --ranks-per-host 8 \
//!     --intra-lat 1us --intra-bw 20GB/s --inter-lat 5us --inter-bw 12.5GB/s --oversub 1 \
//!     -b 8 -e 1G -f 4
//! oxccl-sim --machine shm --ranks 4 --algo all -b 8 -e 64M    # this machine, as the tuner sees it
//! oxccl-sim --machine tcp --ranks 8 --pick                    # only the tuner's choices
//! ```

mod args;

use std::io::{self, Write};
use std::time::Instant;

use args::{Args, Which};
use oxccl::internals::tune;
use oxccl::sim::{self, Symmetry};

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let done = match args::parse(&argv) {
        Ok(oxccl_tools::Flags::Given(a)) => run(&a, &mut out),
        Ok(oxccl_tools::Flags::Help(text)) => write!(out, "{text}").map_err(Failure::from),
        Err(e) => Err(Failure::Msg(e.to_string())),
    }
    .and_then(|()| out.flush().map_err(Failure::from));
    match done {
        Ok(()) => {}
        // The reader went away (`oxccl-sim ... | head`): Rust ignores SIGPIPE, so the write
        // fails instead of killing us. Stop quietly, as a tool killed by SIGPIPE would, but
        // with status 0: what was asked for was read.
        Err(Failure::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(Failure::Io(e)) => {
            eprintln!("oxccl-sim: cannot write to stdout: {e}");
            std::process::exit(1);
        }
        Err(Failure::Msg(e)) => {
            eprintln!("oxccl-sim: {e}");
            std::process::exit(1);
        }
    }
}

/// Why [`run`] stopped early: a bad flag or a failed replay, or stdout refusing a write.
enum Failure {
    Msg(String),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Msg(e)
    }
}

fn sizes(a: &Args) -> Vec<usize> {
    let mut v = Vec::new();
    let mut s = a.min;
    while s <= a.max {
        v.push(s);
        match s.max(1).checked_mul(a.factor) {
            Some(n) => s = n,
            None => break,
        }
    }
    v
}

fn header(a: &Args, out: &mut impl Write) -> io::Result<()> {
    let n = &a.net;
    let hosts = a.ranks.div_ceil(n.ranks_per_host.max(1));
    writeln!(
        out,
        "# oxccl-sim: {}, {} ranks ({} host{} x {}), algorithm {}",
        a.coll.name(),
        a.ranks,
        hosts,
        if hosts == 1 { "" } else { "s" },
        n.ranks_per_host.min(a.ranks),
        match a.which {
            Which::One(al) => al.name(),
            Which::Auto => "auto (the tuner's pick)",
            Which::All => "all",
        }
    )?;
    if let Some(t) = a.machine {
        let c = a.model.costs(t);
        writeln!(
            out,
            "# machine model {}: alpha {:.2} us, 1/beta {:.3} GB/s, 1/gamma {:.3} GB/s, overhead {:.2} us, wake {:.2} us, {} cores",
            t.name(),
            c.alpha * 1e6,
            1e-9 / c.beta,
            1e-9 / c.gamma,
            c.overhead * 1e6,
            c.wake * 1e6,
            a.model.cores
        )?;
    } else {
        writeln!(
            out,
            "# intra {:.3} us {:.2} GB/s (+{:.3} us/msg); inter {:.3} us {:.2} GB/s (+{:.3} us/msg); oversub {}",
            n.intra.lat * 1e6,
            n.intra.bw / 1e9,
            n.intra.overhead * 1e6,
            n.inter.lat * 1e6,
            n.inter.bw / 1e9,
            n.inter.overhead * 1e6,
            n.oversub
        )?;
    }
    writeln!(
        out,
        "# reduce {:.2} GB/s, copy {:.2} GB/s, credits {}, cores per host {}, {}; chunk {} KiB, {}",
        n.reduce_bw / 1e9,
        n.copy_bw / 1e9,
        n.credits,
        if n.cores_per_host == 0 {
            "one per rank".to_string()
        } else {
            n.cores_per_host.to_string()
        },
        if n.host_driven {
            "host-driven sends"
        } else {
            "NIC-driven sends"
        },
        a.chunk >> 10,
        if a.in_place {
            "in place"
        } else {
            "out of place"
        }
    )?;
    writeln!(out, "#")?;
    writeln!(
        out,
        "# {:>12} {:>12} {:>9} {:>12} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>6} {:>7}",
        "size",
        "count",
        "algo",
        "time",
        "algbw",
        "busbw",
        "pick",
        "replayed",
        "steps",
        "chunk",
        "sym",
        "wall"
    )?;
    writeln!(
        out,
        "# {:>12} {:>12} {:>9} {:>12} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>6} {:>7}",
        "(B)", "(elements)", "", "(us)", "(GB/s)", "(GB/s)", "", "(ranks)", "", "(KiB)", "", "(s)"
    )?;
    Ok(())
}

fn run(a: &Args, out: &mut impl Write) -> Result<(), Failure> {
    let o = sim::Options {
        chunk_bytes: a.chunk,
        in_place: a.in_place,
        root: a.root,
        max_steps: a.max_steps,
        symmetry: a.symmetry,
        per_host: a.net.ranks_per_host,
    };
    let n = a.ranks;
    let factor = sim::busbw_factor(a.coll, n);
    if a.pick {
        writeln!(out, "# size pick   ({} over {n} ranks)", a.coll.name())?;
    } else if !a.tsv {
        header(a, out)?;
    }
    for size in sizes(a) {
        let shape = sim::shape(a.coll, n, 0, size, &o);
        let block = shape.count * sim::ELEM;
        // This machine's model depends on the size (the cache); a described network does not.
        let net = match a.machine {
            Some(t) => a.model.network(t, n, block),
            None => a.net.clone(),
        };
        let pick = tune::pick(a.coll, n, block, a.chunk, &net);
        if a.pick {
            writeln!(out, "{size} {}", pick.name())?;
            continue;
        }
        let algos: Vec<_> = match a.which {
            Which::One(al) => vec![al],
            Which::Auto => vec![pick],
            Which::All => a.coll.algorithms().to_vec(),
        };
        // The algorithms replay independently: on every CPU at once, printed in order.
        let results = replay_all(&algos, |al| {
            let t0 = Instant::now();
            let r = sim::simulate(a.coll, al, n, size, &net, &o)?;
            Ok((r, t0.elapsed().as_secs_f64()))
        });
        for (al, res) in algos.into_iter().zip(results) {
            let (r, wall) = res?;
            if a.tsv {
                writeln!(out, "{size}\t{}\t{:.3}", al.name(), r.time * 1e6)?;
                continue;
            }
            let algbw = if r.time > 0.0 {
                size as f64 / r.time / 1e9
            } else {
                0.0
            };
            writeln!(
                out,
                "  {:>12} {:>12} {:>9} {:>12.2} {:>8.2} {:>8.2} {:>8} {:>8} {:>10} {:>8} {:>6} {:>7.2}",
                size,
                size / sim::ELEM,
                al.name(),
                r.time * 1e6,
                algbw,
                algbw * factor,
                pick.name(),
                r.replayed,
                r.steps,
                r.chunk_bytes >> 10,
                match r.symmetry {
                    Symmetry::None => "none",
                    Symmetry::Exact => "exact",
                    Symmetry::Near => "near",
                    Symmetry::Approx => "approx",
                    Symmetry::Padded => "padded",
                },
                wall
            )?;
            if r.chunk_bytes > a.chunk {
                writeln!(
                    out,
                    "#   ({} replayed with {} KiB chunks, not {}: coarsened to fit --max-steps {})",
                    al.name(),
                    r.chunk_bytes >> 10,
                    a.chunk >> 10,
                    a.max_steps
                )?;
            }
        }
    }
    Ok(())
}

/// `f` of every algorithm, on up to one thread per CPU; the results in `algos`' order.
fn replay_all<T: Send>(
    algos: &[oxccl::Algorithm],
    f: impl Fn(oxccl::Algorithm) -> Result<T, String> + Sync,
) -> Vec<Result<T, String>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(algos.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: Vec<std::sync::Mutex<Option<Result<T, String>>>> =
        algos.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&al) = algos.get(i) else { break };
                    let r = f(al);
                    *out[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    out.into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Err("not replayed".into()))
        })
        .collect()
}
