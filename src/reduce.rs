//! Data types, reduction operators and the reduce kernels.
//!
//! The executor reduces on the receiving side: a chunk arrives in a link's receive slot and is
//! folded straight into the user buffer with [`reduce_bytes`] (`dst = dst op src`), or with
//! [`reduce3_bytes`] (`dst = a op b`) when the operation is out of place. Both take raw bytes,
//! because receive slots and C buffers carry no type and need not be aligned for it: aligned
//! slices take the fast typed path, unaligned ones go through a small aligned stack buffer.
//!
//! [`ReduceOp::Avg`] reduces as a sum everywhere; the division by the number of ranks happens
//! once, at the end, with [`finish_avg_bytes`] / [`finish_avg_slice`].
//!
//! # Semantics
//! - Integers: `Sum` and `Prod` wrap (two's complement), they never panic on overflow. The
//!   Avg division truncates toward zero, in the element type.
//! - Floats: one IEEE operation per element, rounded to nearest even. `f16` and `bf16` are
//!   computed in `f32` and rounded once back to the element type; `f32` is wide enough that this
//!   equals the correctly rounded half-precision operation for `Sum`, `Prod`, `Max` and `Min`.
//! - Float `Max` / `Min` are plain comparisons that **propagate NaN**: if either operand is NaN
//!   the result is NaN (which NaN payload survives is unspecified), so every rank sees the same
//!   thing whatever order the contributions arrive in. Between `-0.0` and `+0.0` the one
//!   already in `dst` is kept.
//! - Mismatched lengths are a caller bug (checked with `debug_assert!`); in release builds the
//!   kernels process the common prefix of whole elements and never panic.
//!
//! # Performance
//! The loops are plain slice loops that LLVM vectorises, compiled for the baseline target and,
//! on x86_64, again for AVX2 (picked at run time), walking the arrays in prefetched 1 KiB
//! chunks. f16 uses F16C where present. On 64 MiB arrays f32 Sum runs at the memory bandwidth of
//! one core (the same as `a[i] += b[i]` in C with `-O3 -march=native`); see benches/reduce.rs.

use std::fmt;

pub mod par;

use half::{bf16, f16};

enum_table! {
    /// Element types, numbered as NCCL numbers them (`ncclDataType_t`); names as nccl-tests
    /// prints them, with the usual aliases.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum DataType: i32, fn from_i32 {
        /// Signed 8-bit integer (`ncclInt8`).
        I8 = 0 => "int8" | "i8" | "char",
        /// Unsigned 8-bit integer (`ncclUint8`).
        U8 = 1 => "uint8" | "u8",
        /// Signed 32-bit integer (`ncclInt32`).
        I32 = 2 => "int32" | "i32" | "int",
        /// Unsigned 32-bit integer (`ncclUint32`).
        U32 = 3 => "uint32" | "u32" | "uint",
        /// Signed 64-bit integer (`ncclInt64`).
        I64 = 4 => "int64" | "i64",
        /// Unsigned 64-bit integer (`ncclUint64`).
        U64 = 5 => "uint64" | "u64",
        /// IEEE 754 binary16 (`ncclFloat16`).
        F16 = 6 => "half" | "f16" | "fp16" | "float16",
        /// IEEE 754 binary32 (`ncclFloat32`).
        F32 = 7 => "float" | "f32" | "fp32" | "float32",
        /// IEEE 754 binary64 (`ncclFloat64`).
        F64 = 8 => "double" | "f64" | "fp64" | "float64",
        /// bfloat16 (`ncclBfloat16`).
        BF16 = 9 => "bfloat16" | "bf16",
    }
}

impl DataType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DataType::I8 | DataType::U8 => 1,
            DataType::F16 | DataType::BF16 => 2,
            DataType::I32 | DataType::U32 | DataType::F32 => 4,
            DataType::I64 | DataType::U64 | DataType::F64 => 8,
        }
    }

    /// True for the floating-point types (f16, f32, f64, bf16).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DataType::F16 | DataType::F32 | DataType::F64 | DataType::BF16
        )
    }
}

enum_table! {
    /// Reduction operators, numbered as NCCL numbers them (`ncclRedOp_t`); names as nccl-tests
    /// prints them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum ReduceOp: i32, fn from_i32 {
        /// `a + b` (integers wrap).
        Sum = 0 => "sum",
        /// `a * b` (integers wrap).
        Prod = 1 => "prod" | "product",
        /// `max(a, b)` (floats: NaN propagates).
        Max = 2 => "max",
        /// `min(a, b)` (floats: NaN propagates).
        Min = 3 => "min",
        /// The sum, divided by the number of ranks once at the end ([`finish_avg_bytes`]).
        Avg = 4 => "avg" | "mean" | "average",
    }
}

/// The ten element types oxccl reduces: `i8 u8 i32 u32 i64 u64 f16 f32 f64 bf16`.
///
/// Sealed: it cannot be implemented outside this crate.
pub trait Element:
    bytemuck::Pod + Send + Sync + Copy + PartialEq + fmt::Debug + 'static + sealed::Kernels
{
    /// This type's [`DataType`].
    const DTYPE: DataType;
}

mod sealed {
    use super::ReduceOp;

    /// The per-type kernels; private so that [`super::Element`] stays sealed.
    pub trait Kernels: Sized {
        /// `dst[i] = dst[i] op src[i]` over equal-length slices.
        fn kern2(op: ReduceOp, dst: &mut [Self], src: &[Self]);
        /// `dst[i] = a[i] op b[i]` over equal-length slices.
        fn kern3(op: ReduceOp, dst: &mut [Self], a: &[Self], b: &[Self]);
        /// `buf[i] /= n`, for `n >= 2`.
        fn kern_avg(buf: &mut [Self], n: usize);
        /// One element, plainly: the reference the kernels are tested against.
        fn op1(op: ReduceOp, a: Self, b: Self) -> Self;
        /// One element divided by `n >= 1`, plainly.
        fn avg1(a: Self, n: usize) -> Self;
    }
}
use sealed::Kernels;

// ---------------------------------------------------------------------------------------------
// Element-wise loops. Plain zipped slice loops that LLVM vectorises. Each is compiled twice: for
// the baseline target (SSE2 on x86_64) and, on x86_64, for AVX2, picked at run time.
//
// Two things measured on large (out-of-cache) arrays shape the AVX2 versions (see
// benches/reduce.rs and /work/shared/peers/membw.c):
// - 256-bit loads and stores: with SSE2 one core falls ~15% short of the bandwidth that
//   `a[i] += b[i]` reaches with AVX2.
// - Software prefetch: a loop that spends more than a few instructions per element (the f16 and
//   bf16 conversions) leaves too few cache misses in flight and runs at a fraction of memory
//   bandwidth (bf16 Sum: 6 GB/s without, 20+ GB/s with). So the AVX2 loops walk the arrays in
//   1 KiB chunks and, before each chunk, prefetch the inputs 2 KiB ahead.

#[inline(always)]
fn map2_base<T: Copy>(dst: &mut [T], src: &[T], f: impl Fn(T, T) -> T) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(*d, s);
    }
}

#[inline(always)]
fn map3_base<T: Copy>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(x, y);
    }
}

#[inline(always)]
fn map1_base<T: Copy>(buf: &mut [T], f: impl Fn(T) -> T) {
    for x in buf.iter_mut() {
        *x = f(*x);
    }
}

/// Bytes per chunk of the prefetching loops.
#[cfg(target_arch = "x86_64")]
const CHUNK_BYTES: usize = 1024;
/// How far ahead of the chunk being reduced the prefetches reach.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 2048;

/// Elements of `T` per prefetch chunk.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
const fn chunk_len<T>() -> usize {
    let n = CHUNK_BYTES / size_of::<T>();
    if n == 0 { 1 } else { n }
}

/// Asks the CPU to start loading the cache lines `PREFETCH_AHEAD` bytes past `s`, as many as
/// `s` spans.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_ahead<T>(s: &[T]) {
    prefetch_ahead_by(s, PREFETCH_AHEAD);
}

