//! A Program builder that fills in dependencies by tracking, for every element range, its last
//! writer and the readers since. Algorithm code says what to do; the builder works out what each
//! step must wait for (read-after-write, write-after-read, write-after-write).

use std::collections::BTreeMap;

use super::{Algorithm, Buf, Op, Program, Range, Shape, Step};

#[derive(Debug, Clone, Default)]
struct Seg {
    end: usize,
    writer: Option<u32>,
    readers: Vec<u32>,
}

/// Tracks the hazards of one buffer as disjoint segments keyed by start element.
#[derive(Debug, Default)]
struct Hazards {
    segs: BTreeMap<usize, Seg>,
}

impl Hazards {
    /// Splits segments so that `at` is a segment boundary (if covered).
    fn cut(&mut self, at: usize) {
        let Some((&start, seg)) = self.segs.range(..=at).next_back() else {
            return;
        };
        if start == at || seg.end <= at {
            return;
        }
        let mut tail = seg.clone();
        self.segs.get_mut(&start).expect("segment just found").end = at;
        tail.end = tail.end.max(at);
        self.segs.insert(at, tail);
    }

    /// Makes [off, end) fully covered by segments that start and end on its bounds.
    fn cover(&mut self, r: Range) {
        self.cut(r.off);
        self.cut(r.end());
        // Fill holes with empty segments.
        let mut pos = r.off;
        let keys: Vec<(usize, usize)> = self
            .segs
            .range(r.off..r.end())
            .map(|(&s, g)| (s, g.end))
            .collect();
        for (s, e) in keys {
            if s > pos {
                self.segs.insert(
                    pos,
                    Seg {
                        end: s,
                        ..Seg::default()
                    },
                );
            }
            pos = e;
        }
        if pos < r.end() {
            self.segs.insert(
                pos,
                Seg {
                    end: r.end(),
                    ..Seg::default()
                },
            );
        }
    }

    fn read(&mut self, r: Range, step: u32, deps: &mut Vec<u32>) {
        if r.len == 0 {
            return;
        }
        self.cover(r);
        for (_, seg) in self.segs.range_mut(r.off..r.end()) {
            deps.extend(seg.writer);
            seg.readers.push(step);
        }
    }

    fn write(&mut self, r: Range, step: u32, deps: &mut Vec<u32>) {
        if r.len == 0 {
            return;
        }
        self.cover(r);
        for (_, seg) in self.segs.range_mut(r.off..r.end()) {
            deps.extend(seg.writer);
            deps.append(&mut seg.readers);
            seg.writer = Some(step);
        }
    }
}

/// Builds a [`Program`], inferring dependencies from the ranges each step touches.
#[derive(Debug)]
pub(crate) struct Builder {
    shape: Shape,
    steps: Vec<Step>,
    hazards: [Hazards; 3],
    scratch_len: usize,
}

impl Builder {
    /// A builder for one rank's Program.
    pub(crate) fn new(shape: &Shape) -> Builder {
        let shape = shape.clone();
        Builder {
            shape,
            steps: Vec::new(),
            hazards: Default::default(),
            scratch_len: 0,
        }
    }

    /// Reserves `len` scratch elements and returns their range.
    pub(crate) fn scratch(&mut self, len: usize) -> Range {
        let r = Range::new(Buf::Scratch, self.scratch_len, len);
        self.scratch_len += len;
        r
    }

    fn idx(buf: Buf) -> usize {
        match buf {
            Buf::Input => 0,
            Buf::Output => 1,
            Buf::Scratch => 2,
        }
    }

    /// Appends a step (zero-length steps are dropped) and returns its index.
    pub(crate) fn push(&mut self, op: Op) -> Option<u32> {
        let len = match op {
            Op::Send { src, .. } => src.len,
            Op::Copy { src, .. } | Op::Reduce { src, .. } => src.len,
            Op::Recv { dst, .. } | Op::RecvReduce { dst, .. } | Op::Finish { dst } => dst.len,
        };
        if len == 0 {
            return None;
        }
        let step = self.steps.len() as u32;
        let mut deps = Vec::new();
        for r in op.reads() {
            self.hazards[Self::idx(r.buf)].read(r, step, &mut deps);
        }
        if let Some(w) = op.writes() {
            self.hazards[Self::idx(w.buf)].write(w, step, &mut deps);
        }
        deps.sort_unstable();
        deps.dedup();
        deps.retain(|&d| d != step);
        self.steps.push(Step { op, deps });
        Some(step)
    }

