//! One test case per collective, as nccl-tests sets each up: the buffers, the call (out of place
//! and in place), what every rank starts from and the result it must see.
//!
//! `count` is always the `count` column: elements per rank block. Layouts, in elements (n ranks,
//! c = count, r = this rank):
//!
//! | test | send | recv | in place: one buffer | checked on this rank |
//! |---|---|---|---|---|
//! | allreduce | c | c | c | all |
//! | broadcast | c | c | c (the root's data at the root) | all |
//! | reduce | c | c | c | all, at the root only |
//! | allgather | c | n c | n c (own block at r) | all |
//! | reducescatter | n c | c | n c (result in block r) | block r |
//! | alltoall | n c | n c | n c | all |
//! | sendrecv | c | c | — (none) | all |

use std::ops::Range;

use oxccl::{Call, Communicator, DataType, ReduceOp, Result};

use crate::args::Collective;
use crate::check;

/// One (collective, type, operator, root) on one rank.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Case {
    /// The collective.
    pub coll: Collective,
    /// Element type.
    pub dtype: DataType,
    /// Operator (reducing collectives; ignored by the others).
    pub op: ReduceOp,
    /// Root of rooted collectives (0 for the others).
    pub root: usize,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub nranks: usize,
}

impl Case {
    fn n(&self) -> usize {
        self.nranks.max(1)
    }

    /// Elements of the send buffer.
    pub(crate) fn send_elems(&self, count: usize) -> usize {
        match self.coll {
            Collective::ReduceScatter | Collective::AllToAll => self.n() * count,
            _ => count,
        }
    }

    /// Elements of the out-of-place receive buffer.
    pub(crate) fn recv_elems(&self, count: usize) -> usize {
        match self.coll {
            Collective::AllGather | Collective::AllToAll => self.n() * count,
            _ => count,
        }
    }

    /// Elements of the in-place buffer.
    pub(crate) fn in_place_elems(&self, count: usize) -> usize {
        match self.coll {
            Collective::AllGather | Collective::ReduceScatter | Collective::AllToAll => {
                self.n() * count
            }
            _ => count,
        }
    }

    /// The elements of the result this rank checks (in the receive buffer, or in the one buffer
    /// in place); `None` where it has nothing to check.
    pub(crate) fn checked(&self, count: usize, in_place: bool) -> Option<Range<usize>> {
        match self.coll {
            Collective::Reduce if self.rank != self.root => None,
            Collective::ReduceScatter if in_place => {
                Some(self.rank * count..(self.rank + 1) * count)
            }
            _ => Some(0..self.recv_elems(count)),
        }
    }

    /// Fills `buf` with this rank's input (the largest send buffer: every size uses a prefix).
    pub(crate) fn fill_input(&self, buf: &mut [u8]) {
        if self.coll.reduces() {
            check::fill_input(self.dtype, self.op, self.rank, self.nranks, buf);
        } else {
            check::fill_data(self.dtype, self.rank, 0, buf);
        }
    }

    /// Elements of the reduced reference this collective needs for `count` (0 if it reduces
    /// nothing): the reduction of every rank's whole send buffer.
    pub(crate) fn reference_elems(&self, count: usize) -> usize {
        if self.coll.reduces() {
            self.send_elems(count)
        } else {
            0
        }
    }

    /// The reference for the largest `count`: every rank's input reduced, element by element
    /// (a prefix serves every smaller count). Empty for collectives that do not reduce.
    pub(crate) fn reference(&self, max_count: usize) -> Vec<u8> {
        let bytes = self.reference_elems(max_count) * self.dtype.size();
        if bytes == 0 {
            return Vec::new();
        }
        check::expected(self.dtype, self.op, self.nranks, bytes)
    }

    /// Writes the expected contents of the checked range (see [`Case::checked`]) into `out`.
    pub(crate) fn expected(&self, count: usize, reference: &[u8], out: &mut [u8]) {
        let (es, n, r) = (self.dtype.size(), self.n(), self.rank);
        let block = count * es;
        match self.coll {
            Collective::AllReduce | Collective::Reduce => {
                out.copy_from_slice(&reference[..block]);
            }
            Collective::ReduceScatter => {
                out.copy_from_slice(&reference[r * block..(r + 1) * block]);
            }
            Collective::Broadcast => check::fill_data(self.dtype, self.root, 0, out),
            Collective::SendRecv => check::fill_data(self.dtype, (r + n - 1) % n, 0, out),
            Collective::AllGather => {
                for (p, b) in out.chunks_exact_mut(block.max(1)).enumerate() {
                    check::fill_data(self.dtype, p, 0, b);
                }
            }
            Collective::AllToAll => {
                // Block p comes from rank p's send block r.
                for (p, b) in out.chunks_exact_mut(block.max(1)).enumerate() {
                    check::fill_data(self.dtype, p, r * count, b);
                }
            }
        }
    }

    /// Sets up the one in-place buffer from this rank's `input` (the largest send buffer) before
    /// a checked call; `poisoned` is the expected result made wrong everywhere, written where the
    /// collective must write and this rank's input does not go.
    pub(crate) fn prepare_in_place(
        &self,
        count: usize,
        input: &[u8],
        poisoned: &[u8],
        buf: &mut [u8],
    ) {
        let es = self.dtype.size();
        let mine = |b: &mut [u8]| b.copy_from_slice(&input[..b.len()]);
        match self.coll {
            Collective::Broadcast if self.rank != self.root => buf.copy_from_slice(poisoned),
            Collective::AllGather => {
                buf.copy_from_slice(poisoned);
                let r = self.rank * count * es;
                mine(&mut buf[r..r + count * es]);
            }
            _ => mine(buf),
        }
    }

