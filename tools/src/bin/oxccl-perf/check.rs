//! Check values: what each rank puts in its send buffer, and the expected result.
//!
//! Collectives that only move data send [`data_value`]s: a pattern of the rank and the element's
//! index in the sender's buffer, so every rank can regenerate any rank's buffer. For reductions
//! every value is a small integer, exactly representable in every element type, chosen so that
//! every partial result of the reduction is exact too, in any order: for floats, the ranks' values
//! together stay within the type's exact-integer range (2^11 for half, 2^8 for bfloat16); for
//! integers, arithmetic wraps, which is associative and commutative. So the expected result is
//! unique, and any rank computes it on its own by regenerating every rank's input and reducing
//! with [`oxccl::internals::reduce::reduce_bytes`]. Averages of floats are compared with a tolerance of a few
//! units in the last place (the division may round either way); everything else must match bit
//! for bit.

use half::{bf16, f16};
use oxccl::{DataType, ReduceOp};

fn is_signed(d: DataType) -> bool {
    !matches!(d, DataType::U8 | DataType::U32 | DataType::U64)
}

/// The largest integer below which every integer is exact in a float type (2^(mantissa bits + 1)).
fn exact_limit(d: DataType) -> Option<u64> {
    match d {
        DataType::F16 => Some(1 << 11),
        DataType::BF16 => Some(1 << 8),
        DataType::F32 => Some(1 << 24),
        DataType::F64 => Some(1 << 53),
        _ => None,
    }
}

/// The value rank `rank` of `nranks` contributes at element `i`.
pub(crate) fn input_value(
    dtype: DataType,
    op: ReduceOp,
    rank: usize,
    nranks: usize,
    i: usize,
) -> i64 {
    let (r, i, n) = (rank as u64, i as u64, nranks.max(1) as u64);
    if op == ReduceOp::Prod {
        // Mostly ones: products stay in range (floats overflow to inf, the same in any order);
        // odd factors for integers, so wrapped products do not collapse to zero.
        let big = if dtype.is_float() { 2 } else { 3 };
        return if (i * 3 + r) % 5 == 0 { big } else { 1 };
    }
    // Span of values: any for integers (wrapping is exact), bounded for floats so that the sum of
    // all ranks' magnitudes stays exact.
    let span = match exact_limit(dtype) {
        Some(limit) => (limit / n).min(1000),
        None if dtype.size() == 1 => 256,
        None => 1000,
    };
    if span < 2 {
        // More ranks than the type can sum exactly: one rank contributes 1, the rest 0.
        return i64::from((i + r) % n == 0);
    }
    let v = ((r * 7 + i * 13 + 1) % span) as i64;
    if is_signed(dtype) {
        v - (span / 2) as i64
    } else {
        v
    }
}

/// The value rank `rank` holds at element `i` of its send buffer in collectives that move data
/// without reducing it (a full-range pattern of rank and index; exact in every type).
pub(crate) fn data_value(dtype: DataType, rank: usize, i: usize) -> i64 {
    input_value(dtype, ReduceOp::Sum, rank, 1, i)
}

/// Writes [`data_value`]s of `rank` for elements `first..` into `buf` (whole elements).
pub(crate) fn fill_data(dtype: DataType, rank: usize, first: usize, buf: &mut [u8]) {
    let size = dtype.size();
    for (i, e) in buf.chunks_exact_mut(size).enumerate() {
        encode(dtype, data_value(dtype, rank, first + i), e);
    }
}

/// Turns an expected result into a value that differs from it in every element, by far more
/// than the tolerance for averages (bit 6 of each element's most significant byte: an exponent
/// bit for floats), so an element the collective failed to write is always counted as wrong.
pub(crate) fn poison(dtype: DataType, buf: &mut [u8]) {
    let size = dtype.size();
    for e in buf.chunks_exact_mut(size) {
        e[size - 1] ^= 0x40;
    }
}

