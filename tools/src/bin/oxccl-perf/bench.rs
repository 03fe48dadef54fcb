//! The measurement: for each element type, operator and root, for each size, time the
//! out-of-place and the in-place collective on every rank, report the slowest rank's average,
//! and check the result on one extra, untimed call.

use std::io::Write;
use std::time::Instant;

use oxccl::internals::algo::Shape;
use oxccl::{Algorithm, Communicator, DataType, ReduceOp, Result, SharedMem};

use crate::args::{Collective, Options};
use crate::check;
use crate::coll::Case;
use crate::report::{self, Measure, Row};

/// Bytes per rank in the `# Using devices` gather: pid (4), transport (12), host name (the rest).
const CARD: usize = 128;

/// A buffer of `bytes` bytes, 8-byte aligned (the element types' largest alignment): heap
/// memory, or registered memory (`-R 1`).
enum Buf {
    Heap(Vec<u64>, usize),
    Registered(SharedMem),
}

impl Buf {
    fn new(bytes: usize, registered: bool) -> Result<Buf> {
        if registered && bytes > 0 {
            return Ok(Buf::Registered(SharedMem::new(bytes)?));
        }
        Ok(Buf::Heap(vec![0u64; bytes.div_ceil(8)], bytes))
    }
    fn bytes(&self) -> &[u8] {
        match self {
            Buf::Heap(v, n) => &bytemuck::cast_slice(v)[..*n],
            Buf::Registered(m) => m,
        }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Buf::Heap(v, n) => &mut bytemuck::cast_slice_mut(v)[..*n],
            Buf::Registered(m) => m,
        }
    }
}

/// Every rank's (pid, host, transport), gathered onto every rank with one all-reduce (Max over
/// bytes, each rank writing only its own slot).
pub(crate) fn gather_cards(
    comm: &Communicator,
    transport: &str,
) -> Result<Vec<(u32, String, String)>> {
    let (rank, n) = (comm.rank(), comm.size());
    let mut all = vec![0u8; n * CARD];
    let mine = &mut all[rank * CARD..(rank + 1) * CARD];
    mine[..4].copy_from_slice(&std::process::id().to_le_bytes());
    let t = transport.as_bytes();
    let t = &t[..t.len().min(12)];
    mine[4..4 + t.len()].copy_from_slice(t);
    let host = oxccl::internals::sys::hostname();
    let h = host.as_bytes();
    let h = &h[..h.len().min(CARD - 16)];
    mine[16..16 + h.len()].copy_from_slice(h);
    comm.all_reduce_bytes(None, &mut all, DataType::U8, ReduceOp::Max)?;
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    Ok(all
        .chunks_exact(CARD)
        .map(|c| {
            let pid = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            (pid, text(&c[16..]), text(&c[4..16]))
        })
        .collect())
}

/// Set (to anything) in a rank's environment, this variable makes the rank spoil the first
/// element of every result it checks, after the call and before the comparison: the tests use it
/// to see that wrong elements are counted, reported and turn into exit status 2.
pub(crate) const INJECT_WRONG_VAR: &str = "OXCCL_PERF_INJECT_WRONG";

/// What [`INJECT_WRONG_VAR`] asks for: spoils `got`'s first element.
fn maybe_spoil(inject: bool, dtype: DataType, got: &mut [u8]) {
    if inject && got.len() >= dtype.size() {
        check::poison(dtype, &mut got[..dtype.size()]);
    }
}

/// Times `iters` calls of `call` after `warmup` untimed ones and a barrier; microseconds per call.
fn time_calls(
    comm: &Communicator,
    warmup: usize,
    iters: usize,
    mut call: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        call()?;
    }
    comm.barrier()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        call()?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / iters.max(1) as f64)
}

/// The algorithm forced for `coll` by a `Config.algo` / OXCCL_ALGO spec (`ring`, or
/// `allreduce:ring,broadcast:chain`), read as the library reads it.
fn forced(spec: &str, coll: oxccl::Collective) -> Option<Algorithm> {
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, name) = match part.split_once(':') {
            Some((k, a)) => (Some(k.trim().replace('_', "").to_ascii_lowercase()), a),
            None => (None, part),
        };
        if key.is_some_and(|k| k != coll.key()) {
            continue;
        }
        return Algorithm::parse(name);
    }
    None
}

/// The algorithm that runs the measured collective for one row: deterministic mode's ordered
/// one, else the forced one (`-a` or OXCCL_ALGO), else the tuner's pick for the row's size.
fn algorithm(
    comm: &Communicator,
    c: Collective,
    dtype: DataType,
    count: usize,
    root: usize,
    in_place: bool,
) -> Algorithm {
    let lib = c.lib();
    let cfg = comm.config();
    let (n, rank) = (comm.size(), comm.rank());
    let chunk = cfg
        .chunk_bytes
        .unwrap_or(oxccl::internals::comm::DEFAULT_CHUNK)
        / dtype.size();
    let mut shape = Shape::new(lib, n, rank, count, in_place && c.has_in_place(), chunk);
    shape.root = if c == Collective::SendRecv {
        (rank + 1) % n.max(1)
    } else {
        root
    };
    // The library's own rule (deterministic, forced, then the cost model), so the table names
    // exactly what ran.
    comm.algorithm_for(&shape, count * dtype.size())
        .unwrap_or(lib.algorithms()[0])
}

