//! The measurement: for each element type and operator, for each size, time the out-of-place and
//! the in-place collective on every rank, report the slowest rank's average, and check the result
//! on one extra, untimed call.

use std::io::Write;
use std::time::Instant;

use oxccl::{Communicator, DataType, ReduceOp, Result};

use crate::args::{Options, rows_for, size_sweep};
use crate::check;
use crate::report::{self, Measure, Row};

/// Bytes per rank in the `# Using devices` gather: pid (4), transport (12), host name (the rest).
const CARD: usize = 128;

/// A buffer of `bytes` bytes, 8-byte aligned (the element types' largest alignment).
struct Buf(Vec<u64>, usize);

impl Buf {
    fn new(bytes: usize) -> Buf {
        Buf(vec![0u64; bytes.div_ceil(8)], bytes)
    }
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.0)[..self.1]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.0)[..self.1]
    }
}

/// Every rank's (pid, host, transport), gathered onto every rank with one all-reduce (Max over
/// bytes, each rank writing only its own slot).
pub fn gather_cards(comm: &Communicator, transport: &str) -> Result<Vec<(u32, String, String)>> {
    let (rank, n) = (comm.rank(), comm.size());
    let mut all = vec![0u8; n * CARD];
    let mine = &mut all[rank * CARD..(rank + 1) * CARD];
    mine[..4].copy_from_slice(&std::process::id().to_le_bytes());
    let t = transport.as_bytes();
    let t = &t[..t.len().min(12)];
    mine[4..4 + t.len()].copy_from_slice(t);
    let host = oxccl::sys::hostname();
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

/// Runs the whole sweep. Rank 0 prints each row to `out` as soon as it is measured; every rank
/// returns the rows (with times and wrong counts already agreed over all ranks).
pub fn run(comm: &Communicator, o: &Options, out: &mut dyn Write) -> Result<Vec<Row>> {
    let (rank, nranks) = (comm.rank(), comm.size());
    let factor = o.collective.busbw_factor(nranks);
    let sizes = size_sweep(o.minbytes, o.maxbytes, o.step);
    let mut rows = Vec::new();
    let print = |out: &mut dyn Write, line: &str| {
        if rank == 0 {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    };
    for &dtype in &o.dtypes {
        let sweep = rows_for(&sizes, dtype.size());
        let maxb = sweep.last().map_or(0, |r| r.0);
        let mut recv = Buf::new(maxb);
        for &op in &o.ops {
            // The input pattern does not depend on the size: fill (and reduce) the largest once
            // and use prefixes.
            let mut input = Buf::new(maxb);
            check::fill_input(dtype, op, rank, nranks, input.bytes_mut());
            let want = if o.check {
                check::expected(dtype, op, nranks, maxb)
            } else {
                Vec::new()
            };
            for &(bytes, count) in &sweep {
                // Out of place: the input itself is the send buffer (it is never written).
                let src = &input.bytes()[..bytes];
                let dst = &mut recv.bytes_mut()[..bytes];
                let oop_us = time_calls(comm, o.warmup, o.iters, || {
                    comm.all_reduce_bytes(Some(src), dst, dtype, op)
                })?;
                let oop_wrong = if o.check {
                    dst.fill(0);
                    comm.all_reduce_bytes(Some(src), dst, dtype, op)?;
                    check::count_wrong(dtype, op, dst, &want[..bytes])
                } else {
                    0
                };
                // In place: the timed calls reduce their own results (the values do not matter
                // for timing); the checked call starts again from the input.
                let buf = &mut recv.bytes_mut()[..bytes];
                buf.copy_from_slice(&input.bytes()[..bytes]);
                let ip_us = time_calls(comm, o.warmup, o.iters, || {
                    comm.all_reduce_bytes(None, buf, dtype, op)
                })?;
                let ip_wrong = if o.check {
                    buf.copy_from_slice(&input.bytes()[..bytes]);
                    comm.all_reduce_bytes(None, buf, dtype, op)?;
                    check::count_wrong(dtype, op, buf, &want[..bytes])
                } else {
                    0
                };
                let mut times = [oop_us, ip_us];
                comm.all_reduce(&mut times, ReduceOp::Max)?;
                let mut wrong = [oop_wrong, ip_wrong];
                comm.all_reduce(&mut wrong, ReduceOp::Sum)?;
                let checked = |w: u64| o.check.then_some(w);
                let row = Row {
                    bytes,
                    count,
                    dtype: dtype.name(),
                    op: op.name(),
                    root: o.collective.root(),
                    oop: Measure::new(bytes, times[0], factor, checked(wrong[0])),
                    ip: Measure::new(bytes, times[1], factor, checked(wrong[1])),
                };
                print(out, &report::format_row(&row));
                rows.push(row);
            }
        }
    }
    Ok(rows)
}