/// Writes one value as a little-endian element of `dtype` (integers wrap, as `as` does).
fn encode(dtype: DataType, v: i64, out: &mut [u8]) {
    match dtype {
        DataType::I8 => out.copy_from_slice(&(v as i8).to_le_bytes()),
        DataType::U8 => out.copy_from_slice(&(v as u8).to_le_bytes()),
        DataType::I32 => out.copy_from_slice(&(v as i32).to_le_bytes()),
        DataType::U32 => out.copy_from_slice(&(v as u32).to_le_bytes()),
        DataType::I64 => out.copy_from_slice(&v.to_le_bytes()),
        DataType::U64 => out.copy_from_slice(&(v as u64).to_le_bytes()),
        DataType::F16 => out.copy_from_slice(&f16::from_f64(v as f64).to_le_bytes()),
        DataType::BF16 => out.copy_from_slice(&bf16::from_f64(v as f64).to_le_bytes()),
        DataType::F32 => out.copy_from_slice(&(v as f32).to_le_bytes()),
        DataType::F64 => out.copy_from_slice(&(v as f64).to_le_bytes()),
    }
}

/// Reads one float element as f64 (for the tolerant comparison of averages).
fn decode_float(dtype: DataType, b: &[u8]) -> f64 {
    match dtype {
        DataType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f64(),
        DataType::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f64(),
        DataType::F32 => f32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as f64,
        DataType::F64 => f64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
        _ => 0.0,
    }
}

/// Fills `buf` (whole elements of `dtype`) with rank `rank`'s input.
pub(crate) fn fill_input(
    dtype: DataType,
    op: ReduceOp,
    rank: usize,
    nranks: usize,
    buf: &mut [u8],
) {
    let size = dtype.size();
    for (i, e) in buf.chunks_exact_mut(size).enumerate() {
        encode(dtype, input_value(dtype, op, rank, nranks, i), e);
    }
}

/// The expected result of reducing every rank's input over `bytes` bytes (element by element:
/// a prefix of a longer result is the result for the prefix).
pub(crate) fn expected(dtype: DataType, op: ReduceOp, nranks: usize, bytes: usize) -> Vec<u8> {
    let mut acc = vec![0u8; bytes];
    fill_input(dtype, op, 0, nranks, &mut acc);
    let mut other = vec![0u8; bytes];
    for r in 1..nranks {
        fill_input(dtype, op, r, nranks, &mut other);
        oxccl::internals::reduce::reduce_bytes(dtype, op, &mut acc, &other);
    }
    if op == ReduceOp::Avg {
        oxccl::internals::reduce::finish_avg_bytes(dtype, &mut acc, nranks);
    }
    acc
}

/// Relative tolerance for averages of a float type (a few units in the last place).
fn avg_tolerance(d: DataType) -> f64 {
    match d {
        DataType::F16 => 2e-3,
        DataType::BF16 => 1.6e-2,
        DataType::F32 => 4e-7,
        _ => 1e-15,
    }
}