/// Asks the CPU to start loading the cache lines `ahead` bytes past `s`, as many as `s` spans.
/// (A no-op off x86_64.)
#[inline(always)]
fn prefetch_ahead_by<T>(s: &[T], ahead: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = s.as_ptr().cast::<i8>().wrapping_add(ahead);
        let mut off = 0;
        while off < size_of_val(s) {
            // SAFETY: PREFETCHT0 is a hint: it never faults and never reads into or writes any
            // register or memory the program sees, whatever the address (it may point past the
            // end of `s`, which is why it is computed with wrapping_add).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, ahead);
}

/// True if the AVX2 versions of the loops may run (cached by std after the first call).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2() -> bool {
    #[cfg(test)]
    if tests::FORCE_PORTABLE.with(|f| f.get()) {
        return false;
    }
    std::is_x86_feature_detected!("avx2")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn map2_avx2<T: Copy>(dst: &mut [T], src: &[T], f: impl Fn(T, T) -> T) {
    let n = chunk_len::<T>();
    for (d, s) in dst.chunks_mut(n).zip(src.chunks(n)) {
        prefetch_ahead(d);
        prefetch_ahead(s);
        map2_base(d, s, &f);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn map3_avx2<T: Copy>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    let n = chunk_len::<T>();
    let chunks = dst.chunks_mut(n).zip(a.chunks(n)).zip(b.chunks(n));
    for ((d, x), y) in chunks {
        prefetch_ahead(x);
        prefetch_ahead(y);
        map3_base(d, x, y, &f);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn map1_avx2<T: Copy>(buf: &mut [T], f: impl Fn(T) -> T) {
    let n = chunk_len::<T>();
    for d in buf.chunks_mut(n) {
        prefetch_ahead(d);
        map1_base(d, &f);
    }
}

/// `dst[i] = f(dst[i], src[i])`, vectorised, AVX2 where the CPU has it.
#[inline(always)]
fn map2<T: Copy>(dst: &mut [T], src: &[T], f: impl Fn(T, T) -> T) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2, checked just above; the function is otherwise safe.
        return unsafe { map2_avx2(dst, src, f) };
    }
    map2_base(dst, src, f)
}

/// `dst[i] = f(a[i], b[i])`, vectorised, AVX2 where the CPU has it.
#[inline(always)]
fn map3<T: Copy>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2, checked just above; the function is otherwise safe.
        return unsafe { map3_avx2(dst, a, b, f) };
    }
    map3_base(dst, a, b, f)
}

/// `buf[i] = f(buf[i])`, vectorised, AVX2 where the CPU has it.
#[inline(always)]
fn map1<T: Copy>(buf: &mut [T], f: impl Fn(T) -> T) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2, checked just above; the function is otherwise safe.
        return unsafe { map1_avx2(buf, f) };
    }
    map1_base(buf, f)
}

macro_rules! impl_int {
    ($($t:ty => $dt:ident, $wide:ty);* $(;)?) => {$(
        impl Element for $t {
            const DTYPE: DataType = DataType::$dt;
        }
        impl Kernels for $t {
            fn kern2(op: ReduceOp, dst: &mut [Self], src: &[Self]) {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => map2(dst, src, <$t>::wrapping_add),
                    ReduceOp::Prod => map2(dst, src, <$t>::wrapping_mul),
                    ReduceOp::Max => map2(dst, src, Ord::max),
                    ReduceOp::Min => map2(dst, src, Ord::min),
                }
            }
            fn kern3(op: ReduceOp, dst: &mut [Self], a: &[Self], b: &[Self]) {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => map3(dst, a, b, <$t>::wrapping_add),
                    ReduceOp::Prod => map3(dst, a, b, <$t>::wrapping_mul),
                    ReduceOp::Max => map3(dst, a, b, Ord::max),
                    ReduceOp::Min => map3(dst, a, b, Ord::min),
                }
            }
            fn kern_avg(buf: &mut [Self], n: usize) {
                match <$t>::try_from(n) {
                    // n >= 1 here, so wrapping_div never actually wraps (no MIN / -1).
                    Ok(d) => map1(buf, |x| x.wrapping_div(d)),
                    // n is beyond the type's range: divide exactly in a wider type.
                    Err(_) => map1(buf, |x| Self::avg1(x, n)),
                }
            }
            fn op1(op: ReduceOp, a: Self, b: Self) -> Self {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => a.wrapping_add(b),
                    ReduceOp::Prod => a.wrapping_mul(b),
                    ReduceOp::Max => if a >= b { a } else { b },
                    ReduceOp::Min => if a <= b { a } else { b },
                }
            }
            fn avg1(a: Self, n: usize) -> Self {
                // |a / n| <= |a|, so the quotient always fits back into the type.
                (<$wide>::from(a) / (n as $wide)) as $t
            }
        }
    )*};
}

impl_int! {
    i8 => I8, i128;
    u8 => U8, u128;
    i32 => I32, i128;
    u32 => U32, u128;
    i64 => I64, i128;
    u64 => U64, u128;
}

/// NaN-propagating max by comparisons: `b` if it is greater or NaN, else `a` (so NaN in `a`
/// survives too). Compiles to max + unordered-compare + blend.
#[inline(always)]
#[allow(clippy::eq_op)]
fn fmax<T: PartialOrd + Copy>(a: T, b: T) -> T {
    if b > a || b != b { b } else { a }
}

/// NaN-propagating min, as [`fmax`].
#[inline(always)]
#[allow(clippy::eq_op)]
fn fmin<T: PartialOrd + Copy>(a: T, b: T) -> T {
    if b < a || b != b { b } else { a }
}

macro_rules! impl_float {
    ($($t:ty => $dt:ident);* $(;)?) => {$(
        impl Element for $t {
            const DTYPE: DataType = DataType::$dt;
        }
        impl Kernels for $t {
            fn kern2(op: ReduceOp, dst: &mut [Self], src: &[Self]) {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => map2(dst, src, |a, b| a + b),
                    ReduceOp::Prod => map2(dst, src, |a, b| a * b),
                    ReduceOp::Max => map2(dst, src, fmax),
                    ReduceOp::Min => map2(dst, src, fmin),
                }
            }
            fn kern3(op: ReduceOp, dst: &mut [Self], a: &[Self], b: &[Self]) {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => map3(dst, a, b, |a, b| a + b),
                    ReduceOp::Prod => map3(dst, a, b, |a, b| a * b),
                    ReduceOp::Max => map3(dst, a, b, fmax),
                    ReduceOp::Min => map3(dst, a, b, fmin),
                }
            }
            fn kern_avg(buf: &mut [Self], n: usize) {
                let d = n as $t;
                map1(buf, |x| x / d);
            }
            fn op1(op: ReduceOp, a: Self, b: Self) -> Self {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => a + b,
                    ReduceOp::Prod => a * b,
                    // Written out (not f32::max) to pin down NaN and signed zeros.
                    ReduceOp::Max => {
                        if b.is_nan() || a.is_nan() { if b.is_nan() { b } else { a } }
                        else if b > a { b } else { a }
                    }
                    ReduceOp::Min => {
                        if b.is_nan() || a.is_nan() { if b.is_nan() { b } else { a } }
                        else if b < a { b } else { a }
                    }
                }
            }
            fn avg1(a: Self, n: usize) -> Self {
                a / n as $t
            }
        }
    )*};
}

impl_float! {
    f32 => F32;
    f64 => F64;
}

// ---------------------------------------------------------------------------------------------
// f16 / bf16: each element is widened to f32, reduced there and rounded back once, in one
// fused pass. The conversions are written branch-free on the bits (selects, shifts, one f32
// add) so that the loops vectorise like the f32 ones; they agree with `half`'s conversions
// bit for bit on every non-NaN value (NaN stays NaN, quiet; see the tests).

/// A 16-bit float type reduced through f32.
trait HalfLike: Copy + Kernels {
    /// Exact widening to f32, vectorisable.
    fn widen(self) -> f32;
    /// Round to nearest even from f32, vectorisable.
    fn narrow(x: f32) -> Self;
    /// The `half` crate's scalar conversions, for the plain reference.
    fn to_f32_ref(self) -> f32;
    /// See [`HalfLike::to_f32_ref`].
    fn from_f32_ref(x: f32) -> Self;
    /// Reduces `dst = dst op src` on a CPU-specific fast path, if this CPU has one; returns
    /// false (having done nothing) if not.
    fn accel2(_op: ReduceOp, _dst: &mut [Self], _src: &[Self]) -> bool {
        false
    }
    /// As [`HalfLike::accel2`], for `dst = a op b`.
    fn accel3(_op: ReduceOp, _dst: &mut [Self], _a: &[Self], _b: &[Self]) -> bool {
        false
    }
    /// As [`HalfLike::accel2`], for `buf /= n`.
    fn accel_avg(_buf: &mut [Self], _n: usize) -> bool {
        false
    }
}

