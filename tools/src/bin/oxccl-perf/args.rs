//! Command-line flags, in nccl-tests' spelling (`-b -e -f -i -n -w -c -d -o -r -z`), plus oxccl's
//! own (`-N`, `--transport`, `--json`, `-a/--algo`, `--watchdog`). Read with clap (derive);
//! pure: no I/O, unit-tested below.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{CommandFactory, Parser};

use oxccl::{Algorithm, DataType, ReduceOp, TransportKind};
use oxccl_tools::units::{parse_bool01, parse_size};
use oxccl_tools::{Flags, read_flags};

/// The collectives this tool measures, each with nccl-tests' conventions for its test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collective {
    /// `allreduce`, as nccl-tests' `all_reduce_perf`.
    AllReduce,
    /// `allgather`, as `all_gather_perf`.
    AllGather,
    /// `reducescatter`, as `reduce_scatter_perf`.
    ReduceScatter,
    /// `broadcast`, as `broadcast_perf`.
    Broadcast,
    /// `reduce`, as `reduce_perf`.
    Reduce,
    /// `alltoall`, as `alltoall_perf`.
    AllToAll,
    /// `sendrecv`, as `sendrecv_perf`: each rank sends to rank+1 and receives from rank-1.
    SendRecv,
}

impl Collective {
    /// Every collective, in the order `-h` lists them.
    pub(crate) const ALL: [Collective; 7] = [
        Collective::AllReduce,
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::Broadcast,
        Collective::Reduce,
        Collective::AllToAll,
        Collective::SendRecv,
    ];

    /// Parses a collective name: ours (`allgather`), with `_` or `-` between the words
    /// (`all_gather`), or nccl-tests' binary name (`all_gather_perf`).
    pub(crate) fn parse(s: &str) -> Option<Collective> {
        let s = s.trim().to_ascii_lowercase();
        let s = s
            .strip_suffix("_perf")
            .unwrap_or(&s)
            .replace(['_', '-'], "");
        match s.as_str() {
            "allreduce" => Some(Collective::AllReduce),
            "allgather" => Some(Collective::AllGather),
            "reducescatter" => Some(Collective::ReduceScatter),
            "broadcast" | "bcast" => Some(Collective::Broadcast),
            "reduce" => Some(Collective::Reduce),
            "alltoall" => Some(Collective::AllToAll),
            "sendrecv" => Some(Collective::SendRecv),
            _ => None,
        }
    }

    /// The name printed in the header and the JSON (and the `-a` key: `Config.algo` keys).
    pub(crate) fn name(self) -> &'static str {
        self.lib().key()
    }

    /// The library's collective (send/recv: its send half, which shares the `sendrecv` key).
    pub(crate) fn lib(self) -> oxccl::Collective {
        match self {
            Collective::AllReduce => oxccl::Collective::AllReduce,
            Collective::AllGather => oxccl::Collective::AllGather,
            Collective::ReduceScatter => oxccl::Collective::ReduceScatter,
            Collective::Broadcast => oxccl::Collective::Broadcast,
            Collective::Reduce => oxccl::Collective::Reduce,
            Collective::AllToAll => oxccl::Collective::AllToAll,
            Collective::SendRecv => oxccl::Collective::Send,
        }
    }

    /// Whether it takes a reduction operator (`-o`); the others print `none` in `redop`.
    pub(crate) fn reduces(self) -> bool {
        self.lib().reduces()
    }

    /// Whether it has a root (`-r`); the others print -1 in `root`.
    pub(crate) fn rooted(self) -> bool {
        self.lib().rooted()
    }

    /// Whether it has an in-place form. Send/recv has none (a send and a receive cannot share a
    /// buffer); nccl-tests does not check its in-place run either.
    pub(crate) fn has_in_place(self) -> bool {
        self != Collective::SendRecv
    }

    /// How many per-rank blocks the `size` column counts: nccl-tests' all_gather_perf,
    /// reduce_scatter_perf and alltoall_perf report the whole n-block buffer as the size and one
    /// block as the count; the others one buffer of `count` elements.
    pub(crate) fn blocks(self, nranks: usize) -> usize {
        match self {
            Collective::AllGather | Collective::ReduceScatter | Collective::AllToAll => {
                nranks.max(1)
            }
            _ => 1,
        }
    }

    /// nccl-tests' bus-bandwidth factor for `nranks` ranks: busbw = algbw * factor.
    pub(crate) fn busbw_factor(self, nranks: usize) -> f64 {
        let n = nranks as f64;
        match self {
            _ if nranks == 0 => 0.0,
            Collective::AllReduce => 2.0 * (n - 1.0) / n,
            Collective::AllGather | Collective::ReduceScatter | Collective::AllToAll => {
                (n - 1.0) / n
            }
            Collective::Broadcast | Collective::Reduce | Collective::SendRecv => 1.0,
        }
    }

    /// The algorithms that implement it (the library's list).
    pub(crate) fn algorithms(self) -> &'static [Algorithm] {
        self.lib().algorithms()
    }

    /// The algorithm names, comma-separated, for messages.
    pub(crate) fn algorithm_names(self) -> String {
        let v: Vec<&str> = self.algorithms().iter().map(|a| a.name()).collect();
        v.join(", ")
    }
}

