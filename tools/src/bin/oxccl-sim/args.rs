//! Command-line parsing for `oxccl-sim` (clap, derive): sizes, durations and bandwidths with
//! units (the parsers `oxccl-perf` uses too), and flags spelled as `oxccl-perf` spells them where
//! the two share a meaning (`-N` ranks, `-a` algorithm, `-b -e -f` sweep, `-r` root).

use clap::builder::RangedU64ValueParser;
use clap::{CommandFactory, Parser};
use oxccl::internals::tune::{Model, Transport};
use oxccl::sim::{Link, Network};
use oxccl::{Algorithm, Collective};
use oxccl_tools::units::{parse_bw, parse_factor, parse_size, parse_time};
use oxccl_tools::{Flags, read_flags};

/// Which algorithms to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    /// One, forced.
    One(Algorithm),
    /// The tuner's pick at each size.
    Auto,
    /// Every algorithm of the collective.
    All,
}

/// Everything the command line says.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    /// The collective.
    pub coll: Collective,
    /// The algorithm(s).
    pub which: Which,
    /// Ranks.
    pub ranks: usize,
    /// The network.
    pub net: Network,
    /// `--machine`: the tuner's model of this machine for a transport (overrides the network).
    pub machine: Option<Transport>,
    /// The tuner's model (`--machine`), with any overrides.
    pub model: Model,
    /// Smallest size.
    pub min: usize,
    /// Largest size.
    pub max: usize,
    /// Size factor.
    pub factor: usize,
    /// Chunk bytes.
    pub chunk: usize,
    /// In-place calls.
    pub in_place: bool,
    /// Root of rooted collectives.
    pub root: usize,
    /// Step budget.
    pub max_steps: usize,
    /// Use symmetry.
    pub symmetry: bool,
    /// Print only the tuner's pick per size.
    pub pick: bool,
    /// Tab-separated rows (size, algorithm, microseconds) for scripts.
    pub tsv: bool,
}

/// Units and notes printed after the flags in `--help`.
const AFTER_HELP: &str = "\
Units: times s ms us ns (default s); bandwidths B/s KB/s MB/s GB/s (10^3 steps) or GiB/s;
sizes K M G T (x1024). busbw uses nccl-tests' factors; GB/s is 10^9 bytes per second.";

/// A whole number of at least `min`, for clap.
fn at_least(min: u64) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(min..)
}