/// f16 bits -> f32, exactly (subnormals via one exact f32 subtraction).
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let em = (h & 0x7FFF) << 13; // exponent and mantissa, in f32 position
    let exp = em & 0x0F80_0000;
    let normal = em + 0x3800_0000; // rebias: + (127 - 15) << 23
    let inf_nan = em + 0x7000_0000; // exponent all ones
    // Subnormal m * 2^-24: build 2^-14 * (1 + m * 2^-10), then subtract 2^-14 (exact).
    let sub = (f32::from_bits(em + 0x3880_0000) - f32::from_bits(0x3880_0000)).to_bits();
    let mag = if exp == 0x0F80_0000 {
        inf_nan
    } else if exp == 0 {
        sub
    } else {
        normal
    };
    f32::from_bits(mag | ((h & 0x8000) << 16))
}

/// f32 -> f16 bits, round to nearest even; overflow gives infinity, NaN a quiet NaN keeping the
/// top payload bits (as `half::f16::from_f32` and F16C do).
#[inline(always)]
fn f32_to_f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = (bits >> 16) & 0x8000;
    let f = bits & 0x7FFF_FFFF;
    // >= 65536.0: infinity, or NaN.
    let big = if f > 0x7F80_0000 {
        0x7E00 | ((f >> 13) & 0x3FF)
    } else {
        0x7C00
    };
    // < 2^-14: subnormal or zero. Adding 0.5 (whose ulp is 2^-24, the f16 subnormal step) lets
    // the FPU round to nearest even; the low bits are then the f16 bits.
    let sub = (f32::from_bits(f) + 0.5f32)
        .to_bits()
        .wrapping_sub(0x3F00_0000);
    // Normal: rebias the exponent (- (127 - 15) << 23) and round the 13 dropped bits to even;
    // a carry out of the mantissa correctly bumps the exponent (up to infinity).
    let odd = (f >> 13) & 1;
    let norm = f.wrapping_add(0xC800_0FFF).wrapping_add(odd) >> 13;
    let mag = if f >= 0x4780_0000 {
        big
    } else if f < 0x3880_0000 {
        sub
    } else {
        norm
    };
    (mag | sign) as u16
}

/// f32 bits -> bf16 bits, round to nearest even, NaN kept quiet; the same result as
/// `half::bf16::from_f32`, but branch-free.
#[inline(always)]
fn f32_bits_to_bf16_bits(x: u32) -> u16 {
    let is_nan = (x & 0x7FFF_FFFF) > 0x7F80_0000;
    let rounded = x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16;
    let quiet = (x >> 16) | 0x40;
    (if is_nan { quiet } else { rounded }) as u16
}

impl HalfLike for f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f16_bits_to_f32(self.to_bits())
    }
    #[inline(always)]
    fn narrow(x: f32) -> Self {
        f16::from_bits(f32_to_f16_bits(x))
    }
    fn to_f32_ref(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32_ref(x: f32) -> Self {
        f16::from_f32(x)
    }
    #[cfg(target_arch = "x86_64")]
    fn accel2(op: ReduceOp, dst: &mut [Self], src: &[Self]) -> bool {
        if !f16c::available() {
            return false;
        }
        // SAFETY: the CPU has AVX2 and F16C, checked just above.
        unsafe {
            match op {
                ReduceOp::Sum | ReduceOp::Avg => f16c::zip2(dst, src, |a, b| a + b),
                ReduceOp::Prod => f16c::zip2(dst, src, |a, b| a * b),
                ReduceOp::Max => f16c::zip2(dst, src, fmax),
                ReduceOp::Min => f16c::zip2(dst, src, fmin),
            }
        }
        true
    }
    #[cfg(target_arch = "x86_64")]
    fn accel3(op: ReduceOp, dst: &mut [Self], a: &[Self], b: &[Self]) -> bool {
        if !f16c::available() {
            return false;
        }
        // SAFETY: the CPU has AVX2 and F16C, checked just above.
        unsafe {
            match op {
                ReduceOp::Sum | ReduceOp::Avg => f16c::zip3(dst, a, b, |a, b| a + b),
                ReduceOp::Prod => f16c::zip3(dst, a, b, |a, b| a * b),
                ReduceOp::Max => f16c::zip3(dst, a, b, fmax),
                ReduceOp::Min => f16c::zip3(dst, a, b, fmin),
            }
        }
        true
    }
    #[cfg(target_arch = "x86_64")]
    fn accel_avg(buf: &mut [Self], n: usize) -> bool {
        if !f16c::available() {
            return false;
        }
        let d = n as f32;
        // SAFETY: the CPU has AVX2 and F16C, checked just above.
        unsafe { f16c::each(buf, |x| x / d) };
        true
    }
}

/// f16 on x86_64 CPUs with F16C: eight elements at a time are widened to f32 with VCVTPH2PS,
/// reduced as f32, and rounded back with VCVTPS2PH (round to nearest even: the same result as
/// the portable conversion; the tests check both against `half`). Walked in prefetched 1 KiB
/// chunks like the AVX2 loops.
#[cfg(target_arch = "x86_64")]
mod f16c {
    // The conversion intrinsics are safe to call inside `#[target_feature]` functions since Rust
    // 1.87 and unsafe before; the blocks around them keep rust-version 1.85 building.
    #![allow(unused_unsafe)]

    use std::arch::x86_64::{
        __m128i, __m256, _MM_FROUND_TO_NEAREST_INT, _mm256_cvtph_ps, _mm256_cvtps_ph,
    };

    use half::f16;

    use super::{f16_bits_to_f32, f32_to_f16_bits, prefetch_ahead};

    /// Elements per prefetch chunk (1 KiB).
    const BLOCK: usize = 512;

    /// True if this CPU has what the functions below need (cached by std).
    #[inline(always)]
    pub(super) fn available() -> bool {
        super::has_avx2() && std::is_x86_feature_detected!("f16c")
    }

    /// Eight f16 -> eight f32.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn widen8(s: &[f16]) -> [f32; 8] {
        let mut h = [f16::ZERO; 8];
        h.copy_from_slice(s);
        // SAFETY: F16C is enabled on this function; its callers check the CPU has it.
        let w: __m256 = unsafe { _mm256_cvtph_ps(bytemuck::cast::<[f16; 8], __m128i>(h)) };
        bytemuck::cast(w)
    }

    /// Eight f32 -> eight f16, round to nearest even.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn narrow8(x: [f32; 8], d: &mut [f16]) {
        let v = bytemuck::cast::<[f32; 8], __m256>(x);
        // SAFETY: F16C is enabled on this function; its callers check the CPU has it.
        let h = unsafe { _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v) };
        d.copy_from_slice(&bytemuck::cast::<__m128i, [f16; 8]>(h));
    }

    /// `dst[i] = f(dst[i], src[i])` computed in f32. Needs AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn zip2(dst: &mut [f16], src: &[f16], f: impl Fn(f32, f32) -> f32) {
        for (d, s) in dst.chunks_mut(BLOCK).zip(src.chunks(BLOCK)) {
            prefetch_ahead(d);
            prefetch_ahead(s);
            let mut d8 = d.chunks_exact_mut(8);
            let mut s8 = s.chunks_exact(8);
            for (d, s) in (&mut d8).zip(&mut s8) {
                // SAFETY: widen8 and narrow8 need the features this function has.
                let (x, y) = unsafe { (widen8(d), widen8(s)) };
                let r: [f32; 8] = std::array::from_fn(|i| f(x[i], y[i]));
                // SAFETY: as above.
                unsafe { narrow8(r, d) };
            }
            for (d, s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
                let r = f(f16_bits_to_f32(d.to_bits()), f16_bits_to_f32(s.to_bits()));
                *d = f16::from_bits(f32_to_f16_bits(r));
            }
        }
    }

    /// `dst[i] = f(a[i], b[i])` computed in f32. Needs AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn zip3(dst: &mut [f16], a: &[f16], b: &[f16], f: impl Fn(f32, f32) -> f32) {
        let blocks = dst
            .chunks_mut(BLOCK)
            .zip(a.chunks(BLOCK))
            .zip(b.chunks(BLOCK));
        for ((d, a), b) in blocks {
            prefetch_ahead(a);
            prefetch_ahead(b);
            let mut d8 = d.chunks_exact_mut(8);
            let mut a8 = a.chunks_exact(8);
            let mut b8 = b.chunks_exact(8);
            for ((d, a), b) in (&mut d8).zip(&mut a8).zip(&mut b8) {
                // SAFETY: widen8 and narrow8 need the features this function has.
                let (x, y) = unsafe { (widen8(a), widen8(b)) };
                let r: [f32; 8] = std::array::from_fn(|i| f(x[i], y[i]));
                // SAFETY: as above.
                unsafe { narrow8(r, d) };
            }
            let rest = d8
                .into_remainder()
                .iter_mut()
                .zip(a8.remainder())
                .zip(b8.remainder());
            for ((d, a), b) in rest {
                let r = f(f16_bits_to_f32(a.to_bits()), f16_bits_to_f32(b.to_bits()));
                *d = f16::from_bits(f32_to_f16_bits(r));
            }
        }
    }

    /// `buf[i] = f(buf[i])` computed in f32. Needs AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn each(buf: &mut [f16], f: impl Fn(f32) -> f32) {
        for d in buf.chunks_mut(BLOCK) {
            prefetch_ahead(d);
            let mut d8 = d.chunks_exact_mut(8);
            for d in &mut d8 {
                // SAFETY: widen8 and narrow8 need the features this function has.
                let x = unsafe { widen8(d) };
                let r: [f32; 8] = std::array::from_fn(|i| f(x[i]));
                // SAFETY: as above.
                unsafe { narrow8(r, d) };
            }
            for d in d8.into_remainder() {
                *d = f16::from_bits(f32_to_f16_bits(f(f16_bits_to_f32(d.to_bits()))));
            }
        }
    }
}