/// The collective names `-h` and errors list.
fn collective_names() -> String {
    let v: Vec<&str> = Collective::ALL.iter().map(|c| c.name()).collect();
    v.join(", ")
}

/// How the message size grows from one row to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Multiply by this (`-f`).
    Factor(usize),
    /// Add this many bytes (`-i`).
    Bytes(usize),
}

/// Everything the flags say.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The collective measured.
    pub collective: Collective,
    /// Smallest message in bytes (`-b`).
    pub minbytes: usize,
    /// Largest message in bytes (`-e`).
    pub maxbytes: usize,
    /// Growth between rows (`-f` or `-i`).
    pub step: Step,
    /// Timed iterations per row (`-n`).
    pub iters: usize,
    /// Untimed warm-up iterations per row (`-w`).
    pub warmup: usize,
    /// Whether to check results (`-c`).
    pub check: bool,
    /// Whether the buffers come from oxccl's registered memory (`-R 1`, [`oxccl::SharedMem`]).
    pub registered: bool,
    /// Element types, in the order measured (`-d`, `all` for every one).
    pub dtypes: Vec<DataType>,
    /// Operators, in the order measured (`-o`, `all` for every one).
    pub ops: Vec<ReduceOp>,
    /// Spawn this many local ranks (`-N`).
    pub local_ranks: Option<usize>,
    /// Transport to ask for (`--transport`).
    pub transport: Option<TransportKind>,
    /// Write a JSON report here (`--json`, rank 0 only).
    pub json: Option<PathBuf>,
    /// Root rank of rooted collectives (`-r`, default 0); `None` (`-r -1`): every rank in turn.
    pub root: Option<usize>,
    /// Algorithm to force for the measured collective (`-a/--algo`), checked against the ones
    /// that implement it.
    pub algo: Option<Algorithm>,
    /// Deadline on the whole `-N` run; `None` = derived from the sweep, `Some(ZERO)` = off.
    pub watchdog: Option<Duration>,
    /// How `-N` places its ranks on CPUs (`--bind`).
    pub bind: Bind,
    /// The raw arguments minus `-N` (and its value): what `-N` passes to each child rank.
    pub child_args: Vec<String>,
}

/// How `-N` places its ranks on CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Bind {
    /// `core` when there are more ranks than CPUs, else `none`.
    Auto,
    /// Each rank on one CPU, consecutive ranks sharing one: with k ranks on n CPUs, rank r on
    /// the (r·n/k)-th.
    Core,
    /// Wherever the scheduler puts them.
    None,
}

impl Options {
    /// The operators the collective runs with: `-o`'s for reductions, one (shown as `none`)
    /// otherwise.
    pub(crate) fn ops_for(&self) -> Vec<ReduceOp> {
        if self.collective.reduces() {
            self.ops.clone()
        } else {
            vec![ReduceOp::Sum]
        }
    }

    /// The roots the collective runs with: `-r`'s (every rank for `-r -1`) for rooted ones, 0
    /// otherwise.
    pub(crate) fn roots_for(&self, nranks: usize) -> Vec<usize> {
        match self.root {
            _ if !self.collective.rooted() => vec![0],
            Some(r) => vec![r],
            None => (0..nranks).collect(),
        }
    }