/// Which algorithm each row runs: one for the whole run, or one per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Algorithms {
    /// The same at every size (forced, or the tuner's pick everywhere).
    Uniform {
        /// Its name.
        name: String,
        /// Whether `-a`, OXCCL_ALGO or deterministic mode forced it.
        forced: bool,
    },
    /// The tuner's pick changes with the size: each row says which.
    PerRow,
}

impl Algorithms {
    /// The `# Algorithm:` header line.
    pub(crate) fn header(&self) -> String {
        match self {
            Algorithms::Uniform { name, forced: true } => format!("# Algorithm: {name}"),
            Algorithms::Uniform {
                name,
                forced: false,
            } => {
                format!("# Algorithm: {name} (the tuner's pick at every size)")
            }
            Algorithms::PerRow => {
                "# Algorithm: the tuner's pick per size, at the end of each row".into()
            }
        }
    }

    /// The name for JSON's top-level `algorithm`.
    pub(crate) fn summary(&self) -> &str {
        match self {
            Algorithms::Uniform { name, .. } => name,
            Algorithms::PerRow => "per-size",
        }
    }
}

/// A row's algorithm: its name, or `oop/ip` when the in-place call runs another.
fn row_algorithm(
    comm: &Communicator,
    o: &Options,
    dtype: DataType,
    count: usize,
    root: usize,
) -> String {
    let c = o.collective;
    let oop = algorithm(comm, c, dtype, count, root, false);
    let ip = algorithm(comm, c, dtype, count, root, true);
    if oop == ip || !c.has_in_place() {
        oop.name().to_string()
    } else {
        format!("{}/{}", oop.name(), ip.name())
    }
}

/// Works out, before measuring, which algorithm every row runs.
pub(crate) fn algorithms(comm: &Communicator, o: &Options) -> Algorithms {
    let n = comm.size();
    let mut names: Vec<String> = Vec::new();
    for &dtype in &o.dtypes {
        for root in o.roots_for(n) {
            for (_, count) in o.rows_of(n, dtype) {
                let a = row_algorithm(comm, o, dtype, count, root);
                if !names.contains(&a) {
                    names.push(a);
                }
            }
        }
    }
    let forced_by_config = {
        let lib = o.collective.lib();
        let cfg = comm.config();
        (cfg.deterministic == Some(true) && lib.algorithms().contains(&Algorithm::Ordered))
            || cfg
                .algo
                .as_deref()
                .and_then(|s| forced(s, lib))
                .is_some_and(|a| lib.algorithms().contains(&a))
    };
    match names.len() {
        0 => Algorithms::Uniform {
            name: row_algorithm(comm, o, o.dtypes[0], 0, 0),
            forced: forced_by_config,
        },
        1 => Algorithms::Uniform {
            name: names.remove(0),
            forced: forced_by_config,
        },
        _ => Algorithms::PerRow,
    }
}

/// One (type, operator)'s memory: the input, filled once, the reduced reference, and the receive
/// and expected-result buffers, all sized for the largest row (smaller rows use prefixes).
struct Bufs {
    input: Buf,
    reference: Vec<u8>,
    recv: Buf,
    want: Buf,
}

impl Bufs {
    fn new(base: &Case, max_count: usize, check: bool, registered: bool) -> Result<Bufs> {
        let es = base.dtype.size();
        let mut input = Buf::new(base.send_elems(max_count) * es, registered)?;
        base.fill_input(input.bytes_mut());
        let big = base
            .recv_elems(max_count)
            .max(base.in_place_elems(max_count))
            * es;
        Ok(Bufs {
            input,
            reference: if check {
                base.reference(max_count)
            } else {
                Vec::new()
            },
            recv: Buf::new(big, registered)?,
            want: Buf::new(big, false)?,
        })
    }
}

/// How a row is measured: the flags' iterations and checking, and the test hook.
#[derive(Clone, Copy)]
struct Mode {
    warmup: usize,
    iters: usize,
    check: bool,
    inject: bool,
}