impl HalfLike for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
    #[inline(always)]
    fn narrow(x: f32) -> Self {
        bf16::from_bits(f32_bits_to_bf16_bits(x.to_bits()))
    }
    fn to_f32_ref(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32_ref(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// Portable 16-bit float kernels: fused widen, op, narrow per element.
fn half_kern2<H: HalfLike>(op: ReduceOp, dst: &mut [H], src: &[H]) {
    let w = H::widen;
    match op {
        ReduceOp::Sum | ReduceOp::Avg => map2(dst, src, |a, b| H::narrow(w(a) + w(b))),
        ReduceOp::Prod => map2(dst, src, |a, b| H::narrow(w(a) * w(b))),
        ReduceOp::Max => map2(dst, src, |a, b| H::narrow(fmax(w(a), w(b)))),
        ReduceOp::Min => map2(dst, src, |a, b| H::narrow(fmin(w(a), w(b)))),
    }
}

/// See [`half_kern2`].
fn half_kern3<H: HalfLike>(op: ReduceOp, dst: &mut [H], a: &[H], b: &[H]) {
    let w = H::widen;
    match op {
        ReduceOp::Sum | ReduceOp::Avg => map3(dst, a, b, |a, b| H::narrow(w(a) + w(b))),
        ReduceOp::Prod => map3(dst, a, b, |a, b| H::narrow(w(a) * w(b))),
        ReduceOp::Max => map3(dst, a, b, |a, b| H::narrow(fmax(w(a), w(b)))),
        ReduceOp::Min => map3(dst, a, b, |a, b| H::narrow(fmin(w(a), w(b)))),
    }
}

/// See [`half_kern2`].
fn half_avg<H: HalfLike>(buf: &mut [H], n: usize) {
    let d = n as f32;
    map1(buf, |x: H| H::narrow(x.widen() / d));
}

macro_rules! impl_half {
    ($($t:ty => $dt:ident);* $(;)?) => {$(
        impl Element for $t {
            const DTYPE: DataType = DataType::$dt;
        }
        impl Kernels for $t {
            fn kern2(op: ReduceOp, dst: &mut [Self], src: &[Self]) {
                if !Self::accel2(op, dst, src) {
                    half_kern2(op, dst, src);
                }
            }
            fn kern3(op: ReduceOp, dst: &mut [Self], a: &[Self], b: &[Self]) {
                if !Self::accel3(op, dst, a, b) {
                    half_kern3(op, dst, a, b);
                }
            }
            fn kern_avg(buf: &mut [Self], n: usize) {
                if !Self::accel_avg(buf, n) {
                    half_avg(buf, n);
                }
            }
            fn op1(op: ReduceOp, a: Self, b: Self) -> Self {
                Self::from_f32_ref(f32::op1(op, a.to_f32_ref(), b.to_f32_ref()))
            }
            fn avg1(a: Self, n: usize) -> Self {
                Self::from_f32_ref(f32::avg1(a.to_f32_ref(), n))
            }
        }
    )*};
}

impl_half! {
    f16 => F16;
    bf16 => BF16;
}

// ---------------------------------------------------------------------------------------------
// Public typed kernels.

/// `dst[i] = dst[i] op src[i]` for every `i` (Avg sums; finish with `finish_avg_slice`).
///
/// The slices should have equal lengths; in release builds only the common prefix is reduced.
pub fn reduce_slice<T: Element>(op: ReduceOp, dst: &mut [T], src: &[T]) {
    debug_assert_eq!(dst.len(), src.len(), "reduce_slice: length mismatch");
    let n = dst.len().min(src.len());
    T::kern2(op, &mut dst[..n], &src[..n]);
}

/// `dst[i] = a[i] op b[i]` for every `i` (Avg sums): an out-of-place [`reduce_slice`] that
/// saves copying `a` into `dst` first.
///
/// The slices should have equal lengths; in release builds only the common prefix is written.
#[cfg(test)]
pub(crate) fn reduce3_slice<T: Element>(op: ReduceOp, dst: &mut [T], a: &[T], b: &[T]) {
    debug_assert!(
        dst.len() == a.len() && a.len() == b.len(),
        "reduce3_slice: length mismatch"
    );
    let n = dst.len().min(a.len()).min(b.len());
    T::kern3(op, &mut dst[..n], &a[..n], &b[..n]);
}

/// Divides every element of `buf` by `n`: the end of an Avg over `n` ranks.
///
/// Integers use truncating division in the element type; `f32`/`f64` divide in their own type;
/// `f16`/`bf16` divide in `f32` and round once. `n == 0` and `n == 1` leave `buf` unchanged.
#[cfg(test)]
pub(crate) fn finish_avg_slice<T: Element>(buf: &mut [T], n: usize) {
    if n >= 2 {
        T::kern_avg(buf, n);
    }
}

/// A plain sequential reference: folds `inputs` element by element in rank order
/// (`((in0 op in1) op in2) ...`), then for Avg divides by `inputs.len()`. Shares no code with
/// the vectorised kernels; tests compare collectives against it.
///
/// Returns an empty vector for no inputs.
///
/// # Panics
/// If the inputs do not all have the same length.
pub fn reference<T: Element>(op: ReduceOp, inputs: &[&[T]]) -> Vec<T> {
    let Some((first, rest)) = inputs.split_first() else {
        return Vec::new();
    };
    let mut acc = first.to_vec();
    for input in rest {
        assert_eq!(input.len(), acc.len(), "reference: inputs differ in length");
        for (a, &b) in acc.iter_mut().zip(input.iter()) {
            *a = T::op1(op, *a, b);
        }
    }
    if op == ReduceOp::Avg && inputs.len() > 1 {
        for a in acc.iter_mut() {
            *a = T::avg1(*a, inputs.len());
        }
    }
    acc
}

// ---------------------------------------------------------------------------------------------
// Byte kernels.

/// The unaligned path works in blocks of this many bytes (8-byte aligned, fits any element).
const BOUNCE_WORDS: usize = 512;
const BOUNCE_BYTES: usize = BOUNCE_WORDS * 8;

type Bounce = [u64; BOUNCE_WORDS];

/// Whole elements of `T` in `len` bytes, as a byte length.
#[inline]
fn whole<T>(len: usize) -> usize {
    len - len % size_of::<T>()
}

/// `bytes` (whole `T`s, at most [`BOUNCE_BYTES`]) as `&[T]`: in place if aligned for `T`,
/// else copied into `buf`.
fn view<'a, T: Element>(bytes: &'a [u8], buf: &'a mut Bounce) -> &'a [T] {
    if let Ok(t) = bytemuck::try_cast_slice(bytes) {
        return t;
    }
    let copy = &mut bytemuck::cast_slice_mut::<u64, u8>(buf)[..bytes.len()];
    copy.copy_from_slice(bytes);
    // `buf` is 8-byte aligned and the length is whole elements, so this cannot fail.
    bytemuck::try_cast_slice(copy).unwrap_or(&[])
}

/// Runs `f` on `bytes` (whole `T`s, at most [`BOUNCE_BYTES`]) as `&mut [T]`: in place if
/// aligned for `T`, else on a copy in `buf` that is then copied back.
fn with_view_mut<T: Element>(bytes: &mut [u8], buf: &mut Bounce, f: impl FnOnce(&mut [T])) {
    if let Ok(t) = bytemuck::try_cast_slice_mut(bytes) {
        return f(t);
    }
    let copy = &mut bytemuck::cast_slice_mut::<u64, u8>(buf)[..bytes.len()];
    copy.copy_from_slice(bytes);
    // `buf` is 8-byte aligned and the length is whole elements, so this cannot fail.
    if let Ok(t) = bytemuck::try_cast_slice_mut(&mut *copy) {
        f(t);
    }
    bytes.copy_from_slice(copy);
}

fn bytes2<T: Element>(op: ReduceOp, dst: &mut [u8], src: &[u8]) {
    let len = whole::<T>(dst.len().min(src.len()));
    let (dst, src) = (&mut dst[..len], &src[..len]);
    if let (Ok(d), Ok(s)) = (
        bytemuck::try_cast_slice_mut::<u8, T>(dst),
        bytemuck::try_cast_slice::<u8, T>(src),
    ) {
        return T::kern2(op, d, s);
    }
    // Some slice is unaligned: go block by block, bouncing only the unaligned ones through
    // aligned stack buffers, and prefetch the next block while this one is copied and reduced.
    let (mut db, mut sb): (Bounce, Bounce) = ([0; BOUNCE_WORDS], [0; BOUNCE_WORDS]);
    for (dc, sc) in dst.chunks_mut(BOUNCE_BYTES).zip(src.chunks(BOUNCE_BYTES)) {
        prefetch_ahead_by(dc, BOUNCE_BYTES);
        prefetch_ahead_by(sc, BOUNCE_BYTES);
        let s = view::<T>(sc, &mut sb);
        with_view_mut::<T>(dc, &mut db, |d| T::kern2(op, d, s));
    }
}

fn bytes3<T: Element>(op: ReduceOp, dst: &mut [u8], a: &[u8], b: &[u8]) {
    let len = whole::<T>(dst.len().min(a.len()).min(b.len()));
    let (dst, a, b) = (&mut dst[..len], &a[..len], &b[..len]);
    if let (Ok(d), Ok(x), Ok(y)) = (
        bytemuck::try_cast_slice_mut::<u8, T>(dst),
        bytemuck::try_cast_slice::<u8, T>(a),
        bytemuck::try_cast_slice::<u8, T>(b),
    ) {
        return T::kern3(op, d, x, y);
    }
    let mut bufs: [Bounce; 3] = [[0; BOUNCE_WORDS]; 3];
    let [db, ab, bb] = &mut bufs;
    let blocks = dst
        .chunks_mut(BOUNCE_BYTES)
        .zip(a.chunks(BOUNCE_BYTES))
        .zip(b.chunks(BOUNCE_BYTES));
    for ((dc, ac), bc) in blocks {
        prefetch_ahead_by(ac, BOUNCE_BYTES);
        prefetch_ahead_by(bc, BOUNCE_BYTES);
        let (x, y) = (view::<T>(ac, ab), view::<T>(bc, bb));
        match bytemuck::try_cast_slice_mut::<u8, T>(dc) {
            Ok(d) => T::kern3(op, d, x, y),
            Err(_) => {
                // Unaligned dst: compute into the bounce buffer, then copy out (nothing to
                // copy in: dst is only written).
                let copy = &mut bytemuck::cast_slice_mut::<u64, u8>(db)[..dc.len()];
                if let Ok(d) = bytemuck::try_cast_slice_mut::<u8, T>(&mut *copy) {
                    T::kern3(op, d, x, y);
                }
                dc.copy_from_slice(copy);
            }
        }
    }
}

fn bytes_avg<T: Element>(buf: &mut [u8], n: usize) {
    if n < 2 {
        return;
    }
    let len = whole::<T>(buf.len());
    let buf = &mut buf[..len];
    if let Ok(b) = bytemuck::try_cast_slice_mut::<u8, T>(buf) {
        return T::kern_avg(b, n);
    }
    let mut bb: Bounce = [0; BOUNCE_WORDS];
    for c in buf.chunks_mut(BOUNCE_BYTES) {
        prefetch_ahead_by(c, BOUNCE_BYTES);
        with_view_mut::<T>(c, &mut bb, |b| T::kern_avg(b, n));
    }
}

/// Calls `$f::<T>($args)` with `T` the Rust type of `$dtype`.
macro_rules! dispatch {
    ($dtype:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            DataType::I8 => $f::<i8>($($arg),*),
            DataType::U8 => $f::<u8>($($arg),*),
            DataType::I32 => $f::<i32>($($arg),*),
            DataType::U32 => $f::<u32>($($arg),*),
            DataType::I64 => $f::<i64>($($arg),*),
            DataType::U64 => $f::<u64>($($arg),*),
            DataType::F16 => $f::<f16>($($arg),*),
            DataType::F32 => $f::<f32>($($arg),*),
            DataType::F64 => $f::<f64>($($arg),*),
            DataType::BF16 => $f::<bf16>($($arg),*),
        }
    };
}

/// `dst[i] = dst[i] op src[i]` over raw bytes holding `dtype` elements (Avg sums).
///
/// The slices should have equal lengths, a multiple of `dtype.size()` (checked in debug builds;
/// release builds reduce the whole elements of the common prefix). They may be unaligned for
/// the type: aligned slices are reduced in place, unaligned ones through an aligned stack
/// buffer. Never panics in release builds.
///
/// Large reductions are split across spare cores (see [`par`]).
pub fn reduce_bytes(dtype: DataType, op: ReduceOp, dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len(), "reduce_bytes: length mismatch");
    debug_assert_eq!(dst.len() % dtype.size(), 0, "reduce_bytes: partial element");
    par::split(dst, [src], &|d, [s]| dispatch!(dtype, bytes2(op, d, s)))
}