    /// The table rows of one element type: `(bytes, count)`, as nccl-tests counts them for the
    /// collective (see [`Collective::blocks`]).
    pub(crate) fn rows_of(&self, nranks: usize, dtype: DataType) -> Vec<(usize, usize)> {
        let sizes = size_sweep(self.minbytes, self.maxbytes, self.step);
        rows_for(&sizes, dtype.size() * self.collective.blocks(nranks))
    }
}

/// The `-h` text after the flags: the collectives' conventions and every algorithm (the list
/// comes from the library).
fn after_help() -> String {
    let mut algos = String::new();
    for c in Collective::ALL {
        algos.push_str(&format!("  {:<14}{}\n", c.name(), c.algorithm_names()));
    }
    format!(
        "\
Collectives follow nccl-tests: for allgather, reducescatter and alltoall the size is the whole
nranks-block buffer and the count one rank's block. busbw = algbw x 2(n-1)/n (allreduce), (n-1)/n
(allgather, reducescatter, alltoall), 1 (broadcast, reduce, sendrecv).

Algorithms (-a), per collective:
{algos}
Without -a the header says which algorithm ran (# Algorithm: NAME), or, when the tuner's pick
changes with the size, each row ends with it.

Without -N, the ranks come from a launcher's environment (OXCCL_RANK/OXCCL_WORLD_SIZE/OXCCL_ROOT/
OXCCL_SECRET, torchrun, Slurm, Open MPI), or the tool runs one rank alone. Exit status: 0 when every
check passed, 2 when some element was wrong, 1 on an error."
    )
}

/// Element types of `-d` (one, or every one for `all`).
#[derive(Debug, Clone)]
struct DataTypes(Vec<DataType>);

/// Operators of `-o` (one, or every one for `all`).
#[derive(Debug, Clone)]
struct Ops(Vec<ReduceOp>);

/// `-r`: a rank, or every rank in turn (`-1`).
#[derive(Debug, Clone, Copy)]
struct Root(Option<usize>);

/// The flags as clap reads them, in nccl-tests' spelling; [`parse_args`] checks them together
/// and turns them into [`Options`].
#[derive(Debug, Parser)]
#[command(
    name = "oxccl-perf",
    about = "oxccl-perf: collective bandwidth, printed as nccl-tests prints it",
    args_override_self = true,
    disable_version_flag = true
)]
struct Cli {
    /// allreduce (default), allgather, reducescatter, broadcast, reduce, alltoall, sendrecv;
    /// nccl-tests' names such as all_gather_perf work too
    #[arg(value_name = "COLLECTIVE", value_parser = parse_collective)]
    collective: Option<Collective>,
    /// Smallest message; sizes take K, M, G, T suffixes (x1024)
    #[arg(short = 'b', long = "minbytes", value_name = "SIZE", default_value = "8", value_parser = parse_size)]
    minbytes: usize,
    /// Largest message
    #[arg(short = 'e', long = "maxbytes", value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    maxbytes: usize,
    /// Multiply the size by N from one row to the next [default: 2]
    #[arg(short = 'f', long = "stepfactor", value_name = "N", conflicts_with = "stepbytes",
          value_parser = RangedU64ValueParser::<usize>::new().range(2..))]
    stepfactor: Option<usize>,
    /// Add this many bytes from one row to the next instead
    #[arg(short = 'i', long = "stepbytes", value_name = "SIZE", value_parser = positive_size)]
    stepbytes: Option<usize>,
    /// Timed iterations per row
    #[arg(short = 'n', long = "iters", value_name = "N", default_value = "20",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    iters: usize,
    /// Warm-up iterations per row
    #[arg(short = 'w', long = "warmup_iters", value_name = "N", default_value = "5",
          value_parser = RangedU64ValueParser::<usize>::new())]
    warmup: usize,
    /// Check results; #wrong counts wrong elements
    #[arg(short = 'c', long = "check", value_name = "0|1", default_value = "1",
          action = clap::ArgAction::Set, value_parser = parse_bool01)]
    check: bool,
    /// int8 uint8 int32 uint32 int64 uint64 half float double bfloat16, or all
    #[arg(short = 'd', long = "datatype", value_name = "TYPE", default_value = "float", value_parser = parse_dtypes)]
    dtypes: DataTypes,
    /// sum prod max min avg, or all (reducing collectives)
    #[arg(short = 'o', long = "op", value_name = "OP", default_value = "sum", value_parser = parse_ops)]
    ops: Ops,
    /// Root of broadcast and reduce; -1: every rank in turn
    #[arg(short = 'r', long = "root", value_name = "RANK", default_value = "0",
          allow_negative_numbers = true, value_parser = parse_root)]
    root: Root,
    /// 1: allocate the buffers as registered memory (oxccl::SharedMem, oxcclMemAlloc), which
    /// peers on the host read directly; 0: plain heap memory (as nccl-tests' -R)
    #[arg(short = 'R', long = "registered", value_name = "0|1", default_value = "0",
          action = clap::ArgAction::Set, value_parser = parse_bool01)]
    registered: bool,
    /// Accepted and ignored (oxccl calls are blocking)
    #[arg(short = 'z', long = "blocking", value_name = "0|1", value_parser = parse_bool01)]
    blocking: Option<bool>,
    /// Accepted when 1 (one rank per process: use -N for more)
    #[arg(short = 't', long = "nthreads", value_name = "1", value_parser = only_one)]
    nthreads: Option<usize>,
    /// Accepted when 1 (one rank per process: use -N for more)
    #[arg(short = 'g', long = "ngpus", value_name = "1", value_parser = only_one)]
    ngpus: Option<usize>,
    /// Spawn K local ranks (child processes of this binary) and run them
    #[arg(short = 'N', long = "nranks", value_name = "K",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    nranks: Option<usize>,
    /// The transport to ask for
    #[arg(long, value_name = "tcp|shm|rdma|auto", value_parser = parse_transport)]
    transport: Option<TransportKind>,
    /// Force the measured collective's algorithm (as OXCCL_ALGO=KEY:NAME)
    #[arg(short = 'a', long = "algo", value_name = "NAME")]
    algo: Option<String>,
    /// Rank 0 writes the config and every row as one JSON object
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// With -N: kill every rank when the run takes longer (0: never; default: derived from the
    /// sweep)
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    watchdog: Option<Duration>,
    /// With -N: bind each rank to one of the CPUs this tool may use, consecutive ranks sharing
    /// one (core), or leave placement to the scheduler (none); auto: core when there are more
    /// ranks than CPUs
    #[arg(long, value_enum, default_value_t = Bind::Auto)]
    bind: Bind,
}