/// The flags as clap reads them; [`parse`] checks them together and turns them into [`Args`].
#[derive(Debug, Parser)]
#[command(
    name = "oxccl-sim",
    about = "oxccl-sim: replay oxccl's real Programs of a collective on a modelled network",
    after_help = AFTER_HELP,
    args_override_self = true,
    disable_version_flag = true
)]
struct Cli {
    /// allreduce allgather reducescatter broadcast reduce alltoall gather scatter barrier
    #[arg(value_name = "COLLECTIVE", value_parser = parse_coll, conflicts_with = "coll")]
    collective: Option<Collective>,
    /// The collective, as a flag (default allreduce)
    #[arg(long, value_name = "COLLECTIVE", value_parser = parse_coll)]
    coll: Option<Collective>,
    /// ring tree rhd direct chain bruck pairwise ..., auto (the tuner's pick, default) or all
    /// (every algorithm of the collective)
    #[arg(short = 'a', long, value_name = "NAME")]
    algo: Option<String>,
    /// Ranks
    #[arg(short = 'N', long, value_name = "N", default_value = "8", value_parser = at_least(1))]
    ranks: usize,
    /// Ranks per host (ranks fill hosts in order)
    #[arg(long, value_name = "K", default_value = "8", value_parser = at_least(1))]
    ranks_per_host: usize,
    /// Latency between ranks of a host
    #[arg(long, value_name = "TIME", default_value = "1us", value_parser = parse_time)]
    intra_lat: f64,
    /// Bandwidth of each rank's intra-host port
    #[arg(long, value_name = "BW", default_value = "20GB/s", value_parser = parse_bw)]
    intra_bw: f64,
    /// Latency between hosts
    #[arg(long, value_name = "TIME", default_value = "5us", value_parser = parse_time)]
    inter_lat: f64,
    /// Bandwidth of each network port
    #[arg(long, value_name = "BW", default_value = "12.5GB/s", value_parser = parse_bw)]
    inter_bw: f64,
    /// Per-message overhead on each side of an intra-host link: port time per message
    #[arg(long, value_name = "TIME", default_value = "0.1us", value_parser = parse_time)]
    intra_ovh: f64,
    /// Per-message overhead on each side of a network link (a NIC's message rate)
    #[arg(long, value_name = "TIME", default_value = "0.5us", value_parser = parse_time)]
    inter_ovh: f64,
    /// Inter-host sends take F times their wire time while the same peer sends back (TCP over
    /// rate-limited ports: ACKs queue behind data; 1: no slowdown)
    #[arg(long, value_name = "F", default_value = "1", value_parser = parse_factor)]
    duplex: f64,
    /// NICs (rails) per host, local rank l on NIC l mod k (0: one per rank)
    #[arg(long, value_name = "K", default_value = "0", value_parser = at_least(0))]
    nics_per_host: usize,
    /// Reduction speed of a rank
    #[arg(long, value_name = "BW", default_value = "50GB/s", value_parser = parse_bw)]
    reduce_bw: f64,
    /// Local copy speed of a rank (default: the reduction speed)
    #[arg(long, value_name = "BW", value_parser = parse_bw)]
    copy_bw: Option<f64>,
    /// The network core carries ports x inter-bw / F (1: full bisection)
    #[arg(long, value_name = "F", default_value = "1", value_parser = parse_factor)]
    oversub: f64,
    /// Messages in flight per link
    #[arg(long, value_name = "K", default_value = "4", value_parser = at_least(1))]
    credits: usize,
    /// Cores the ranks of a host share (0: one per rank)
    #[arg(long, value_name = "C", default_value = "0", value_parser = at_least(0))]
    cores_per_host: usize,
    /// Sends occupy the sending rank's CPU (shm, TCP) instead of a NIC
    #[arg(long)]
    host_driven: bool,
    /// Every receive copies out of a slot (default: receives whose buffer is free are posted
    /// and land in place)
    #[arg(long)]
    recv_copy: bool,
    /// This machine as the tuner models it (one host; overrides the network)
    #[arg(long, value_name = "shm|tcp", value_parser = parse_machine)]
    machine: Option<Transport>,
    /// With --machine: the model's per-message latency
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "machine")]
    alpha: Option<f64>,
    /// With --machine: the model's bandwidth (1/beta)
    #[arg(long, value_name = "BW", value_parser = parse_bw, requires = "machine")]
    beta_bw: Option<f64>,
    /// With --machine: the model's reduction speed (1/gamma)
    #[arg(long, value_name = "BW", value_parser = parse_bw, requires = "machine")]
    gamma_bw: Option<f64>,
    /// With --machine: the model's per-call overhead
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "machine")]
    overhead: Option<f64>,
    /// With --machine: the model's wake-up time
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "machine")]
    wake: Option<f64>,
    /// With --machine: the model's cores
    #[arg(long, value_name = "C", value_parser = at_least(0))]
    cores: Option<usize>,
    /// With --machine: the model's cache
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    cache: Option<usize>,
    /// With --machine: how much faster in cache
    #[arg(long, value_name = "F", value_parser = parse_factor)]
    cache_speedup: Option<f64>,
    /// Smallest size of the sweep
    #[arg(short = 'b', long = "minbytes", value_name = "SIZE", default_value = "8", value_parser = parse_size)]
    min: usize,
    /// Largest size of the sweep
    #[arg(short = 'e', long = "maxbytes", value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    max: usize,
    /// Multiply the size by N from one row to the next
    #[arg(short = 'f', long = "stepfactor", value_name = "N", default_value = "4", value_parser = at_least(2))]
    factor: usize,
    /// Largest message (default: the library's)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    chunk: Option<usize>,
    /// In-place calls
    #[arg(long)]
    in_place: bool,
    /// Root of rooted collectives
    #[arg(short = 'r', long, value_name = "RANK", default_value = "0", value_parser = at_least(0))]
    root: usize,
    /// Replay budget before chunks are coarsened
    #[arg(long, value_name = "N", default_value_t = oxccl::sim::MAX_STEPS, value_parser = at_least(0))]
    max_steps: usize,
    /// Replay every rank
    #[arg(long)]
    no_symmetry: bool,
    /// Print only the tuner's pick per size ("size algo")
    #[arg(long)]
    pick: bool,
    /// Print "size algo time_us" rows
    #[arg(long)]
    tsv: bool,
}

fn parse_machine(s: &str) -> Result<Transport, String> {
    Transport::parse(s).ok_or_else(|| format!("unknown machine '{s}': shm or tcp"))
}

/// The collective named on the command line (`allreduce`, `all_reduce`, ...).
pub(crate) fn parse_coll(s: &str) -> Result<Collective, String> {
    let k = s.replace(['_', '-'], "").to_ascii_lowercase();
    Collective::ALL
        .into_iter()
        .find(|c| c.key() == k || c.name().replace('_', "") == k)
        .ok_or_else(|| format!("unknown collective '{s}'"))
}