/// `dst[i] = a[i] op b[i]` over raw bytes holding `dtype` elements (Avg sums): the out-of-place
/// form of [`reduce_bytes`], saving a copy of `a` into `dst`. Same length and alignment rules.
pub fn reduce3_bytes(dtype: DataType, op: ReduceOp, dst: &mut [u8], a: &[u8], b: &[u8]) {
    debug_assert!(
        dst.len() == a.len() && a.len() == b.len(),
        "reduce3_bytes: length mismatch"
    );
    debug_assert_eq!(
        dst.len() % dtype.size(),
        0,
        "reduce3_bytes: partial element"
    );
    par::split(dst, [a, b], &|d, [a, b]| {
        dispatch!(dtype, bytes3(op, d, a, b))
    })
}

/// Multiplies every `dtype` element of `buf` by `scalar` (one `dtype` element, native byte
/// order): the pre-multiplication of a pre-multiplied sum (NCCL's `ncclRedOpCreatePreMulSum`).
/// Integers wrap; halves are multiplied in f32 and rounded back. `buf` may be unaligned; a
/// `scalar` shorter than one element, or a trailing partial element, is left alone.
pub fn scale_bytes(dtype: DataType, buf: &mut [u8], scalar: &[u8]) {
    macro_rules! each {
        ($t:ty, $n:expr, |$x:ident, $k:ident| $e:expr) => {{
            let Some(k) = scalar.get(..$n) else { return };
            let $k = <$t>::from_ne_bytes(k.try_into().expect("n bytes"));
            for c in buf.chunks_exact_mut($n) {
                let $x = <$t>::from_ne_bytes((&*c).try_into().expect("n bytes"));
                c.copy_from_slice(&($e).to_ne_bytes());
            }
        }};
    }
    match dtype {
        DataType::I8 => each!(i8, 1, |x, k| x.wrapping_mul(k)),
        DataType::U8 => each!(u8, 1, |x, k| x.wrapping_mul(k)),
        DataType::I32 => each!(i32, 4, |x, k| x.wrapping_mul(k)),
        DataType::U32 => each!(u32, 4, |x, k| x.wrapping_mul(k)),
        DataType::I64 => each!(i64, 8, |x, k| x.wrapping_mul(k)),
        DataType::U64 => each!(u64, 8, |x, k| x.wrapping_mul(k)),
        DataType::F32 => each!(f32, 4, |x, k| x * k),
        DataType::F64 => each!(f64, 8, |x, k| x * k),
        DataType::F16 => each!(u16, 2, |x, k| f16::from_f32(
            f16::from_bits(x).to_f32() * f16::from_bits(k).to_f32()
        )
        .to_bits()),
        DataType::BF16 => each!(u16, 2, |x, k| bf16::from_f32(
            bf16::from_bits(x).to_f32() * bf16::from_bits(k).to_f32()
        )
        .to_bits()),
    }
}

