//! Command-line parsing for `oxccl-sim`: sizes, durations and bandwidths with units.

use oxccl::sim::{Link, Network};
use oxccl::tune::{Model, Transport};
use oxccl::{Algorithm, Collective};

/// Which algorithms to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// One, forced.
    One(Algorithm),
    /// The tuner's pick at each size.
    Auto,
    /// Every algorithm of the collective.
    All,
}

/// Everything the command line says.
#[derive(Debug, Clone)]
pub struct Args {
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

/// The usage text.
pub fn usage() -> &'static str {
    "oxccl-sim: replay oxccl's real Programs of a collective on a modelled network

USAGE: oxccl-sim [--coll] allreduce|allgather|reducescatter|broadcast|reduce|alltoall|gather|
                 scatter|barrier  [FLAGS]

  --algo <a>              ring tree rhd direct chain bruck pairwise ..., auto (the tuner's pick,
                          default) or all (every algorithm of the collective)
  --ranks <n>             ranks (default 8)
  --ranks-per-host <k>    ranks per host (default 8; ranks fill hosts in order)
  --intra-lat <t>         latency between ranks of a host (default 1us)
  --intra-bw <bw>         bandwidth of each rank's intra-host port (default 20GB/s)
  --inter-lat <t>         latency between hosts (default 5us)
  --inter-bw <bw>         bandwidth of each network port (default 12.5GB/s)
  --nics-per-host <k>     NICs (rails) per host, local rank l on NIC l mod k (default 0: one per
                          rank)
  --intra-ovh <t>, --inter-ovh <t>   per-message overhead on each side: port time per message
                          (default 0.1us, 0.5us: a NIC's message rate)
  --reduce-bw <bw>        reduction speed of a rank (default 50GB/s)
  --copy-bw <bw>          local copy speed of a rank (default: the reduction speed)
  --oversub <f>           the network core carries ports x inter-bw / f (default 1: full bisection)
  --credits <k>           messages in flight per link (default 4)
  --cores-per-host <c>    cores the ranks of a host share (default 0: one per rank)
  --host-driven           sends occupy the sending rank's CPU (shm, TCP) instead of a NIC
  --recv-copy             every receive copies out of a slot (default: receives whose buffer is
                          free are posted and land in place)
  --machine <shm|tcp>     this machine as the tuner models it (one host; overrides the network)
  --alpha <t> --beta-bw <bw> --gamma-bw <bw> --overhead <t> --wake <t> --cores <c>
  --cache <size> --cache-speedup <f>
                          with --machine: override the model's numbers (to fit them)
  -b <size> -e <size> -f <factor>    sweep (default 8 to 1G, x4); sizes take K M G (x1024)
  --chunk <size>          largest message (default 512K, as the library)
  --in-place, --root <r>
  --max-steps <n>         replay budget before chunks are coarsened (default 6000000)
  --no-symmetry           replay every rank
  --pick                  print only the tuner's pick per size (\"size algo\")
  --tsv                   print \"size algo time_us\" rows
  -h, --help

Units: times s ms us ns (default s); bandwidths B/s KB/s MB/s GB/s (10^3 steps) or GiB/s;
sizes K M G (x1024). busbw uses nccl-tests' factors; GB/s is 10^9 bytes per second.
"
}

/// A duration such as `5us`, `1.5ms`, `2e-6` (seconds).
pub fn parse_time(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, mult) = [("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3), ("s", 1.0)]
        .iter()
        .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((t, 1.0));
    match num.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v * mult),
        _ => Err(format!("bad time '{s}': expected e.g. 5us, 1.5ms, 2e-6")),
    }
}

/// A bandwidth such as `12.5GB/s`, `800MB/s`, `10GiB/s`, `1e9` (bytes per second).
pub fn parse_bw(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let units = [
        ("GiB/s", (1u64 << 30) as f64),
        ("MiB/s", (1u64 << 20) as f64),
        ("GB/s", 1e9),
        ("MB/s", 1e6),
        ("KB/s", 1e3),
        ("B/s", 1.0),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((t, 1.0));
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v * mult),
        _ => Err(format!(
            "bad bandwidth '{s}': expected e.g. 12.5GB/s, 800MB/s"
        )),
    }
}