    /// `Send { peer, src }`.
    pub(crate) fn send(&mut self, peer: usize, src: Range) -> Option<u32> {
        self.push(Op::Send { peer, src })
    }

    /// `Recv { peer, dst }`.
    pub(crate) fn recv(&mut self, peer: usize, dst: Range) -> Option<u32> {
        self.push(Op::Recv { peer, dst })
    }

    /// `RecvReduce { peer, dst, acc }`.
    pub(crate) fn recv_reduce(
        &mut self,
        peer: usize,
        dst: Range,
        acc: Option<Range>,
    ) -> Option<u32> {
        self.push(Op::RecvReduce { peer, dst, acc })
    }

    /// `Copy { src, dst }`.
    pub(crate) fn copy(&mut self, src: Range, dst: Range) -> Option<u32> {
        self.push(Op::Copy { src, dst })
    }

    /// `Reduce { src, dst }`.
    pub(crate) fn reduce(&mut self, src: Range, dst: Range) -> Option<u32> {
        self.push(Op::Reduce { src, dst })
    }

    /// `Finish { dst }`.
    pub(crate) fn finish(&mut self, dst: Range) -> Option<u32> {
        self.push(Op::Finish { dst })
    }

    /// One chunk (`off`, `len` elements) of this rank's part in a rooted reduction (chain or
    /// tree): its own input (the output buffer when the root reduces `in_place`, else the
    /// input) and where partial results accumulate (`scratch`'s slice, or the output on the
    /// root, which has no scratch).
    pub(crate) fn reduce_chunk(
        in_place: bool,
        scratch: Option<Range>,
        off: usize,
        len: usize,
    ) -> (Range, Range) {
        let own = if in_place {
            Range::new(Buf::Output, off, len)
        } else {
            Range::new(Buf::Input, off, len)
        };
        let acc = match scratch {
            Some(sc) => sc.sub(off, len),
            None => Range::new(Buf::Output, off, len),
        };
        (own, acc)
    }

    /// Ends a chunk of a rooted reduction: sends `partial` to `parent`, or on the root (`None`)
    /// moves it into `acc` (the output) if it is not there already and marks that final.
    pub(crate) fn pass_up(&mut self, parent: Option<usize>, partial: Range, acc: Range) {
        match parent {
            Some(p) => {
                self.send(p, partial);
            }
            None => {
                if partial != acc {
                    self.copy(partial, acc);
                }
                self.finish(acc);
            }
        }
    }

    /// The finished Program.
    pub(crate) fn build(self) -> Program {
        Program {
            shape: self.shape,
            algo: Algorithm::Linear,
            steps: self.steps,
            scratch_len: self.scratch_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape::all_reduce(2, 0, 100, false, 100)
    }

    #[test]
    fn infers_raw_war_waw() {
        let mut b = Builder::new(&shape());
        let o = |off, len| Range::new(Buf::Output, off, len);
        let w0 = b.recv(1, o(0, 10)).unwrap(); // writes 0..10
        let r1 = b.send(1, o(5, 10)).unwrap(); // reads 5..15: RAW on w0
        let w2 = b.recv(1, o(12, 4)).unwrap(); // writes 12..16: WAR on r1
        let w3 = b.recv(1, o(0, 2)).unwrap(); // writes 0..2: WAW on w0
        let p = b.build();
        assert_eq!(p.steps[r1 as usize].deps, vec![w0]);
        assert_eq!(p.steps[w2 as usize].deps, vec![r1]);
        assert_eq!(p.steps[w3 as usize].deps, vec![w0]);
    }

    #[test]
    fn disjoint_ranges_are_independent() {
        let mut b = Builder::new(&shape());
        let o = |off, len| Range::new(Buf::Output, off, len);
        b.recv(1, o(0, 10));
        let s = b.send(1, o(10, 10)).unwrap();
        let c = b
            .copy(Range::new(Buf::Input, 0, 5), Range::new(Buf::Scratch, 0, 5))
            .unwrap();
        let p = b.build();
        assert!(p.steps[s as usize].deps.is_empty());
        assert!(p.steps[c as usize].deps.is_empty());
    }

    #[test]
    fn zero_length_steps_are_dropped() {
        let mut b = Builder::new(&shape());
        assert_eq!(b.send(1, Range::new(Buf::Output, 3, 0)), None);
        assert!(b.build().steps.is_empty());
    }
}