fn parse_collective(s: &str) -> Result<Collective, String> {
    Collective::parse(s).ok_or_else(|| {
        format!(
            "unknown collective '{s}': expected one of {} (or nccl-tests' names, such as all_gather_perf)",
            collective_names()
        )
    })
}

fn positive_size(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        0 => Err("must be at least 1".into()),
        b => Ok(b),
    }
}

fn only_one(s: &str) -> Result<usize, String> {
    match s.trim() {
        "1" => Ok(1),
        _ => Err("oxccl-perf runs one rank per process (use -N for more)".into()),
    }
}

fn parse_root(s: &str) -> Result<Root, String> {
    match s.trim() {
        "-1" => Ok(Root(None)),
        v => v
            .parse()
            .map(|r| Root(Some(r)))
            .map_err(|_| format!("bad root '{s}': expected a rank, or -1 for every rank")),
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("bad value '{s}': expected seconds"))
}

fn parse_transport(s: &str) -> Result<TransportKind, String> {
    TransportKind::parse(s)
        .ok_or_else(|| format!("unknown transport '{s}': expected tcp, shm, rdma or auto"))
}

fn parse_dtypes(v: &str) -> Result<DataTypes, String> {
    if v == "all" {
        return Ok(DataTypes(DataType::ALL.to_vec()));
    }
    DataType::parse(v)
        .map(|d| DataTypes(vec![d]))
        .ok_or_else(|| {
            let names: Vec<&str> = DataType::ALL.iter().map(|d| d.name()).collect();
            format!(
                "unknown datatype '{v}': expected one of {} or all",
                names.join(", ")
            )
        })
}

fn parse_ops(v: &str) -> Result<Ops, String> {
    if v == "all" {
        return Ok(Ops(ReduceOp::ALL.to_vec()));
    }
    ReduceOp::parse(v).map(|o| Ops(vec![o])).ok_or_else(|| {
        let names: Vec<&str> = ReduceOp::ALL.iter().map(|o| o.name()).collect();
        format!(
            "unknown op '{v}': expected one of {} or all",
            names.join(", ")
        )
    })
}

