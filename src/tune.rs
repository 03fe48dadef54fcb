//! Algorithm selection. (A first, size-based policy; the cost model replaces it.)

use crate::algo::{Algorithm, Collective, Shape};

/// All-reduces of at most this many bytes use the direct algorithm (up to 16 ranks).
pub const DIRECT_MAX_BYTES: usize = 16 << 10;

/// The algorithm for a call of `bytes` bytes per rank block.
pub fn choose(shape: &Shape, bytes: usize, nranks: usize) -> Algorithm {
    match shape.coll {
        Collective::AllReduce if bytes <= DIRECT_MAX_BYTES && nranks <= 16 => Algorithm::Direct,
        Collective::AllReduce if bytes <= 256 << 10 => Algorithm::Rhd,
        Collective::AllReduce => Algorithm::Ring,
        Collective::Broadcast | Collective::Reduce if bytes <= 64 << 10 => Algorithm::Tree,
        Collective::Broadcast | Collective::Reduce => Algorithm::Chain,
        Collective::AllGather
        | Collective::ReduceScatter
        | Collective::AllGatherV
        | Collective::ReduceScatterV
            if bytes * nranks <= 64 << 10 =>
        {
            Algorithm::Bruck
        }
        c => c.algorithms()[0],
    }
}
