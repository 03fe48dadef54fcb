//! Command-line flags, in nccl-tests' spelling (`-b -e -f -i -n -w -c -d -o -r -z`), plus oxccl's
//! own (`-N`, `--transport`, `--json`, `-a/--algo`, `--watchdog`). Pure: no I/O, unit-tested below.

use std::path::PathBuf;
use std::time::Duration;

use oxccl::{Algorithm, DataType, ReduceOp, TransportKind};

/// The collectives this tool measures, each with nccl-tests' conventions for its test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collective {
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
    pub const ALL: [Collective; 7] = [
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
    pub fn parse(s: &str) -> Option<Collective> {
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
    pub fn name(self) -> &'static str {
        self.lib().key()
    }

    /// The library's collective (send/recv: its send half, which shares the `sendrecv` key).
    pub fn lib(self) -> oxccl::Collective {
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
    pub fn reduces(self) -> bool {
        self.lib().reduces()
    }

    /// Whether it has a root (`-r`); the others print -1 in `root`.
    pub fn rooted(self) -> bool {
        self.lib().rooted()
    }

    /// Whether it has an in-place form. Send/recv has none (a send and a receive cannot share a
    /// buffer); nccl-tests does not check its in-place run either.
    pub fn has_in_place(self) -> bool {
        self != Collective::SendRecv
    }

    /// How many per-rank blocks the `size` column counts: nccl-tests' all_gather_perf,
    /// reduce_scatter_perf and alltoall_perf report the whole n-block buffer as the size and one
    /// block as the count; the others one buffer of `count` elements.
    pub fn blocks(self, nranks: usize) -> usize {
        match self {
            Collective::AllGather | Collective::ReduceScatter | Collective::AllToAll => {
                nranks.max(1)
            }
            _ => 1,
        }
    }

    /// nccl-tests' bus-bandwidth factor for `nranks` ranks: busbw = algbw * factor.
    pub fn busbw_factor(self, nranks: usize) -> f64 {
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
    pub fn algorithms(self) -> &'static [Algorithm] {
        self.lib().algorithms()
    }

    /// The algorithm names, comma-separated, for messages.
    pub fn algorithm_names(self) -> String {
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
pub enum Step {
    /// Multiply by this (`-f`).
    Factor(usize),
    /// Add this many bytes (`-i`).
    Bytes(usize),
}

/// Everything the flags say.
#[derive(Debug, Clone)]
pub struct Options {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
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
    pub fn ops_for(&self) -> Vec<ReduceOp> {
        if self.collective.reduces() {
            self.ops.clone()
        } else {
            vec![ReduceOp::Sum]
        }
    }

    /// The roots the collective runs with: `-r`'s (every rank for `-r -1`) for rooted ones, 0
    /// otherwise.
    pub fn roots_for(&self, nranks: usize) -> Vec<usize> {
        match self.root {
            _ if !self.collective.rooted() => vec![0],
            Some(r) => vec![r],
            None => (0..nranks).collect(),
        }
    }

    /// The table rows of one element type: `(bytes, count)`, as nccl-tests counts them for the
    /// collective (see [`Collective::blocks`]).
    pub fn rows_of(&self, nranks: usize, dtype: DataType) -> Vec<(usize, usize)> {
        let sizes = size_sweep(self.minbytes, self.maxbytes, self.step);
        rows_for(&sizes, dtype.size() * self.collective.blocks(nranks))
    }
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// `-h`: print the usage text and exit 0.
    Help,
    /// Run the benchmark.
    Run(Box<Options>),
}

/// The `-h` text (the algorithm list comes from the library).
pub fn usage() -> String {
    let mut algos = String::new();
    for c in Collective::ALL {
        algos.push_str(&format!("  {:<14}{}\n", c.name(), c.algorithm_names()));
    }
    format!(
        "\
oxccl-perf: collective bandwidth, printed as nccl-tests prints it

USAGE: oxccl-perf [COLLECTIVE] [FLAGS]

COLLECTIVE (default allreduce; nccl-tests' names such as all_gather_perf work too):
  allreduce  allgather  reducescatter  broadcast  reduce  alltoall  sendrecv
  Sizes follow nccl-tests: for allgather, reducescatter and alltoall the size is the whole
  nranks-block buffer and the count one rank's block. busbw = algbw x 2(n-1)/n (allreduce),
  (n-1)/n (allgather, reducescatter, alltoall), 1 (broadcast, reduce, sendrecv).

nccl-tests flags:
  -b, --minbytes <size>       smallest message (default 8); sizes take K, M, G suffixes (x1024)
  -e, --maxbytes <size>       largest message (default 64M)
  -f, --stepfactor <n>        multiply the size by n from one row to the next (default 2)
  -i, --stepbytes <size>      add this many bytes instead (not with -f)
  -n, --iters <n>             timed iterations per row (default 20)
  -w, --warmup_iters <n>      warm-up iterations per row (default 5)
  -c, --check <0|1>           check results; #wrong counts wrong elements (default 1)
  -d, --datatype <type>       int8 uint8 int32 uint32 int64 uint64 half float double bfloat16, or all
                              (default float)
  -o, --op <op>               sum prod max min avg, or all (default sum; reducing collectives)
  -r, --root <rank>           root of broadcast and reduce (default 0; -1: every rank in turn)
  -z, --blocking <0|1>        accepted and ignored (oxccl calls are blocking)
  -t, --nthreads 1, -g, --ngpus 1   accepted (only 1)

oxccl flags:
  -N, --nranks <k>            spawn k local ranks (child processes of this binary) and run them
      --transport <tcp|shm|rdma|auto>
  -a, --algo <name>           force the measured collective's algorithm (as OXCCL_ALGO=KEY:NAME)
      --json <file>           rank 0 writes the config and every row as one JSON object
      --watchdog <seconds>    with -N: kill every rank when the run takes longer (0: never;
                              default: derived from the sweep)
      --bind <auto|core|none> with -N: bind each rank to one of the CPUs this tool may use,
                              consecutive ranks sharing one (core), or leave placement to the
                              scheduler (none); auto (default): core when there are more ranks
                              than CPUs, where the scheduler's placement often puts three ranks
                              on one CPU and one on the other
  -h, --help

Algorithms (-a), per collective:
{algos}
Without -a the header says which algorithm ran (# Algorithm: NAME), or, when the tuner's pick
changes with the size, each row ends with it.

Without -N, the ranks come from a launcher's environment (OXCCL_RANK/OXCCL_WORLD_SIZE/OXCCL_ROOT/
OXCCL_SECRET, torchrun, Slurm, Open MPI), or the tool runs one rank alone. Exit status: 0 when every
check passed, 2 when some element was wrong, 1 on an error.
"
    )
}

/// Parses a byte count such as `8`, `64K`, `64M`, `1G` (binary multiples, as nccl-tests).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let bad = || format!("bad size '{s}': expected a number with an optional K, M or G suffix");
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: usize = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(bad()),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: usize = digits.parse().map_err(|_| bad())?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// The message sizes of the sweep, `min` to `max` inclusive. With a factor, a size of 0 is followed
/// by 1 (so `-b 0` still sweeps). A step that would not grow, or would overflow, ends the sweep.
pub fn size_sweep(min: usize, max: usize, step: Step) -> Vec<usize> {
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
pub fn rows_for(sizes: &[usize], elem_size: usize) -> Vec<(usize, usize)> {
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

fn parse_num(flag: &str, v: &str) -> Result<usize, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("bad value '{v}' for {flag}: expected a non-negative integer"))
}

fn parse_bool01(flag: &str, v: &str) -> Result<bool, String> {
    match v.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(format!("bad value '{v}' for {flag}: expected 0 or 1")),
    }
}

fn parse_dtypes(v: &str) -> Result<Vec<DataType>, String> {
    if v == "all" {
        return Ok(DataType::ALL.to_vec());
    }
    DataType::parse(v).map(|d| vec![d]).ok_or_else(|| {
        let names: Vec<&str> = DataType::ALL.iter().map(|d| d.name()).collect();
        format!(
            "unknown datatype '{v}': expected one of {} or all",
            names.join(", ")
        )
    })
}

fn parse_ops(v: &str) -> Result<Vec<ReduceOp>, String> {
    if v == "all" {
        return Ok(ReduceOp::ALL.to_vec());
    }
    ReduceOp::parse(v).map(|o| vec![o]).ok_or_else(|| {
        let names: Vec<&str> = ReduceOp::ALL.iter().map(|o| o.name()).collect();
        format!(
            "unknown op '{v}': expected one of {} or all",
            names.join(", ")
        )
    })
}

/// Why the run cannot go ahead with `nranks` ranks, if it cannot (checked by every rank, and by
/// `-N` before it starts any).
pub fn unrunnable(o: &Options, nranks: usize) -> Option<String> {
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
pub fn parse_algo(c: Collective, name: &str) -> Result<Algorithm, String> {
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

/// The flags that take a value: (short, long).
const VALUED: &[(&str, &str)] = &[
    ("-b", "--minbytes"),
    ("-e", "--maxbytes"),
    ("-f", "--stepfactor"),
    ("-i", "--stepbytes"),
    ("-n", "--iters"),
    ("-w", "--warmup_iters"),
    ("-c", "--check"),
    ("-d", "--datatype"),
    ("-o", "--op"),
    ("-z", "--blocking"),
    ("-t", "--nthreads"),
    ("-g", "--ngpus"),
    ("-N", "--nranks"),
    ("-a", "--algo"),
    ("-r", "--root"),
    ("", "--transport"),
    ("", "--json"),
    ("", "--watchdog"),
    ("", "--bind"),
];

/// Splits one argument into (canonical long flag, inline value) if it is a known valued flag:
/// `-b8`, `-b`, `--minbytes=8`, `--minbytes`.
fn split_flag(arg: &str) -> Option<(&'static str, Option<String>)> {
    for &(short, long) in VALUED {
        if arg == long || (!short.is_empty() && arg == short) {
            return Some((long, None));
        }
        if let Some(v) = arg.strip_prefix(long).and_then(|r| r.strip_prefix('=')) {
            return Some((long, Some(v.to_string())));
        }
        if let Some(v) = arg
            .strip_prefix(short)
            .filter(|v| !short.is_empty() && !v.is_empty())
        {
            return Some((long, Some(v.strip_prefix('=').unwrap_or(v).to_string())));
        }
    }
    None
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Parsed, String> {
    let mut o = Options {
        collective: Collective::AllReduce,
        minbytes: 8,
        maxbytes: 64 << 20,
        step: Step::Factor(2),
        iters: 20,
        warmup: 5,
        check: true,
        dtypes: vec![DataType::F32],
        ops: vec![ReduceOp::Sum],
        local_ranks: None,
        transport: None,
        json: None,
        root: Some(0),
        algo: None,
        watchdog: None,
        bind: Bind::Auto,
        child_args: Vec::new(),
    };
    let mut factor: Option<usize> = None;
    let mut stepbytes: Option<usize> = None;
    let mut algo: Option<String> = None;
    let mut i = 0;
    if let Some(first) = args.first().filter(|a| !a.starts_with('-')) {
        o.collective = Collective::parse(first).ok_or_else(|| {
            format!(
                "unknown collective '{first}': expected one of {} (or nccl-tests' names, such as all_gather_perf)",
                collective_names()
            )
        })?;
        o.child_args.push(o.collective.name().to_string());
        i = 1;
    }
    while i < args.len() {
        let arg = &args[i];
        if arg == "-h" || arg == "--help" {
            return Ok(Parsed::Help);
        }
        let Some((flag, inline)) = split_flag(arg) else {
            return Err(if arg.starts_with('-') {
                format!("unknown flag '{arg}' (see -h)")
            } else {
                format!("unexpected argument '{arg}' (the collective name goes first; see -h)")
            });
        };
        let consumed = if inline.is_some() { 1 } else { 2 };
        let value = match inline {
            Some(v) => v,
            None => args
                .get(i + 1)
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value (see -h)"))?,
        };
        if flag != "--nranks" {
            o.child_args.extend_from_slice(&args[i..i + consumed]);
        }
        i += consumed;
        match flag {
            "--minbytes" => o.minbytes = parse_size(&value)?,
            "--maxbytes" => o.maxbytes = parse_size(&value)?,
            "--stepfactor" => {
                let f = parse_num(flag, &value)?;
                if f < 2 {
                    return Err(format!("--stepfactor must be at least 2, got {f}"));
                }
                factor = Some(f);
            }
            "--stepbytes" => {
                let b = parse_size(&value)?;
                if b == 0 {
                    return Err("--stepbytes must be at least 1".into());
                }
                stepbytes = Some(b);
            }
            "--iters" => {
                o.iters = parse_num(flag, &value)?;
                if o.iters == 0 {
                    return Err("--iters must be at least 1".into());
                }
            }
            "--warmup_iters" => o.warmup = parse_num(flag, &value)?,
            "--check" => o.check = parse_bool01(flag, &value)?,
            "--datatype" => o.dtypes = parse_dtypes(&value)?,
            "--op" => o.ops = parse_ops(&value)?,
            "--blocking" => {
                parse_bool01(flag, &value)?;
            }
            "--nthreads" | "--ngpus" => {
                if parse_num(flag, &value)? != 1 {
                    return Err(format!(
                        "{flag}: oxccl-perf runs one rank per process (use -N for more)"
                    ));
                }
            }
            "--nranks" => {
                let k = parse_num(flag, &value)?;
                if k == 0 {
                    return Err("-N must be at least 1".into());
                }
                o.local_ranks = Some(k);
            }
            "--transport" => {
                o.transport = Some(TransportKind::parse(&value).ok_or_else(|| {
                    format!("unknown transport '{value}': expected tcp, shm, rdma or auto")
                })?)
            }
            "--json" => o.json = Some(PathBuf::from(value)),
            "--algo" => algo = Some(value),
            "--root" => {
                o.root = match value.trim() {
                    "-1" => None,
                    v => Some(parse_num(flag, v).map_err(|_| {
                        format!(
                            "bad value '{value}' for --root: expected a rank, or -1 for every rank"
                        )
                    })?),
                }
            }
            "--watchdog" => {
                let s: f64 = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        format!("bad value '{value}' for --watchdog: expected seconds")
                    })?;
                o.watchdog = Some(Duration::from_secs_f64(s));
            }
            "--bind" => {
                o.bind = match value.trim() {
                    "auto" => Bind::Auto,
                    "core" => Bind::Core,
                    "none" => Bind::None,
                    v => {
                        return Err(format!(
                            "bad value '{v}' for --bind: expected auto, core or none"
                        ));
                    }
                }
            }
            _ => unreachable!("flag table and match disagree on {flag}"),
        }
    }
    o.step = match (factor, stepbytes) {
        (Some(_), Some(_)) => return Err("give -f (factor) or -i (bytes), not both".into()),
        (None, Some(b)) => Step::Bytes(b),
        (Some(f), None) => Step::Factor(f),
        (None, None) => Step::Factor(2),
    };
    if let Some(name) = algo {
        o.algo = Some(parse_algo(o.collective, &name)?);
    }
    if o.minbytes > o.maxbytes {
        return Err(format!(
            "--minbytes ({}) is larger than --maxbytes ({})",
            o.minbytes, o.maxbytes
        ));
    }
    Ok(Parsed::Run(Box::new(o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options, String> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        match parse_args(&v)? {
            Parsed::Run(o) => Ok(*o),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_size("8"), Ok(8));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
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
            parse("all_gather_perf -N 2").unwrap().child_args,
            vec!["allgather"]
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
    fn dash_n_is_stripped_from_child_args() {
        let o = parse("allreduce -N 4 -b 8 --nranks=4 -e 1K -N2").unwrap();
        assert_eq!(o.local_ranks, Some(2));
        assert_eq!(o.child_args, vec!["allreduce", "-b", "8", "-e", "1K"]);
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
        assert!(parse("-b").unwrap_err().contains("needs a value"));
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