/// Parses the arguments (without the program name).
pub(crate) fn parse(argv: &[String]) -> Result<Flags<Box<Args>>, String> {
    let cli: Cli = match read_flags(Cli::command(), argv)? {
        Flags::Help(text) => return Ok(Flags::Help(text)),
        Flags::Given(cli) => cli,
    };
    let coll = cli.collective.or(cli.coll).unwrap_or(Collective::AllReduce);
    let mut model = Model::default();
    model.cores = cli.cores.unwrap_or(model.cores);
    model.cache = cli.cache.unwrap_or(model.cache);
    model.cache_speedup = cli.cache_speedup.unwrap_or(model.cache_speedup);
    let mut net = Network {
        ranks_per_host: cli.ranks_per_host,
        intra: Link {
            lat: cli.intra_lat,
            bw: cli.intra_bw,
            overhead: cli.intra_ovh,
        },
        inter: Link {
            lat: cli.inter_lat,
            bw: cli.inter_bw,
            overhead: cli.inter_ovh,
        },
        reduce_bw: cli.reduce_bw,
        copy_bw: cli.copy_bw.unwrap_or(cli.reduce_bw),
        oversub: cli.oversub,
        credits: cli.credits,
        cores_per_host: cli.cores_per_host,
        host_driven: cli.host_driven,
        posted_recv: !cli.recv_copy,
        nics_per_host: cli.nics_per_host,
        duplex: cli.duplex,
    };
    if let Some(t) = cli.machine {
        let c = match t {
            Transport::Shm => &mut model.shm,
            Transport::Tcp => &mut model.tcp,
        };
        c.alpha = cli.alpha.unwrap_or(c.alpha);
        c.overhead = cli.overhead.unwrap_or(c.overhead);
        c.wake = cli.wake.unwrap_or(c.wake);
        c.beta = cli.beta_bw.map_or(c.beta, |bw| 1.0 / bw);
        c.gamma = cli.gamma_bw.map_or(c.gamma, |bw| 1.0 / bw);
        net = model.network(t, cli.ranks, 0);
    }
    let which = match cli.algo.as_deref().map(str::trim) {
        None | Some("auto") => Which::Auto,
        Some("all") => Which::All,
        Some(s) => {
            let al = Algorithm::parse(s).ok_or_else(|| format!("unknown algorithm '{s}'"))?;
            if !coll.algorithms().contains(&al) {
                let names: Vec<&str> = coll.algorithms().iter().map(|x| x.name()).collect();
                return Err(format!(
                    "{} has no {s} algorithm (it has: {})",
                    coll.name(),
                    names.join(", ")
                ));
            }
            Which::One(al)
        }
    };
    if !oxccl::sim::supported(coll) {
        return Err(format!("the simulator does not replay {}", coll.name()));
    }
    Ok(Flags::Given(Box::new(Args {
        coll,
        which,
        ranks: cli.ranks,
        net,
        machine: cli.machine,
        model,
        min: cli.min,
        max: cli.max,
        factor: cli.factor,
        chunk: cli.chunk.map_or(oxccl::internals::tune::chunk(None), |c| {
            c.max(oxccl::sim::ELEM)
        }),
        in_place: cli.in_place,
        root: cli.root,
        max_steps: cli.max_steps,
        symmetry: !cli.no_symmetry,
        pick: cli.pick,
        tsv: cli.tsv,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        let v: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse(&v)?.given().map(|a| *a).ok_or_else(|| "help".into())
    }

    #[test]
    fn flags() {
        let a = args("--coll allgather --algo ring --ranks 64 --oversub 2").unwrap();
        assert_eq!(a.coll, Collective::AllGather);
        assert_eq!(a.which, Which::One(Algorithm::Ring));
        assert_eq!(a.ranks, 64);
        assert_eq!(a.net.oversub, 2.0);
        assert!(args("--algo chain").unwrap_err().contains("has no chain"));
        // oxccl-perf's spellings: -N ranks, -a algorithm, -b -e -f, -r root; the collective
        // as the positional argument.
        let a = args("broadcast -N 16 -a chain -b 1K -e 2T -f 8 -r 3").unwrap();
        assert_eq!(
            (a.coll, a.which, a.ranks, a.min, a.max, a.factor, a.root),
            (
                Collective::Broadcast,
                Which::One(Algorithm::Chain),
                16,
                1024,
                2 << 40,
                8,
                3
            )
        );
        let a = args("").unwrap();
        assert_eq!(
            (a.coll, a.which, a.ranks),
            (Collective::AllReduce, Which::Auto, 8)
        );
        assert_eq!((a.min, a.max, a.factor), (8, 1 << 30, 4));
        assert_eq!((a.net.intra.lat, a.net.inter.bw), (1e-6, 12.5e9));
        assert_eq!(a.net.copy_bw, a.net.reduce_bw);
        assert_eq!(args("-h").unwrap_err(), "help");
    }

    #[test]
    fn machine_overrides_need_a_machine() {
        assert!(args("--alpha 3us").unwrap_err().contains("--machine"));
        let a = args("--machine tcp --ranks 4 --alpha 3us --beta-bw 1GB/s").unwrap();
        assert_eq!(a.machine, Some(Transport::Tcp));
        assert!((a.model.tcp.alpha - 3e-6).abs() < 1e-15);
        assert!((a.model.tcp.beta - 1e-9).abs() < 1e-21);
        assert_eq!(a.model.shm.alpha, Model::default().shm.alpha);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(args("-c allreduce").unwrap_err().contains("'-c'"));
        assert!(
            args("--coll gatherv")
                .unwrap_err()
                .contains("unknown collective")
        );
        assert!(args("allreduce --coll allgather").is_err());
        assert!(args("--ranks 0").is_err());
        assert!(args("-f 1").is_err());
        assert!(
            args("--intra-bw fast")
                .unwrap_err()
                .contains("bad bandwidth")
        );
        assert!(args("--oversub 0.5").unwrap_err().contains("bad factor"));
        assert!(args("--machine ib").unwrap_err().contains("shm or tcp"));
    }
}