/// The message sizes of the sweep, `min` to `max` inclusive. With a factor, a size of 0 is followed
/// by 1 (so `-b 0` still sweeps). A step that would not grow, or would overflow, ends the sweep.
pub(crate) fn size_sweep(min: usize, max: usize, step: Step) -> Vec<usize> {
    let mut out = Vec::new();
    let mut s = min;
    while s <= max {
        out.push(s);
        let next = match step {
            Step::Factor(_) if s == 0 => Some(1),
            Step::Factor(f) => s.checked_mul(f),
            Step::Bytes(b) => s.checked_add(b),
        };
        match next {
            Some(n) if n > s => s = n,
            _ => break,
        }
    }
    out
}

/// The table rows for one element type: `(bytes, count)` with count = floor(size / element size)
/// and bytes = count * element size (as nccl-tests reports it). Sizes too small for one element are
/// skipped, except an explicit size 0; a row equal to the previous one is not repeated.
pub(crate) fn rows_for(sizes: &[usize], elem_size: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &s in sizes {
        let count = s / elem_size;
        if count == 0 && s != 0 {
            continue;
        }
        let row = (count * elem_size, count);
        if out.last() != Some(&row) {
            out.push(row);
        }
    }
    out
}

/// Why the run cannot go ahead with `nranks` ranks, if it cannot (checked by every rank, and by
/// `-N` before it starts any).
pub(crate) fn unrunnable(o: &Options, nranks: usize) -> Option<String> {
    let c = o.collective;
    if c == Collective::SendRecv && nranks < 2 {
        return Some(format!(
            "sendrecv needs at least 2 ranks (each rank sends to the next), not {nranks}"
        ));
    }
    match o.root {
        Some(r) if c.rooted() && r >= nranks => Some(format!(
            "root {r} (-r) is not a rank of this {nranks}-rank run"
        )),
        _ => None,
    }
}

/// Checks `-a NAME` against the algorithms that implement `c`.
pub(crate) fn parse_algo(c: Collective, name: &str) -> Result<Algorithm, String> {
    let known = || format!("{} has {}", c.name(), c.algorithm_names());
    let a = Algorithm::parse(name)
        .ok_or_else(|| format!("unknown algorithm '{name}' for -a: {}", known()))?;
    if !c.algorithms().contains(&a) {
        return Err(format!(
            "algorithm '{}' does not implement {}: {}",
            a.name(),
            c.name(),
            known()
        ));
    }
    Ok(a)
}

/// Parses the arguments after the program name: clap reads the flags, then the checks that
/// involve several of them (`-a` against the collective, `-b` against `-e`).
pub(crate) fn parse_args(args: &[String]) -> Result<Flags<Box<Options>>, String> {
    let cli: Cli = match read_flags(Cli::command().after_help(after_help()), args)? {
        Flags::Help(text) => return Ok(Flags::Help(text)),
        Flags::Given(cli) => cli,
    };
    let collective = cli.collective.unwrap_or(Collective::AllReduce);
    let algo = match &cli.algo {
        Some(name) => Some(parse_algo(collective, name)?),
        None => None,
    };
    if cli.minbytes > cli.maxbytes {
        return Err(format!(
            "--minbytes ({}) is larger than --maxbytes ({})",
            cli.minbytes, cli.maxbytes
        ));
    }
    let mut o = Options {
        collective,
        minbytes: cli.minbytes,
        maxbytes: cli.maxbytes,
        step: match cli.stepbytes {
            Some(b) => Step::Bytes(b),
            None => Step::Factor(cli.stepfactor.unwrap_or(2)),
        },
        iters: cli.iters,
        warmup: cli.warmup,
        check: cli.check,
        registered: cli.registered,
        dtypes: cli.dtypes.0,
        ops: cli.ops.0,
        local_ranks: cli.nranks,
        transport: cli.transport,
        json: cli.json,
        root: cli.root.0,
        algo,
        watchdog: cli.watchdog,
        bind: cli.bind,
        child_args: Vec::new(),
    };
    o.child_args = child_args(&o);
    Ok(Flags::Given(Box::new(o)))
}