/// A size such as `8`, `64K`, `1G` (x1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1usize << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|v| v.checked_mul(mult))
        .ok_or_else(|| format!("bad size '{s}': expected a number with an optional K, M or G"))
}

/// The collective named on the command line (`allreduce`, `all_reduce`, ...).
pub fn parse_coll(s: &str) -> Option<Collective> {
    let k = s.replace(['_', '-'], "").to_ascii_lowercase();
    Collective::ALL
        .into_iter()
        .find(|c| c.key() == k || c.name().replace('_', "") == k)
}

/// Parses the arguments (without the program name). `Ok(None)` means help was asked for.
pub fn parse(argv: &[String]) -> Result<Option<Args>, String> {
    let mut a = Args {
        coll: Collective::AllReduce,
        which: Which::Auto,
        ranks: 8,
        net: Network {
            ranks_per_host: 8,
            intra: Link {
                lat: 1e-6,
                bw: 20e9,
                overhead: 0.1e-6,
            },
            inter: Link {
                lat: 5e-6,
                bw: 12.5e9,
                overhead: 0.5e-6,
            },
            reduce_bw: 50e9,
            copy_bw: 50e9,
            oversub: 1.0,
            credits: 4,
            cores_per_host: 0,
            host_driven: false,
            posted_recv: true,
            nics_per_host: 0,
        },
        machine: None,
        model: Model::default(),
        min: 8,
        max: 1 << 30,
        factor: 4,
        chunk: oxccl::tune::chunk(None),
        in_place: false,
        root: 0,
        max_steps: oxccl::sim::MAX_STEPS,
        symmetry: true,
        pick: false,
        tsv: false,
    };
    let mut algo: Option<String> = None;
    let mut costs: Vec<(&str, f64)> = Vec::new();
    let mut copy_bw = None;
    let mut i = 0;
    while i < argv.len() {
        let flag = argv[i].as_str();
        let mut val = || -> Result<&str, String> {
            i += 1;
            argv.get(i)
                .map(String::as_str)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--coll" | "-c" => {
                let v = val()?;
                a.coll = parse_coll(v).ok_or_else(|| format!("unknown collective '{v}'"))?;
            }
            "--algo" | "-a" => algo = Some(val()?.to_string()),
            "--ranks" | "-N" => a.ranks = num(val()?)?,
            "--ranks-per-host" => a.net.ranks_per_host = num(val()?)?,
            "--intra-lat" => a.net.intra.lat = parse_time(val()?)?,
            "--intra-bw" => a.net.intra.bw = parse_bw(val()?)?,
            "--inter-lat" => a.net.inter.lat = parse_time(val()?)?,
            "--inter-bw" => a.net.inter.bw = parse_bw(val()?)?,
            "--intra-ovh" => a.net.intra.overhead = parse_time(val()?)?,
            "--inter-ovh" => a.net.inter.overhead = parse_time(val()?)?,
            "--reduce-bw" => a.net.reduce_bw = parse_bw(val()?)?,
            "--copy-bw" => copy_bw = Some(parse_bw(val()?)?),
            "--oversub" => {
                let v = val()?;
                a.net.oversub = v
                    .parse::<f64>()
                    .ok()
                    .filter(|f| *f >= 1.0)
                    .ok_or_else(|| format!("--oversub {v}: expected a factor >= 1"))?;
            }
            "--credits" => a.net.credits = num(val()?)?.max(1),
            "--cores-per-host" => a.net.cores_per_host = num(val()?)?,
            "--nics-per-host" => a.net.nics_per_host = num(val()?)?,
            "--host-driven" => a.net.host_driven = true,
            "--recv-copy" => a.net.posted_recv = false,
            "--machine" => {
                let v = val()?;
                a.machine =
                    Some(Transport::parse(v).ok_or_else(|| format!("--machine {v}: shm or tcp"))?);
            }
            "--alpha" | "--overhead" | "--wake" => costs.push((flag, parse_time(val()?)?)),
            "--beta-bw" | "--gamma-bw" => costs.push((flag, 1.0 / parse_bw(val()?)?)),
            "--cores" => a.model.cores = num(val()?)?,
            "--cache" => a.model.cache = parse_size(val()?)?,
            "--cache-speedup" => {
                let v = val()?;
                a.model.cache_speedup = v
                    .parse::<f64>()
                    .ok()
                    .filter(|f| *f >= 1.0)
                    .ok_or_else(|| format!("--cache-speedup {v}: expected a factor >= 1"))?;
            }
            "-b" | "--minbytes" => a.min = parse_size(val()?)?,
            "-e" | "--maxbytes" => a.max = parse_size(val()?)?,
            "-f" | "--stepfactor" => a.factor = num(val()?)?.max(2),
            "--chunk" => a.chunk = parse_size(val()?)?.max(oxccl::sim::ELEM),
            "--in-place" => a.in_place = true,
            "--root" => a.root = num(val()?)?,
            "--max-steps" => a.max_steps = num(val()?)?,
            "--no-symmetry" => a.symmetry = false,
            "--pick" => a.pick = true,
            "--tsv" => a.tsv = true,
            other => match parse_coll(other) {
                Some(c) if !other.starts_with('-') => a.coll = c,
                _ => return Err(format!("unknown argument '{other}' (see --help)")),
            },
        }
        i += 1;
    }
    a.net.copy_bw = copy_bw.unwrap_or(a.net.reduce_bw);
    if a.ranks == 0 || a.net.ranks_per_host == 0 {
        return Err("--ranks and --ranks-per-host must be positive".into());
    }
    if let Some(t) = a.machine {
        let c = match t {
            Transport::Shm => &mut a.model.shm,
            Transport::Tcp => &mut a.model.tcp,
        };
        for (k, v) in costs {
            match k {
                "--alpha" => c.alpha = v,
                "--overhead" => c.overhead = v,
                "--wake" => c.wake = v,
                "--beta-bw" => c.beta = v,
                _ => c.gamma = v,
            }
        }
        a.net = a.model.network(t, a.ranks, 0);
    } else if !costs.is_empty() {
        return Err("--alpha, --beta-bw, --gamma-bw, --overhead and --wake need --machine".into());
    }
    a.which = match algo.as_deref().map(str::trim) {
        None | Some("auto") => Which::Auto,
        Some("all") => Which::All,
        Some(s) => {
            let al = Algorithm::parse(s).ok_or_else(|| format!("unknown algorithm '{s}'"))?;
            if !a.coll.algorithms().contains(&al) {
                let names: Vec<&str> = a.coll.algorithms().iter().map(|x| x.name()).collect();
                return Err(format!(
                    "{} has no {s} algorithm (it has: {})",
                    a.coll.name(),
                    names.join(", ")
                ));
            }
            Which::One(al)
        }
    };
    if !oxccl::sim::supported(a.coll) {
        return Err(format!("the simulator does not replay {}", a.coll.name()));
    }
    Ok(Some(a))
}

fn num(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        let near = |a: Result<f64, String>, b: f64| (a.unwrap() - b).abs() < 1e-15;
        assert!(near(parse_time("5us"), 5e-6));
        assert!(near(parse_time("1.5ms"), 1.5e-3));
        assert_eq!(parse_time("2"), Ok(2.0));
        assert_eq!(parse_bw("12.5GB/s"), Ok(12.5e9));
        assert_eq!(parse_bw("1GiB/s"), Ok((1u64 << 30) as f64));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("8"), Ok(8));
        assert!(parse_bw("fast").is_err());
    }

    #[test]
    fn flags() {
        let v: Vec<String> = "--coll allgather --algo ring --ranks 64 --oversub 2"
            .split(' ')
            .map(String::from)
            .collect();
        let a = parse(&v).unwrap().unwrap();
        assert_eq!(a.coll, Collective::AllGather);
        assert_eq!(a.which, Which::One(Algorithm::Ring));
        assert_eq!(a.ranks, 64);
        assert_eq!(a.net.oversub, 2.0);
        assert!(parse(&["--algo".into(), "chain".into()]).is_err());
    }
}