/// How many elements of `got` differ from `want`.
pub(crate) fn count_wrong(dtype: DataType, op: ReduceOp, got: &[u8], want: &[u8]) -> u64 {
    if got == want {
        return 0;
    }
    if got.len() != want.len() {
        return (got.len().max(want.len()) / dtype.size()) as u64;
    }
    let size = dtype.size();
    let pairs = got.chunks_exact(size).zip(want.chunks_exact(size));
    if op == ReduceOp::Avg && dtype.is_float() {
        let tol = avg_tolerance(dtype);
        pairs
            .filter(|(g, w)| {
                let (g, w) = (decode_float(dtype, g), decode_float(dtype, w));
                !(g == w || (g - w).abs() <= tol * w.abs().max(1.0))
            })
            .count() as u64
    } else {
        pairs.filter(|(g, w)| g != w).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_sums_stay_exact() {
        for &d in &[DataType::F16, DataType::BF16, DataType::F32] {
            for n in [1, 2, 3, 8, 64, 200, 300, 5000] {
                let limit = exact_limit(d).unwrap() as i64;
                for i in 0..50 {
                    let total: i64 = (0..n)
                        .map(|r| input_value(d, ReduceOp::Sum, r, n, i).abs())
                        .sum();
                    assert!(total <= limit, "{d:?} n={n} i={i}: {total} > {limit}");
                }
            }
        }
    }

    #[test]
    fn values_vary_and_fit() {
        for &d in DataType::ALL.iter() {
            for &op in ReduceOp::ALL.iter() {
                let vals: Vec<i64> = (0..64).map(|i| input_value(d, op, 1, 4, i)).collect();
                assert!(
                    vals.iter().any(|&v| v != vals[0]),
                    "{d:?} {op:?} constant input"
                );
                if !is_signed(d) {
                    assert!(vals.iter().all(|&v| v >= 0));
                }
            }
        }
    }

    #[test]
    fn encode_round_trips_floats() {
        let mut b = [0u8; 2];
        encode(DataType::BF16, -100, &mut b);
        assert_eq!(decode_float(DataType::BF16, &b), -100.0);
        encode(DataType::F16, 1023, &mut b);
        assert_eq!(decode_float(DataType::F16, &b), 1023.0);
        let mut b = [0u8; 4];
        encode(DataType::F32, 7, &mut b);
        assert_eq!(decode_float(DataType::F32, &b), 7.0);
    }

    #[test]
    fn expected_sum_matches_integer_arithmetic() {
        let n = 3;
        let count = 40;
        let got = expected(DataType::I32, ReduceOp::Sum, n, count * 4);
        for (i, e) in got.chunks_exact(4).enumerate() {
            let want: i64 = (0..n)
                .map(|r| input_value(DataType::I32, ReduceOp::Sum, r, n, i))
                .sum();
            assert_eq!(i32::from_le_bytes(e.try_into().unwrap()) as i64, want);
        }
        let got = expected(DataType::F32, ReduceOp::Max, n, count * 4);
        for (i, e) in got.chunks_exact(4).enumerate() {
            let want = (0..n)
                .map(|r| input_value(DataType::F32, ReduceOp::Max, r, n, i))
                .max()
                .unwrap();
            assert_eq!(f32::from_le_bytes(e.try_into().unwrap()), want as f32);
        }
    }

    #[test]
    fn poison_is_always_wrong() {
        for &d in DataType::ALL.iter() {
            for &op in ReduceOp::ALL.iter() {
                let want = expected(d, op, 3, 64 * d.size());
                let mut got = want.clone();
                poison(d, &mut got);
                assert_eq!(count_wrong(d, op, &got, &want), 64, "{d:?} {op:?}");
            }
            let mut want = vec![0u8; 64 * d.size()];
            fill_data(d, 2, 5, &mut want);
            let mut got = want.clone();
            poison(d, &mut got);
            assert_eq!(count_wrong(d, ReduceOp::Avg, &got, &want), 64, "{d:?}");
        }
    }

    #[test]
    fn data_values_tell_ranks_apart() {
        for &d in DataType::ALL.iter() {
            let a: Vec<i64> = (0..32).map(|i| data_value(d, 0, i)).collect();
            let b: Vec<i64> = (0..32).map(|i| data_value(d, 1, i)).collect();
            assert_ne!(a, b, "{d:?}");
            assert!(a.iter().any(|&v| v != a[0]), "{d:?}");
        }
    }

    #[test]
    fn wrong_elements_are_counted() {
        let want = expected(DataType::F32, ReduceOp::Sum, 2, 64);
        let mut got = want.clone();
        assert_eq!(count_wrong(DataType::F32, ReduceOp::Sum, &got, &want), 0);
        got[0] ^= 1;
        got[9] ^= 0x80;
        assert_eq!(count_wrong(DataType::F32, ReduceOp::Sum, &got, &want), 2);
        // Averages of floats tolerate the last bit, not more.
        let mut w = [0u8; 4];
        let mut g = [0u8; 4];
        w.copy_from_slice(&(1.0f32 / 3.0).to_le_bytes());
        g.copy_from_slice(&f32::from_bits((1.0f32 / 3.0).to_bits() + 1).to_le_bytes());
        assert_eq!(count_wrong(DataType::F32, ReduceOp::Avg, &g, &w), 0);
        assert_eq!(count_wrong(DataType::F32, ReduceOp::Sum, &g, &w), 1);
        g.copy_from_slice(&0.34f32.to_le_bytes());
        assert_eq!(count_wrong(DataType::F32, ReduceOp::Avg, &g, &w), 1);
    }
}