/// What `-N` passes to each child rank: the same run, spelled canonically, without `-N` (and
/// without `--watchdog` and `--bind`, which only `-N` uses).
fn child_args(o: &Options) -> Vec<String> {
    let list = |names: Vec<&str>, all: usize| match names.as_slice() {
        [one] => one.to_string(),
        _ if names.len() == all => "all".to_string(),
        _ => names.join(","),
    };
    let mut v = vec![
        o.collective.name().to_string(),
        format!("--minbytes={}", o.minbytes),
        format!("--maxbytes={}", o.maxbytes),
        match o.step {
            Step::Factor(f) => format!("--stepfactor={f}"),
            Step::Bytes(b) => format!("--stepbytes={b}"),
        },
        format!("--iters={}", o.iters),
        format!("--warmup_iters={}", o.warmup),
        format!("--check={}", u8::from(o.check)),
        format!("--registered={}", u8::from(o.registered)),
        format!(
            "--datatype={}",
            list(
                o.dtypes.iter().map(|d| d.name()).collect(),
                DataType::ALL.len()
            )
        ),
        format!(
            "--op={}",
            list(
                o.ops.iter().map(|d| d.name()).collect(),
                ReduceOp::ALL.len()
            )
        ),
        format!("--root={}", o.root.map_or(-1, |r| r as i64)),
    ];
    if let Some(t) = o.transport {
        v.push(format!("--transport={}", t.name()));
    }
    if let Some(a) = o.algo {
        v.push(format!("--algo={}", a.name()));
    }
    if let Some(j) = &o.json {
        v.push(format!("--json={}", j.display()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options, String> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse_args(&v)?
            .given()
            .map(|o| *o)
            .ok_or_else(|| "help".into())
    }

    #[test]
    fn defaults_match_nccl_tests() {
        let o = parse("").unwrap();
        assert_eq!(
            (o.minbytes, o.maxbytes, o.step),
            (8, 64 << 20, Step::Factor(2))
        );
        assert_eq!((o.iters, o.warmup, o.check), (20, 5, true));
        assert_eq!(o.dtypes, vec![DataType::F32]);
        assert_eq!(o.ops, vec![ReduceOp::Sum]);
        assert_eq!(o.collective, Collective::AllReduce);
        assert!(o.local_ranks.is_none());
    }

    #[test]
    fn flag_spellings() {
        let o = parse(
            "allreduce -b 1K -e=4M --stepfactor 4 -n3 --warmup_iters=0 -c 0 -d int32 -o max -z 1",
        )
        .unwrap();
        assert_eq!(
            (o.minbytes, o.maxbytes, o.step),
            (1024, 4 << 20, Step::Factor(4))
        );
        assert_eq!((o.iters, o.warmup, o.check), (3, 0, false));
        assert_eq!(o.dtypes, vec![DataType::I32]);
        assert_eq!(o.ops, vec![ReduceOp::Max]);
        let o = parse("-i 1M -b 1M -e 4M -o all -d all --json out.json -a ring").unwrap();
        assert_eq!(o.step, Step::Bytes(1 << 20));
        assert_eq!(o.ops.len(), ReduceOp::ALL.len());
        assert_eq!(o.dtypes.len(), DataType::ALL.len());
        assert_eq!(o.json, Some(PathBuf::from("out.json")));
        assert_eq!(o.algo, Some(Algorithm::Ring));
        let o = parse("broadcast -r 2 --algo=chain").unwrap();
        assert_eq!((o.root, o.algo), (Some(2), Some(Algorithm::Chain)));
        assert_eq!(parse("reduce -r -1").unwrap().root, None);
        assert_eq!(parse("reduce --root=-1").unwrap().root, None);
        assert_eq!(parse("").unwrap().bind, Bind::Auto);
        assert_eq!(parse("--bind core").unwrap().bind, Bind::Core);
        assert_eq!(parse("--bind=none").unwrap().bind, Bind::None);
    }

    #[test]
    fn collective_names() {
        for (name, c) in [
            ("allreduce", Collective::AllReduce),
            ("all_reduce_perf", Collective::AllReduce),
            ("all-gather", Collective::AllGather),
            ("all_gather_perf", Collective::AllGather),
            ("reduce_scatter_perf", Collective::ReduceScatter),
            ("ReduceScatter", Collective::ReduceScatter),
            ("broadcast_perf", Collective::Broadcast),
            ("reduce_perf", Collective::Reduce),
            ("alltoall_perf", Collective::AllToAll),
            ("all_to_all", Collective::AllToAll),
            ("sendrecv_perf", Collective::SendRecv),
        ] {
            assert_eq!(Collective::parse(name), Some(c), "{name}");
        }
        for c in Collective::ALL {
            assert_eq!(Collective::parse(c.name()), Some(c));
            assert_eq!(parse(c.name()).unwrap().collective, c);
            // The key -a passes into Config.algo is the library's.
            assert_eq!(c.name(), c.lib().key());
        }
        assert_eq!(Collective::parse("gather_perf"), None);
        // The children get the canonical name.
        assert_eq!(
            parse("all_gather_perf -N 2").unwrap().child_args[0],
            "allgather"
        );
    }

    #[test]
    fn algo_is_checked_against_the_collective() {
        for c in Collective::ALL {
            for &a in c.algorithms() {
                assert_eq!(parse_algo(c, a.name()), Ok(a));
            }
        }
        let e = parse("-a warp").unwrap_err();
        assert!(
            e.contains("unknown algorithm 'warp'") && e.contains("ring"),
            "{e}"
        );
        let e = parse("allreduce -a chain").unwrap_err();
        assert!(e.contains("'chain' does not implement allreduce"), "{e}");
        let e = parse("broadcast -a ring").unwrap_err();
        assert!(e.contains("broadcast has chain, tree"), "{e}");
    }

    #[test]
    fn unrunnable_runs_are_named() {
        let o = parse("sendrecv").unwrap();
        assert!(unrunnable(&o, 1).unwrap().contains("at least 2 ranks"));
        assert_eq!(unrunnable(&o, 2), None);
        let o = parse("broadcast -r 3").unwrap();
        assert!(unrunnable(&o, 3).unwrap().contains("root 3"));
        assert_eq!(unrunnable(&o, 4), None);
        // Rootless collectives ignore -r.
        assert_eq!(unrunnable(&parse("allgather -r 3").unwrap(), 2), None);
    }

    #[test]
    fn rows_follow_nccl_tests_per_collective() {
        // all_gather_perf & co: the size is the whole buffer, the count one rank's block.
        let o = parse("allgather -b 8 -e 64 -f 2").unwrap();
        assert_eq!(o.rows_of(3, DataType::F32), vec![(12, 1), (24, 2), (60, 5)]);
        let o = parse("alltoall -b 8 -e 64 -f 2").unwrap();
        assert_eq!(
            o.rows_of(2, DataType::F32),
            vec![(8, 1), (16, 2), (32, 4), (64, 8)]
        );
        let o = parse("broadcast -b 8 -e 16 -f 2").unwrap();
        assert_eq!(o.rows_of(3, DataType::F32), vec![(8, 2), (16, 4)]);
        // Operators and roots.
        assert_eq!(
            parse("allgather -o all").unwrap().ops_for(),
            vec![ReduceOp::Sum]
        );
        assert_eq!(
            parse("reduce -o all").unwrap().ops_for().len(),
            ReduceOp::ALL.len()
        );
        assert_eq!(parse("reduce -r -1").unwrap().roots_for(3), vec![0, 1, 2]);
        assert_eq!(parse("allreduce -r 2").unwrap().roots_for(3), vec![0]);
    }

    #[test]
    fn child_args_are_the_same_run_without_dash_n() {
        let o = parse("allreduce -N 4 -b 8 --nranks=4 -e 1K -N2").unwrap();
        assert_eq!(o.local_ranks, Some(2));
        assert_eq!(
            o.child_args[..3],
            ["allreduce", "--minbytes=8", "--maxbytes=1024"]
        );
        // The children parse back to the same options, without -N, -- watchdog and --bind.
        for line in [
            "allreduce -N 4 -b 8 -e 1K",
            "all_gather_perf -N 2 -i 1K -e 1M -n 3 -w 0 -c 0 -d all -o max -a ring",
            "reduce -N 3 -r -1 -d bfloat16 -o all --transport tcp --json out.json",
            "broadcast -N 3 -r 2 -f 4 --watchdog 9 --bind core -a chain",
        ] {
            let o = parse(line).unwrap();
            let c = parse_args(&o.child_args).unwrap().given().unwrap();
            assert_eq!(c.child_args, o.child_args, "{line}");
            assert_eq!(c.local_ranks, None, "{line}");
            assert_eq!(
                (
                    c.collective,
                    c.minbytes,
                    c.maxbytes,
                    c.step,
                    c.iters,
                    c.warmup,
                    c.check
                ),
                (
                    o.collective,
                    o.minbytes,
                    o.maxbytes,
                    o.step,
                    o.iters,
                    o.warmup,
                    o.check
                ),
                "{line}"
            );
            assert_eq!(
                (&c.dtypes, &c.ops, c.root, c.algo),
                (&o.dtypes, &o.ops, o.root, o.algo)
            );
            assert_eq!((c.transport, &c.json), (o.transport, &o.json), "{line}");
        }
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(parse("--bogus").unwrap_err().contains("--bogus"));
        let e = parse("gather").unwrap_err();
        assert!(
            e.contains("unknown collective 'gather'") && e.contains("sendrecv"),
            "{e}"
        );
        assert!(parse("-r x").unwrap_err().contains("--root"));
        assert!(parse("-d nope").unwrap_err().contains("unknown datatype"));
        assert!(parse("-o nope").unwrap_err().contains("unknown op"));
        assert!(parse("-b").unwrap_err().contains("a value is required"));
        assert!(parse("-b 1M -e 1K").unwrap_err().contains("larger"));
        assert!(parse("--bind socket").unwrap_err().contains("--bind"));
        assert!(parse("-f 2 -i 8").is_err());
        assert!(parse("-f 1").is_err());
        assert!(parse("-c 2").is_err());
        assert!(parse("-n 0").is_err());
        assert!(parse("-N 0").is_err());
        assert!(parse("-g 2").is_err());
        assert!(
            parse("--transport carrier-pigeon")
                .unwrap_err()
                .contains("transport")
        );
        assert!(
            parse("-b 8 stray")
                .unwrap_err()
                .contains("unknown collective 'stray'")
        );
        assert!(
            parse("allreduce broadcast")
                .unwrap_err()
                .contains("unexpected argument")
        );
        assert_eq!(parse("-b 8 -h").unwrap_err(), "help");
    }

    #[test]
    fn sweep_by_factor_and_bytes() {
        assert_eq!(size_sweep(8, 64, Step::Factor(2)), vec![8, 16, 32, 64]);
        assert_eq!(size_sweep(8, 100, Step::Factor(4)), vec![8, 32]);
        assert_eq!(size_sweep(0, 4, Step::Factor(2)), vec![0, 1, 2, 4]);
        assert_eq!(size_sweep(10, 30, Step::Bytes(10)), vec![10, 20, 30]);
        assert_eq!(size_sweep(5, 5, Step::Factor(2)), vec![5]);
        assert_eq!(
            size_sweep(usize::MAX / 2 + 1, usize::MAX, Step::Factor(2)).len(),
            1
        );
    }

    #[test]
    fn rows_floor_to_whole_elements() {
        let sizes = size_sweep(1, 64, Step::Factor(2));
        assert_eq!(
            rows_for(&sizes, 4),
            vec![(4, 1), (8, 2), (16, 4), (32, 8), (64, 16)]
        );
        assert_eq!(rows_for(&[0, 1, 2, 10], 8), vec![(0, 0), (8, 1)]);
        assert_eq!(rows_for(&[10, 11, 20], 4), vec![(8, 2), (20, 5)]);
    }

    #[test]
    fn busbw_factor_is_nccl_tests() {
        use Collective::*;
        assert_eq!(AllReduce.busbw_factor(1), 0.0);
        assert_eq!(AllReduce.busbw_factor(2), 1.0);
        assert_eq!(AllReduce.busbw_factor(4), 1.5);
        for c in [AllGather, ReduceScatter, AllToAll] {
            assert_eq!(c.busbw_factor(4), 0.75);
            assert_eq!(c.busbw_factor(1), 0.0);
        }
        for c in [Broadcast, Reduce, SendRecv] {
            assert_eq!(c.busbw_factor(4), 1.0);
        }
        assert_eq!(AllReduce.busbw_factor(0), 0.0);
        // Which columns say "none" and -1.
        let reducing: Vec<_> = Collective::ALL
            .into_iter()
            .filter(|c| c.reduces())
            .collect();
        assert_eq!(reducing, vec![AllReduce, ReduceScatter, Reduce]);
        let rooted: Vec<_> = Collective::ALL.into_iter().filter(|c| c.rooted()).collect();
        assert_eq!(rooted, vec![Broadcast, Reduce]);
    }
}