/// Divides every `dtype` element of `buf` by `n` (the end of an Avg), as `finish_avg_slice`.
/// `buf` may be unaligned; its length should be a multiple of `dtype.size()`.
pub fn finish_avg_bytes(dtype: DataType, buf: &mut [u8], n: usize) {
    debug_assert_eq!(
        buf.len() % dtype.size(),
        0,
        "finish_avg_bytes: partial element"
    );
    dispatch!(dtype, bytes_avg(buf, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_bytes_multiplies_every_element() {
        let mut f: Vec<u8> = [1.5f32, -2.0, 0.25]
            .iter()
            .flat_map(|x| x.to_ne_bytes())
            .collect();
        scale_bytes(DataType::F32, &mut f[..], &4.0f32.to_ne_bytes());
        let got: Vec<f32> = f
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got, [6.0, -8.0, 1.0]);
        // Unaligned, and a trailing partial element left alone.
        let mut i = [0u8; 1 + 2 * 8 + 3];
        i[1..9].copy_from_slice(&7i64.to_ne_bytes());
        i[9..17].copy_from_slice(&(-3i64).to_ne_bytes());
        scale_bytes(DataType::I64, &mut i[1..], &(-2i64).to_ne_bytes());
        assert_eq!(i64::from_ne_bytes(i[1..9].try_into().unwrap()), -14);
        assert_eq!(i64::from_ne_bytes(i[9..17].try_into().unwrap()), 6);
        let mut h: Vec<u8> = f16::from_f32(3.0).to_bits().to_ne_bytes().to_vec();
        scale_bytes(
            DataType::F16,
            &mut h,
            &f16::from_f32(0.5).to_bits().to_ne_bytes(),
        );
        assert_eq!(
            f16::from_bits(u16::from_ne_bytes([h[0], h[1]])).to_f32(),
            1.5
        );
    }
    use proptest::prelude::*;
    use std::cell::Cell;

    thread_local! {
        /// Set by a test to make this thread take the portable (baseline) loops, so that they
        /// are tested on CPUs that would otherwise take the AVX2 / F16C ones.
        pub(super) static FORCE_PORTABLE: Cell<bool> = const { Cell::new(false) };
    }

    /// splitmix64: a tiny deterministic generator for test data.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Random test values: integers over their whole range (to exercise wrapping), floats
    /// finite, with some signed zeros, so that results compare bit for bit.
    trait Gen: Element {
        fn gen_one(state: &mut u64) -> Self;
    }
    macro_rules! gen_int {
        ($($t:ty),*) => {$(
            impl Gen for $t {
                fn gen_one(state: &mut u64) -> Self {
                    next(state) as $t
                }
            }
        )*};
    }
    gen_int!(i8, u8, i32, u32, i64, u64);
    fn gen_f64(state: &mut u64) -> f64 {
        let r = next(state);
        match r % 16 {
            0 => 0.0,
            1 => -0.0,
            _ => ((r >> 8) % 2_000_001) as f64 / 1024.0 - 976.5625,
        }
    }
    impl Gen for f32 {
        fn gen_one(state: &mut u64) -> Self {
            gen_f64(state) as f32 * 1.000_001
        }
    }
    impl Gen for f64 {
        fn gen_one(state: &mut u64) -> Self {
            gen_f64(state) * 1.000_000_000_1
        }
    }
    impl Gen for f16 {
        fn gen_one(state: &mut u64) -> Self {
            f16::from_f64(gen_f64(state) / 8.0)
        }
    }
    impl Gen for bf16 {
        fn gen_one(state: &mut u64) -> Self {
            bf16::from_f64(gen_f64(state) * 1.1)
        }
    }

    fn gen_vec<T: Gen>(n: usize, seed: u64) -> Vec<T> {
        let mut s = seed;
        (0..n).map(|_| T::gen_one(&mut s)).collect()
    }

    /// `n` bytes at byte offset `off` of an 8-byte aligned backing store (so offset 0 is
    /// aligned for every type and offset 1 is misaligned for every type wider than a byte).
    struct Buf {
        words: Vec<u64>,
        off: usize,
        n: usize,
    }
    impl Buf {
        fn new<T: Element>(v: &[T], off: usize) -> Buf {
            let src: &[u8] = bytemuck::cast_slice(v);
            let n = src.len();
            let mut words = vec![0xA5A5_A5A5_A5A5_A5A5u64; (n + off).div_ceil(8) + 1];
            bytemuck::cast_slice_mut::<u64, u8>(&mut words)[off..off + n].copy_from_slice(src);
            Buf { words, off, n }
        }
        fn bytes(&self) -> &[u8] {
            &bytemuck::cast_slice::<u64, u8>(&self.words)[self.off..self.off + self.n]
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[self.off..self.off + self.n]
        }
        /// The guard bytes around the slice are untouched.
        fn guards_ok(&self) -> bool {
            let all = bytemuck::cast_slice::<u64, u8>(&self.words);
            all[..self.off]
                .iter()
                .chain(&all[self.off + self.n..])
                .all(|&b| b == 0xA5)
        }
    }

    fn naive2<T: Element>(op: ReduceOp, a: &[T], b: &[T]) -> Vec<T> {
        a.iter().zip(b).map(|(&x, &y)| T::op1(op, x, y)).collect()
    }

    fn as_bytes<T: Element>(v: &[T]) -> &[u8] {
        bytemuck::cast_slice(v)
    }

    /// reduce_bytes, reduce3_bytes and reduce_slice against the per-element reference.
    fn check<T: Gen>(op: ReduceOp, len: usize, offs: (usize, usize, usize), seed: u64) {
        let a: Vec<T> = gen_vec(len, seed);
        let b: Vec<T> = gen_vec(len, seed ^ 0x5555);
        let want = naive2(op, &a, &b);
        let ctx = format!("{:?} {op:?} len {len} offsets {offs:?}", T::DTYPE);

        // In place, over bytes.
        let mut d = Buf::new(&a, offs.0);
        let s = Buf::new(&b, offs.1);
        reduce_bytes(T::DTYPE, op, d.bytes_mut(), s.bytes());
        assert!(d.bytes() == as_bytes(&want), "reduce_bytes {ctx}");
        assert!(d.guards_ok(), "reduce_bytes wrote outside dst: {ctx}");

        // Out of place, over bytes.
        let mut d = Buf::new(&vec![T::zeroed(); len], offs.2);
        let x = Buf::new(&a, offs.0);
        let y = Buf::new(&b, offs.1);
        reduce3_bytes(T::DTYPE, op, d.bytes_mut(), x.bytes(), y.bytes());
        assert!(d.bytes() == as_bytes(&want), "reduce3_bytes {ctx}");
        assert!(d.guards_ok(), "reduce3_bytes wrote outside dst: {ctx}");

        // Typed.
        if offs == (0, 0, 0) {
            let mut t = a.clone();
            reduce_slice(op, &mut t, &b);
            assert!(as_bytes(&t) == as_bytes(&want), "reduce_slice {ctx}");
            let mut t = vec![T::zeroed(); len];
            reduce3_slice(op, &mut t, &a, &b);
            assert!(as_bytes(&t) == as_bytes(&want), "reduce3_slice {ctx}");
        }
    }

    /// finish_avg_bytes / finish_avg_slice against the per-element reference.
    fn check_avg<T: Gen>(len: usize, off: usize, n: usize, seed: u64) {
        let a: Vec<T> = gen_vec(len, seed);
        let want: Vec<T> = if n >= 2 {
            a.iter().map(|&x| T::avg1(x, n)).collect()
        } else {
            a.clone()
        };
        let mut d = Buf::new(&a, off);
        finish_avg_bytes(T::DTYPE, d.bytes_mut(), n);
        let ctx = format!("{:?} len {len} off {off} n {n}", T::DTYPE);
        assert!(d.bytes() == as_bytes(&want), "finish_avg_bytes {ctx}");
        assert!(d.guards_ok(), "finish_avg_bytes wrote outside buf: {ctx}");
        let mut t = a.clone();
        finish_avg_slice(&mut t, n);
        assert!(as_bytes(&t) == as_bytes(&want), "finish_avg_slice {ctx}");
    }

    macro_rules! for_dtype {
        ($dtype:expr, $f:ident($($arg:expr),*)) => {
            match $dtype {
                DataType::I8 => $f::<i8>($($arg),*),
                DataType::U8 => $f::<u8>($($arg),*),
                DataType::I32 => $f::<i32>($($arg),*),
                DataType::U32 => $f::<u32>($($arg),*),
                DataType::I64 => $f::<i64>($($arg),*),
                DataType::U64 => $f::<u64>($($arg),*),
                DataType::F16 => $f::<f16>($($arg),*),
                DataType::F32 => $f::<f32>($($arg),*),
                DataType::F64 => $f::<f64>($($arg),*),
                DataType::BF16 => $f::<bf16>($($arg),*),
            }
        };
    }

    const OFFSETS: [(usize, usize, usize); 5] =
        [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)];

    #[test]
    fn every_dtype_and_op_small_lengths() {
        for dt in DataType::ALL {
            for op in ReduceOp::ALL {
                for len in [0, 1, 7, 8, 33, 300, 4097] {
                    for offs in OFFSETS {
                        for_dtype!(dt, check(op, len, offs, len as u64 * 31 + op as u64));
                    }
                }
            }
        }
    }

    #[test]
    fn portable_loops() {
        FORCE_PORTABLE.with(|f| f.set(true));
        for dt in DataType::ALL {
            for op in ReduceOp::ALL {
                for len in [0, 1, 7, 33, 4097, 100_003] {
                    for offs in OFFSETS {
                        for_dtype!(dt, check(op, len, offs, len as u64 * 17 + op as u64));
                    }
                }
            }
            for n in [2, 3, 300] {
                for off in [0, 1] {
                    for_dtype!(dt, check_avg(4099, off, n, n as u64));
                }
            }
        }
        FORCE_PORTABLE.with(|f| f.set(false));
    }

    #[test]
    fn every_dtype_and_op_large() {
        for dt in DataType::ALL {
            for op in ReduceOp::ALL {
                for offs in [(0, 0, 0), (1, 1, 1)] {
                    for_dtype!(dt, check(op, 1_000_003, offs, 7 + dt as u64));
                }
            }
        }
    }

    #[test]
    fn avg_division() {
        for dt in DataType::ALL {
            for len in [0, 1, 7, 1000, 1_000_003] {
                for off in [0, 1] {
                    for n in [0, 1, 2, 3, 7, 8, 128, 255, 256, 300, 1 << 40] {
                        if len > 1000 && n > 8 {
                            continue;
                        }
                        for_dtype!(dt, check_avg(len, off, n, n as u64 ^ len as u64));
                    }
                }
            }
        }
    }

    #[test]
    fn avg_values() {
        let mut v = [7i32, -7, 9, i32::MIN];
        finish_avg_slice(&mut v, 2);
        assert_eq!(v, [3, -3, 4, i32::MIN / 2]); // truncation toward zero
        let mut v = [-128i8, 127, -127, 100];
        finish_avg_slice(&mut v, 128); // 128 does not fit in i8
        assert_eq!(v, [-1, 0, 0, 0]);
        let mut v = [-128i8, 127];
        finish_avg_slice(&mut v, 1000);
        assert_eq!(v, [0, 0]);
        let mut v = [255u8, 200];
        finish_avg_slice(&mut v, 256);
        assert_eq!(v, [0, 0]);
        let mut v = [u64::MAX, 10];
        finish_avg_slice(&mut v, 3);
        assert_eq!(v, [u64::MAX / 3, 3]);
        let mut v = [i64::MIN, i64::MAX];
        finish_avg_slice(&mut v, usize::MAX);
        assert_eq!(v, [0, 0]);
        let mut v = [1.0f32, 3.0, -6.0];
        finish_avg_slice(&mut v, 4);
        assert_eq!(v, [0.25, 0.75, -1.5]);
        let mut v = [1.0f64];
        finish_avg_slice(&mut v, 3);
        assert_eq!(v, [1.0 / 3.0]);
        let mut v = [f16::from_f32(1.0), f16::from_f32(-3.0)];
        finish_avg_slice(&mut v, 3);
        assert_eq!(v, [f16::from_f32(1.0 / 3.0), f16::from_f32(-1.0)]);
        let mut v = [bf16::from_f32(1.0)];
        finish_avg_slice(&mut v, 3);
        assert_eq!(v, [bf16::from_f32(1.0 / 3.0)]);
        // n == 0 is a no-op, not a division by zero.
        let mut v = [5u32];
        finish_avg_slice(&mut v, 0);
        assert_eq!(v, [5]);
    }

    #[test]
    fn integer_wrap() {
        let mut d = [i32::MAX, i32::MIN, 100];
        reduce_slice(ReduceOp::Sum, &mut d, &[1, -1, 27]);
        assert_eq!(d, [i32::MIN, i32::MAX, 127]);
        let mut d = [200u8, 16, 255];
        reduce_slice(ReduceOp::Prod, &mut d, &[2, 16, 255]);
        assert_eq!(d, [144, 0, 1]);
        let mut d = [127i8, -128];
        reduce_slice(ReduceOp::Sum, &mut d, &[1, -1]);
        assert_eq!(d, [-128, 127]);
        let mut d = [u64::MAX, i64::MAX as u64];
        reduce_slice(ReduceOp::Avg, &mut d, &[1, 2]);
        assert_eq!(d, [0, i64::MAX as u64 + 2]);
        let mut d = [i64::MAX];
        reduce_slice(ReduceOp::Prod, &mut d, &[2]);
        assert_eq!(d, [-2]);
        let mut d = [-5i32, 5, u32::MAX as i32];
        reduce_slice(ReduceOp::Max, &mut d, &[3, -3, 0]);
        assert_eq!(d, [3, 5, 0]);
        let mut d = [5u32, 0];
        reduce_slice(ReduceOp::Min, &mut d, &[u32::MAX, 1]);
        assert_eq!(d, [5, 0]);
    }

    #[test]
    fn float_max_min_propagate_nan() {
        let nan = f32::NAN;
        for op in [ReduceOp::Max, ReduceOp::Min] {
            let mut d = [nan, 1.0, nan, 2.0, -0.0, 0.0];
            reduce_slice(op, &mut d, &[1.0, nan, nan, 3.0, 0.0, -0.0]);
            assert!(
                d[0].is_nan() && d[1].is_nan() && d[2].is_nan(),
                "{op:?} {d:?}"
            );
            let want = if op == ReduceOp::Max { 3.0 } else { 2.0 };
            assert_eq!(d[3], want);
            // between zeros the one in dst stays
            assert!(d[4].to_bits() == (-0.0f32).to_bits() && d[5].to_bits() == 0);

            let mut d = [f64::NAN, 1.0];
            reduce_slice(op, &mut d, &[1.0, f64::NAN]);
            assert!(d[0].is_nan() && d[1].is_nan());
            let mut d = [f16::NAN, f16::ONE];
            reduce_slice(op, &mut d, &[f16::ONE, f16::NAN]);
            assert!(d[0].is_nan() && d[1].is_nan());
            let mut d = [bf16::NAN, bf16::ONE];
            reduce_slice(op, &mut d, &[bf16::ONE, bf16::NAN]);
            assert!(d[0].is_nan() && d[1].is_nan());
        }
        let mut d = [f32::INFINITY, 1.0];
        reduce_slice(ReduceOp::Sum, &mut d, &[f32::NEG_INFINITY, nan]);
        assert!(d[0].is_nan() && d[1].is_nan());
    }

    #[test]
    fn half_precision_rounds_once() {
        // 1 + 2^-11 is halfway between two f16 values: ties to even gives 1.0.
        // 2048 + 3 is halfway between 2050 (odd) and 2052 (even).
        let mut d = [f16::ONE, f16::from_f32(2048.0)];
        reduce_slice(
            ReduceOp::Sum,
            &mut d,
            &[f16::from_f32(2f32.powi(-11)), f16::from_f32(3.0)],
        );
        assert_eq!(d, [f16::ONE, f16::from_f32(2052.0)]);
        let mut d = [f16::MAX];
        reduce_slice(ReduceOp::Sum, &mut d, &[f16::MAX]);
        assert_eq!(d, [f16::INFINITY]);
        let mut d = [bf16::ONE, bf16::MAX];
        reduce_slice(
            ReduceOp::Sum,
            &mut d,
            &[bf16::from_f32(2f32.powi(-8)), bf16::MAX],
        );
        assert_eq!(d, [bf16::ONE, bf16::INFINITY]);
    }

    fn f32_samples() -> impl Iterator<Item = u32> {
        let mut s = 777u64;
        let specials = [
            0u32,
            0x8000_0000,
            0x7F80_0000,
            0xFF80_0000,
            0x7FC0_0000,
            0x7F80_0001,
            0xFF80_0001,
            0x7F7F_FFFF,
            0x7F7F_8000,
            0x3F80_8000,
            0x3F81_8000,
            0x3F80_8001,
            0x0000_8000,
            0x0001_8000,
            0xFFFF_FFFF,
            0x477F_E000,
            0x477F_EFFF,
            0x477F_F000,
            0x4780_0000,
            0x3880_0000,
            0x387F_FFFF,
            0x3380_0000,
            0x3300_0000,
            0x3300_0001,
            0x33C0_0000,
        ];
        // Random bits, and random values near the f16 range where the rounding cases live.
        let randoms = (0..1 << 20).map(move |i| {
            let r = next(&mut s) as u32;
            if i % 2 == 0 {
                r
            } else {
                (r & 0x8FFF_FFFF) | 0x3000_0000
            }
        });
        specials.into_iter().chain(randoms)
    }

    fn check_f16_narrow(x: u32) {
        let want = f16::from_f32(f32::from_bits(x)).to_bits();
        assert_eq!(f32_to_f16_bits(f32::from_bits(x)), want, "{x:#010x}");
    }

    #[test]
    fn f16_conversions_match_half() {
        for h in 0..=u16::MAX {
            let (got, want) = (f16_bits_to_f32(h), f16::from_bits(h).to_f32());
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
        for x in f32_samples() {
            check_f16_narrow(x);
        }
    }

    /// All 2^32 f32 values (about 20 s in release: `cargo test --release -- --ignored`).
    #[test]
    #[ignore]
    fn narrow_exhaustive() {
        for x in 0..=u32::MAX {
            check_f16_narrow(x);
            let want = bf16::from_f32(f32::from_bits(x)).to_bits();
            assert_eq!(f32_bits_to_bf16_bits(x), want, "{x:#010x}");
        }
    }

    #[test]
    fn bf16_conversion_matches_half() {
        for x in f32_samples() {
            let want = bf16::from_f32(f32::from_bits(x)).to_bits();
            assert_eq!(f32_bits_to_bf16_bits(x), want, "{x:#010x}");
        }
    }

    #[test]
    fn reference_folds_in_rank_order() {
        let r0 = [1i32, 5, -3];
        let r1 = [2i32, -5, 10];
        let r2 = [3i32, 1, 2];
        let inputs: [&[i32]; 3] = [&r0, &r1, &r2];
        assert_eq!(reference(ReduceOp::Sum, &inputs), [6, 1, 9]);
        assert_eq!(reference(ReduceOp::Prod, &inputs), [6, -25, -60]);
        assert_eq!(reference(ReduceOp::Max, &inputs), [3, 5, 10]);
        assert_eq!(reference(ReduceOp::Min, &inputs), [1, -5, -3]);
        assert_eq!(reference(ReduceOp::Avg, &inputs), [2, 0, 3]);
        assert_eq!(reference::<f32>(ReduceOp::Sum, &[]), Vec::<f32>::new());
        assert_eq!(reference(ReduceOp::Avg, &[&[3.0f32][..]]), [3.0]);
        // f32 is not associative: the fold is ((a + b) + c).
        let big = [1e8f32];
        let small = [1.0f32];
        let neg = [-1e8f32];
        let inputs: [&[f32]; 3] = [&big, &small, &neg];
        assert_eq!(reference(ReduceOp::Sum, &inputs), [0.0]);
        let inputs: [&[f32]; 3] = [&big, &neg, &small];
        assert_eq!(reference(ReduceOp::Sum, &inputs), [1.0]);
        // The kernels agree with the reference over several ranks.
        let ins: Vec<Vec<f16>> = (0..5).map(|r| gen_vec(999, r)).collect();
        let refs: Vec<&[f16]> = ins.iter().map(|v| &v[..]).collect();
        let mut acc = ins[0].clone();
        for v in &ins[1..] {
            reduce_slice(ReduceOp::Avg, &mut acc, v);
        }
        finish_avg_slice(&mut acc, 5);
        assert_eq!(acc, reference(ReduceOp::Avg, &refs));
    }

    #[test]
    fn names_and_numbers() {
        for (i, dt) in DataType::ALL.into_iter().enumerate() {
            assert_eq!(dt as i32, i as i32);
            assert_eq!(DataType::from_i32(i as i32), Some(dt));
            assert_eq!(DataType::parse(dt.name()), Some(dt));
            assert_eq!(DataType::parse(&dt.name().to_uppercase()), Some(dt));
            assert_eq!(dt.to_string(), dt.name());
        }
        assert_eq!(DataType::from_i32(10), None);
        assert_eq!(DataType::from_i32(-1), None);
        let aliases = [
            ("f32", DataType::F32),
            ("float32", DataType::F32),
            ("f16", DataType::F16),
            ("float16", DataType::F16),
            ("bf16", DataType::BF16),
            ("i32", DataType::I32),
            ("u8", DataType::U8),
            ("f64", DataType::F64),
            ("int64", DataType::I64),
        ];
        for (s, dt) in aliases {
            assert_eq!(DataType::parse(s), Some(dt), "{s}");
        }
        assert_eq!(DataType::parse("f8"), None);
        let sizes = [1, 1, 4, 4, 8, 8, 2, 4, 8, 2];
        for (dt, sz) in DataType::ALL.into_iter().zip(sizes) {
            assert_eq!(dt.size(), sz);
            assert_eq!(
                dt.is_float(),
                matches!(
                    dt,
                    DataType::F16 | DataType::F32 | DataType::F64 | DataType::BF16
                )
            );
        }
        assert_eq!(f32::DTYPE, DataType::F32);
        assert_eq!(bf16::DTYPE, DataType::BF16);
        for (i, op) in ReduceOp::ALL.into_iter().enumerate() {
            assert_eq!(op as i32, i as i32);
            assert_eq!(ReduceOp::from_i32(i as i32), Some(op));
            assert_eq!(ReduceOp::parse(op.name()), Some(op));
            assert_eq!(op.to_string(), op.name());
        }
        assert_eq!(ReduceOp::from_i32(5), None);
        assert_eq!(ReduceOp::parse("MEAN"), Some(ReduceOp::Avg));
        assert_eq!(ReduceOp::parse("xor"), None);
    }

    #[test]
    fn ragged_lengths_do_not_panic_in_release() {
        // Callers guarantee whole, equal lengths; release builds must still not panic.
        if cfg!(debug_assertions) {
            return;
        }
        let mut d = [0u8; 11];
        reduce_bytes(DataType::F32, ReduceOp::Sum, &mut d[1..], &[1u8; 7]);
        reduce3_bytes(DataType::F64, ReduceOp::Max, &mut d, &[1u8; 9], &[2u8; 3]);
        finish_avg_bytes(DataType::I64, &mut d[3..], 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_lengths_and_offsets(
            dt in 0usize..10,
            op in 0usize..5,
            len in 0usize..3000,
            od in 0usize..8,
            os in 0usize..8,
            o3 in 0usize..8,
            n in 0usize..20,
            seed in any::<u64>(),
        ) {
            let dt = DataType::ALL[dt];
            let op = ReduceOp::ALL[op];
            for_dtype!(dt, check(op, len, (od, os, o3), seed));
            for_dtype!(dt, check_avg(len, od, n, seed));
        }
    }
}
