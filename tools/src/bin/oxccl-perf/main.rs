//! `oxccl-perf`: collective bandwidth, measured and printed as nccl-tests' `*_perf` tools do.
//!
//! ```text
//! oxccl-perf -N 4 -b 8 -e 64M -f 2            # 4 local ranks, all-reduce, no launcher needed
//! oxccl-perf allgather -N 4 -a ring           # another collective, its algorithm forced
//! torchrun --nproc-per-node 2 oxccl-perf ...  # or any launcher oxccl understands
//! ```
//!
//! Collectives: allreduce (default), allgather, reducescatter, broadcast, reduce, alltoall,
//! sendrecv, each with nccl-tests' size, count and bus-bandwidth conventions. A binary named after
//! an nccl-tests tool (a link `all_gather_perf` -> `oxccl-perf`) measures that collective.
//!
//! Rank 0 prints nccl-tests' header and table (`size count type redop root time algbw busbw
//! #wrong`, out-of-place then in-place); `--json FILE` writes the same as one JSON object. The exit
//! status is 0 when every check passed, 2 when some element was wrong, 1 on an error. See `-h`.

mod args;
mod bench;
mod check;
mod coll;
mod launch;
mod report;

use std::io::Write;
use std::net::SocketAddr;

use oxccl::{Communicator, Config, Error, UniqueId};

use args::{Collective, Options};
use oxccl_tools::Flags;

fn main() {
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    // Called as nccl-tests' `all_gather_perf` (a link to this binary): that collective, unless
    // the command line names one.
    let called_as = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .filter(|name| name.ends_with("_perf"))
        .and_then(|name| Collective::parse(&name));
    if let Some(c) = called_as {
        if argv.first().is_none_or(|a| a.starts_with('-')) {
            argv.insert(0, c.name().to_string());
        }
    }
    let o = match args::parse_args(&argv) {
        Ok(Flags::Help(text)) => {
            // Through a writer, not print!: a stdout closed early (`--help | head -1`) must not
            // panic (Rust ignores SIGPIPE, so the write fails with BrokenPipe instead).
            let mut out = std::io::stdout().lock();
            return match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
                Err(e) => {
                    eprintln!("oxccl-perf: cannot write to stdout: {e}");
                    1
                }
            };
        }
        Ok(Flags::Given(o)) => o,
        Err(e) => {
            eprintln!("oxccl-perf: {e}");
            return 1;
        }
    };
    if let Some(k) = o.local_ranks {
        return launch::run_local(&o, k);
    }
    launch::watch_parent();
    match run_rank(&o) {
        Ok(code) => code,
        Err((rank, e)) => {
            eprintln!("oxccl-perf: rank {rank}: {e}");
            1
        }
    }
}

/// Whether a launcher (oxccl's own variables, torchrun, Slurm, Open MPI, PMI) placed this process.
fn under_launcher() -> bool {
    let has = |v: &str| std::env::var_os(v).is_some();
    has("OXCCL_RANK")
        || (has("RANK") && has("WORLD_SIZE"))
        || has("SLURM_PROCID")
        || has("OMPI_COMM_WORLD_RANK")
        || has("PMI_RANK")
}

/// This process as one rank: build the communicator, measure, print (rank 0), report.
fn run_rank(o: &Options) -> Result<i32, (String, Error)> {
    let env_rank = [
        "OXCCL_RANK",
        "RANK",
        "SLURM_PROCID",
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok())
    .unwrap_or_else(|| "?".into());
    // Flags win over OXCCL_* variables; the rest comes from the environment.
    let cfg = Config {
        transport: o.transport,
        algo: o
            .algo
            .map(|a| format!("{}:{}", o.collective.lib().key(), a.name())),
        ..Config::default()
    };
    let comm = cfg
        .with_env()
        .and_then(|cfg| {
            if under_launcher() {
                Communicator::from_env_with(cfg)
            } else {
                let id = UniqueId::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
                Communicator::init(0, 1, &id, cfg)
            }
        })
        .map_err(|e| (env_rank, e))?;
    let rank = comm.rank();
    let transport = comm.config().transport.map_or("auto", |t| t.name());
    measure(&comm, o, transport).map_err(|e| (rank.to_string(), e))
}

fn measure(comm: &Communicator, o: &Options, transport: &str) -> Result<i32, Error> {
    let (rank, nranks) = (comm.rank(), comm.size());
    if let Some(why) = args::unrunnable(o, nranks) {
        return Err(Error::invalid_argument(why));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let cards = bench::gather_cards(comm, transport)?;
    let algorithms = bench::algorithms(comm, o);
    if rank == 0 {
        let mut head = vec![
            format!(
                "# Collective test starting: oxccl-perf {}",
                o.collective.name()
            ),
            report::config_line(o),
            "#".into(),
            "# Using devices".into(),
        ];
        for (r, (pid, host, t)) in cards.iter().enumerate() {
            head.push(report::device_line(r, *pid, host, t));
        }
        head.push(algorithms.header());
        head.push("#".into());
        head.extend(report::table_header(
            algorithms == bench::Algorithms::PerRow,
        ));
        for l in head {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
    }
    let rows = bench::run(comm, o, &algorithms, &mut out)?;
    if rank == 0 {
        for l in report::footer(&rows) {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
        if let Some(path) = &o.json {
            let info = report::RunInfo {
                nranks: comm.size(),
                algorithm: algorithms.summary(),
                transport,
            };
            std::fs::write(path, report::json_report(o, &info, &rows))
                .map_err(|e| Error::io(format_args!("cannot write {}", path.display()), e))?;
        }
    }
    Ok(if report::total_wrong(&rows) > 0 {
        launch::EXIT_WRONG
    } else {
        0
    })
}
