//! Reduce-kernel throughput, in the STREAM convention that `membw` (shared/peers/membw.c) uses:
//! an in-place `a[i] = a[i] op b[i]` over N-byte arrays moves 3N bytes (read a, read b, write a).
//!
//! Groups:
//! - `f32_sum`: 64 MiB arrays (memory-bound; compare with membw's 1-thread "add" line) and
//!   256 KiB arrays (in cache; the kernel's compute speed), typed and over raw bytes, plus the
//!   unaligned-bytes and out-of-place (`reduce3_bytes`, also 3N bytes moved) paths;
//! - `sum_64MiB`: every data type, 64 MiB arrays, Sum;
//! - `f32_sum_64MiB_threads`: the reduction pool (spare cores) at 1, 2 and 4 threads.
//!
//! Run: `cargo bench --bench reduce` (about a minute).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use oxccl::internals::reduce::{reduce_bytes, reduce_slice, reduce3_bytes};
use oxccl::{DataType, ReduceOp};

const MIB: usize = 1 << 20;
const BIG: usize = 64 * MIB;
const SMALL: usize = 256 * 1024;

/// An 8-byte aligned byte buffer of `n` bytes (plus `pad` spare), filled with small values that
/// are valid, finite numbers in every type, so floats stay out of denormal/NaN slow paths.
fn buffer(n: usize, pad: usize, fill: u8) -> Vec<u64> {
    vec![u64::from_ne_bytes([fill; 8]); (n + pad).div_ceil(8)]
}

fn as_bytes(v: &[u64]) -> &[u8] {
    bytemuck::cast_slice(v)
}

fn as_bytes_mut(v: &mut [u64]) -> &mut [u8] {
    bytemuck::cast_slice_mut(v)
}

fn f32_sum(c: &mut Criterion) {
    let mut g = c.benchmark_group("f32_sum");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (label, bytes) in [("64MiB", BIG), ("256KiB", SMALL)] {
        let n = bytes / 4;
        g.throughput(Throughput::Bytes(3 * bytes as u64));
        let mut a = vec![1.0f32; n];
        let b = vec![1e-7f32; n];
        g.bench_function(BenchmarkId::new("slice", label), |bch| {
            bch.iter(|| reduce_slice(ReduceOp::Sum, black_box(&mut a[..]), black_box(&b[..])))
        });
        let mut a = buffer(bytes, 8, 0x3c);
        let b = buffer(bytes, 8, 0x01);
        g.bench_function(BenchmarkId::new("bytes", label), |bch| {
            bch.iter(|| {
                let (d, s) = (&mut as_bytes_mut(&mut a)[..bytes], &as_bytes(&b)[..bytes]);
                reduce_bytes(DataType::F32, ReduceOp::Sum, black_box(d), black_box(s))
            })
        });
        g.bench_function(BenchmarkId::new("bytes_unaligned", label), |bch| {
            bch.iter(|| {
                let d = &mut as_bytes_mut(&mut a)[1..bytes + 1];
                let s = &as_bytes(&b)[3..bytes + 3];
                reduce_bytes(DataType::F32, ReduceOp::Sum, black_box(d), black_box(s))
            })
        });
        let mut out = buffer(bytes, 8, 0);
        g.bench_function(BenchmarkId::new("bytes3", label), |bch| {
            bch.iter(|| {
                let d = &mut as_bytes_mut(&mut out)[..bytes];
                let (x, y) = (&as_bytes(&a)[..bytes], &as_bytes(&b)[..bytes]);
                reduce3_bytes(DataType::F32, ReduceOp::Sum, black_box(d), x, y)
            })
        });
    }
    g.finish();
}

fn sum_64mib(c: &mut Criterion) {
    let mut g = c.benchmark_group("sum_64MiB");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(3 * BIG as u64));
    let mut a = buffer(BIG, 0, 0x3c);
    let b = buffer(BIG, 0, 0x01);
    for dt in DataType::ALL {
        g.bench_function(dt.name(), |bch| {
            bch.iter(|| {
                let (d, s) = (as_bytes_mut(&mut a), as_bytes(&b));
                reduce_bytes(dt, ReduceOp::Sum, black_box(d), black_box(s))
            })
        });
    }
    g.finish();
}

/// Spare cores (issue: one rank per host): f32 sum of 64 MiB through `reduce_bytes` with the
/// reduction pool at 1, 2 (and, where the machine has them, 4) threads. Memory-bound: on a
/// 2-vCPU VM whose memory gives one core ~25 GB/s and two ~32 GB/s, expect about 1.3x.
fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("f32_sum_64MiB_threads");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(3 * BIG as u64));
    let mut a = buffer(BIG, 0, 0x3c);
    let b = buffer(BIG, 0, 0x01);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for t in [1, 2, 4].into_iter().filter(|&t| t == 1 || t <= cpus) {
        oxccl::internals::reduce::par::set_threads(t);
        g.bench_function(BenchmarkId::new("threads", t), |bch| {
            bch.iter(|| {
                let (d, s) = (as_bytes_mut(&mut a), as_bytes(&b));
                reduce_bytes(DataType::F32, ReduceOp::Sum, black_box(d), black_box(s))
            })
        });
    }
    oxccl::internals::reduce::par::set_threads(0);
    g.finish();
}

#[allow(missing_docs)] // criterion_group! defines an undocumented pub fn
mod group {
    criterion::criterion_group!(benches, super::f32_sum, super::sum_64mib, super::threads);
}
criterion_main!(group::benches);
