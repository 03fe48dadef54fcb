//! The simple schedules: pairwise all-to-all, linear gather / scatter, point-to-point, and the
//! dissemination barrier.

use super::{Buf, Builder, Collective, Range, Shape, slices};

fn send_all(b: &mut Builder, to: usize, rg: Range, chunk: usize) {
    for (o, l) in slices(0, rg.len, chunk) {
        b.send(to, rg.sub(o, l));
    }
}

fn recv_all(b: &mut Builder, from: usize, rg: Range, chunk: usize) {
    for (o, l) in slices(0, rg.len, chunk) {
        b.recv(from, rg.sub(o, l));
    }
}

/// Pairwise-exchange all-to-all(v): in step k, send to r+k and receive from r-k.
pub(crate) fn all_to_all(s: &Shape) -> Builder {
    let (n, r) = (s.nranks, s.rank);
    let (sl, rl) = (s.blocks(), s.recv_blocks());
    let mut b = Builder::new(s);
    let src = if s.in_place {
        // In place the sends would read what the receives overwrite: work from a copy.
        let sc = b.scratch(sl.total());
        for (o, l) in slices(0, sl.total(), s.chunk) {
            b.copy(Range::new(Buf::Output, o, l), sc.sub(o, l));
        }
        sc
    } else {
        Range::new(Buf::Input, 0, sl.total())
    };
    let own = sl.len(r).min(rl.len(r));
    for (o, l) in slices(0, own, s.chunk) {
        b.copy(
            src.sub(sl.off(r) + o, l),
            Range::new(Buf::Output, rl.off(r) + o, l),
        );
    }
    for k in 1..n {
        let to = (r + k) % n;
        let from = (r + n - k) % n;
        send_all(&mut b, to, src.sub(sl.off(to), sl.len(to)), s.chunk);
        recv_all(
            &mut b,
            from,
            Range::new(Buf::Output, rl.off(from), rl.len(from)),
            s.chunk,
        );
    }
    b
}

/// Linear gather: every rank sends its block to the root.
pub(crate) fn gather(s: &Shape) -> Builder {
    let (n, r, root) = (s.nranks, s.rank, s.root);
    let lay = s.blocks();
    let mut b = Builder::new(s);
    if r == root {
        if !s.in_place {
            b.copy(
                Range::new(Buf::Input, 0, lay.len(r)),
                Range::new(Buf::Output, lay.off(r), lay.len(r)),
            );
        }
        for k in 1..n {
            let p = (root + k) % n;
            recv_all(
                &mut b,
                p,
                Range::new(Buf::Output, lay.off(p), lay.len(p)),
                s.chunk,
            );
        }
    } else {
        send_all(&mut b, root, Range::new(Buf::Input, 0, lay.len(r)), s.chunk);
    }
    b
}

/// Linear scatter: the root sends block p to every rank p.
pub(crate) fn scatter(s: &Shape) -> Builder {
    let (n, r, root, count) = (s.nranks, s.rank, s.root, s.count);
    let mut b = Builder::new(s);
    if r == root {
        let src = if s.in_place { Buf::Output } else { Buf::Input };
        for k in 1..n {
            let p = (root + k) % n;
            send_all(&mut b, p, Range::new(src, p * count, count), s.chunk);
        }
        if !s.in_place {
            b.copy(
                Range::new(Buf::Input, r * count, count),
                Range::new(Buf::Output, 0, count),
            );
        }
    } else {
        recv_all(&mut b, root, Range::new(Buf::Output, 0, count), s.chunk);
    }
    b
}

/// Point-to-point: a send of Input to the peer, or a receive into Output from it.
pub(crate) fn send_recv(s: &Shape) -> Builder {
    let mut b = Builder::new(s);
    if s.coll == Collective::Send {
        send_all(&mut b, s.root, Range::new(Buf::Input, 0, s.count), s.chunk);
    } else {
        recv_all(&mut b, s.root, Range::new(Buf::Output, 0, s.count), s.chunk);
    }
    b
}

/// Dissemination barrier: in round k each rank signals r + 2^k and waits for r - 2^k; after
/// ceil(log2 n) rounds everyone has (transitively) heard from everyone. The one-byte token is
/// combined with Max, which is idempotent, so overlapping knowledge is harmless.
pub(crate) fn barrier(s: &Shape) -> Builder {
    let (n, r) = (s.nranks, s.rank);
    let mut b = Builder::new(s);
    let tok = Range::new(Buf::Output, 0, 1);
    let mut d = 1;
    while d < n {
        b.send((r + d) % n, tok);
        b.recv_reduce((r + n - d) % n, tok, None);
        d <<= 1;
    }
    b
}
