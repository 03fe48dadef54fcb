//! Data types, reduction operators and the reduce kernels. (Stub: being written.)

/// Element types, numbered as NCCL numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum DataType {
    /// int8
    I8 = 0,
    /// uint8
    U8 = 1,
    /// int32
    I32 = 2,
    /// uint32
    U32 = 3,
    /// int64
    I64 = 4,
    /// uint64
    U64 = 5,
    /// float16
    F16 = 6,
    /// float32
    F32 = 7,
    /// float64
    F64 = 8,
    /// bfloat16
    BF16 = 9,
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
}

/// Reduction operators, numbered as NCCL numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ReduceOp {
    /// a + b
    Sum = 0,
    /// a * b
    Prod = 1,
    /// max(a, b)
    Max = 2,
    /// min(a, b)
    Min = 3,
    /// sum, divided by the number of ranks once at the end
    Avg = 4,
}

/// The ten element types oxccl reduces.
pub trait Element: bytemuck::Pod + Send + Sync {
    /// This type's [`DataType`].
    const DTYPE: DataType;
}

/// `dst[i] = dst[i] op src[i]` over raw bytes holding `dtype` elements (Avg sums).
pub fn reduce_bytes(dtype: DataType, op: ReduceOp, dst: &mut [u8], src: &[u8]) {
    let _ = (dtype, op, dst, src);
    todo!()
}

/// Divides every element of `buf` by `n` (the end of an Avg).
pub fn finish_avg_bytes(dtype: DataType, buf: &mut [u8], n: usize) {
    let _ = (dtype, buf, n);
    todo!()
}