    /// One out-of-place call.
    pub(crate) fn run(&self, comm: &Communicator, send: &[u8], recv: &mut [u8]) -> Result<()> {
        let (d, op, root) = (self.dtype, self.op, self.root);
        match self.coll {
            Collective::AllReduce => comm.all_reduce_bytes(Some(send), recv, d, op),
            Collective::Broadcast => comm.broadcast_bytes(Some(send), recv, d, root),
            Collective::Reduce => comm.reduce_bytes(Some(send), recv, d, op, root),
            Collective::AllGather => comm.all_gather_bytes(Some(send), recv, d),
            Collective::ReduceScatter => comm.reduce_scatter_bytes(Some(send), recv, d, op),
            Collective::AllToAll => comm.all_to_all_bytes(Some(send), recv, d),
            Collective::SendRecv => {
                let n = self.n();
                let (to, from) = ((self.rank + 1) % n, (self.rank + n - 1) % n);
                comm.group(vec![
                    Call::send(send, d, to, 0),
                    Call::recv(recv, d, from, 0),
                ])
            }
        }
    }

    /// One in-place call on `buf`. Send/recv has no in-place form: callers skip it.
    pub(crate) fn run_in_place(&self, comm: &Communicator, buf: &mut [u8]) -> Result<()> {
        let (d, op, root) = (self.dtype, self.op, self.root);
        match self.coll {
            Collective::AllReduce => comm.all_reduce_bytes(None, buf, d, op),
            Collective::Broadcast => comm.broadcast_bytes(None, buf, d, root),
            Collective::Reduce => comm.reduce_bytes(None, buf, d, op, root),
            Collective::AllGather => comm.all_gather_bytes(None, buf, d),
            Collective::ReduceScatter => comm.reduce_scatter_bytes(None, buf, d, op),
            Collective::AllToAll => comm.all_to_all_bytes(None, buf, d),
            Collective::SendRecv => Err(oxccl::Error::invalid_argument(
                "sendrecv has no in-place form",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(coll: Collective, rank: usize, nranks: usize) -> Case {
        Case {
            coll,
            dtype: DataType::I32,
            op: ReduceOp::Sum,
            root: 1,
            rank,
            nranks,
        }
    }

    /// Simulates each collective on every rank from the inputs alone and compares with
    /// `expected`: the reference and the layouts agree with the collectives' definitions.
    #[test]
    fn expected_matches_the_definitions() {
        let (n, c) = (3, 5);
        let es = 4;
        let get =
            |b: &[u8], i: usize| i32::from_le_bytes(b[i * es..(i + 1) * es].try_into().unwrap());
        for coll in Collective::ALL {
            let inputs: Vec<Vec<u8>> = (0..n)
                .map(|r| {
                    let k = case(coll, r, n);
                    let mut b = vec![0u8; k.send_elems(c) * es];
                    k.fill_input(&mut b);
                    b
                })
                .collect();
            for r in 0..n {
                let k = case(coll, r, n);
                let Some(range) = k.checked(c, false) else {
                    assert!(coll == Collective::Reduce && r != 1);
                    continue;
                };
                let mut want = vec![0u8; range.len() * es];
                k.expected(c, &k.reference(c), &mut want);
                for (j, i) in range.enumerate() {
                    let sum = |idx: usize| -> i32 {
                        (0..n)
                            .map(|p| get(&inputs[p], idx))
                            .fold(0i32, i32::wrapping_add)
                    };
                    let truth = match coll {
                        Collective::AllReduce | Collective::Reduce => sum(i),
                        Collective::ReduceScatter => sum(r * c + i),
                        Collective::Broadcast => get(&inputs[1], i),
                        Collective::SendRecv => get(&inputs[(r + n - 1) % n], i),
                        Collective::AllGather => get(&inputs[i / c], i % c),
                        Collective::AllToAll => get(&inputs[i / c], r * c + i % c),
                    };
                    assert_eq!(get(&want, j), truth, "{coll:?} rank {r} element {i}");
                }
            }
        }
    }

    #[test]
    fn in_place_layouts() {
        let k = case(Collective::ReduceScatter, 2, 4);
        assert_eq!(k.checked(3, true), Some(6..9));
        assert_eq!(k.checked(3, false), Some(0..3));
        assert_eq!(
            (k.send_elems(3), k.recv_elems(3), k.in_place_elems(3)),
            (12, 3, 12)
        );
        let k = case(Collective::AllGather, 1, 4);
        assert_eq!(
            (k.send_elems(3), k.recv_elems(3), k.in_place_elems(3)),
            (3, 12, 12)
        );
        let input: Vec<u8> = (0..12u8).collect();
        let poisoned = vec![0xEEu8; 48];
        let mut buf = vec![0u8; 48];
        k.prepare_in_place(3, &input, &poisoned, &mut buf);
        assert_eq!(&buf[12..24], &input[..12]);
        assert!(buf[..12].iter().chain(&buf[24..]).all(|&b| b == 0xEE));
    }
}