/// Times the out-of-place call of one row, then (when checking) makes one more call, on every
/// rank, from a receive buffer holding a wrong value everywhere the result must land, and counts
/// the elements still wrong. Returns (microseconds per call, wrong elements on this rank).
fn out_of_place(
    comm: &Communicator,
    case: &Case,
    count: usize,
    m: Mode,
    b: &mut Bufs,
) -> Result<(f64, u64)> {
    let (dtype, es) = (case.dtype, case.dtype.size());
    // The input itself is the send buffer (it is never written).
    let src = &b.input.bytes()[..case.send_elems(count) * es];
    let dst = &mut b.recv.bytes_mut()[..case.recv_elems(count) * es];
    let us = time_calls(comm, m.warmup, m.iters, || case.run(comm, src, dst))?;
    if !m.check {
        return Ok((us, 0));
    }
    let range = case.checked(count, false).map(|r| r.start * es..r.end * es);
    let want = &mut b.want.bytes_mut()[..range.as_ref().map_or(0, |r| r.len())];
    if let Some(r) = &range {
        case.expected(count, &b.reference, want);
        dst[r.clone()].copy_from_slice(want);
        check::poison(dtype, &mut dst[r.clone()]);
    }
    case.run(comm, src, dst)?;
    let Some(r) = range else {
        return Ok((us, 0));
    };
    maybe_spoil(m.inject, dtype, &mut dst[r.clone()]);
    Ok((us, check::count_wrong(dtype, case.op, &dst[r], want)))
}

/// Times the in-place call of one row (the timed calls work on their own results: the values
/// do not matter for timing), then (when checking) makes one more call from the input, with a
/// wrong value wherever the result must land and the input does not go, and counts the elements
/// still wrong. Returns (microseconds per call, wrong elements on this rank).
fn in_place(
    comm: &Communicator,
    case: &Case,
    count: usize,
    m: Mode,
    b: &mut Bufs,
) -> Result<(f64, u64)> {
    let (dtype, es) = (case.dtype, case.dtype.size());
    let buf = &mut b.recv.bytes_mut()[..case.in_place_elems(count) * es];
    let want = &mut b.want.bytes_mut()[..buf.len()];
    let range = case.checked(count, true).map(|r| r.start * es..r.end * es);
    if let (true, Some(r)) = (m.check, &range) {
        case.expected(count, &b.reference, &mut want[r.clone()]);
    }
    check::poison(dtype, want);
    let input = b.input.bytes();
    case.prepare_in_place(count, input, want, buf);
    let us = time_calls(comm, m.warmup, m.iters, || case.run_in_place(comm, buf))?;
    if !m.check {
        return Ok((us, 0));
    }
    case.prepare_in_place(count, input, want, buf);
    case.run_in_place(comm, buf)?;
    let Some(r) = range else {
        return Ok((us, 0));
    };
    maybe_spoil(m.inject, dtype, &mut buf[r.clone()]);
    check::poison(dtype, &mut want[r.clone()]);
    Ok((
        us,
        check::count_wrong(dtype, case.op, &buf[r.clone()], &want[r]),
    ))
}

/// Runs the whole sweep. Rank 0 prints each row to `out` as soon as it is measured; every rank
/// returns the rows (with times and wrong counts already agreed over all ranks).
pub(crate) fn run(
    comm: &Communicator,
    o: &Options,
    algos: &Algorithms,
    out: &mut dyn Write,
) -> Result<Vec<Row>> {
    let (rank, nranks) = (comm.rank(), comm.size());
    let c = o.collective;
    let factor = c.busbw_factor(nranks);
    let mode = Mode {
        warmup: o.warmup,
        iters: o.iters,
        check: o.check,
        inject: std::env::var_os(INJECT_WRONG_VAR).is_some(),
    };
    let mut rows = Vec::new();
    for &dtype in &o.dtypes {
        let sweep = o.rows_of(nranks, dtype);
        let max_count = sweep.last().map_or(0, |r| r.1);
        for op in o.ops_for() {
            let base = Case {
                coll: c,
                dtype,
                op,
                root: 0,
                rank,
                nranks,
            };
            // Neither the input nor the reference depends on the root.
            let mut bufs = Bufs::new(&base, max_count, o.check, o.registered)?;
            for root in o.roots_for(nranks) {
                let case = Case { root, ..base };
                for &(bytes, count) in &sweep {
                    let (oop_us, oop_wrong) = out_of_place(comm, &case, count, mode, &mut bufs)?;
                    let (ip_us, ip_wrong) = if c.has_in_place() {
                        in_place(comm, &case, count, mode, &mut bufs)?
                    } else {
                        (0.0, 0)
                    };
                    let mut times = [oop_us, ip_us];
                    comm.all_reduce(&mut times, ReduceOp::Max)?;
                    let mut wrong = [oop_wrong, ip_wrong];
                    comm.all_reduce(&mut wrong, ReduceOp::Sum)?;
                    let measure = |i: usize| {
                        Measure::new(bytes, times[i], factor, o.check.then_some(wrong[i]))
                    };
                    let row = Row {
                        bytes,
                        count,
                        dtype: dtype.name(),
                        op: if c.reduces() { op.name() } else { "none" },
                        root: if c.rooted() { root as i64 } else { -1 },
                        oop: measure(0),
                        ip: c.has_in_place().then(|| measure(1)),
                        algorithm: match algos {
                            Algorithms::PerRow => Some(row_algorithm(comm, o, dtype, count, root)),
                            Algorithms::Uniform { .. } => None,
                        },
                    };
                    if rank == 0 {
                        let _ = writeln!(out, "{}", report::format_row(&row));
                        let _ = out.flush();
                    }
                    rows.push(row);
                }
            }
        }
    }
    Ok(rows)
}
