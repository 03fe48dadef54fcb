//! The card exchange: every rank learns every rank's card (a small record: address, host,
//! namespace, endpoints) without the root serving more than O(1) requests per rank.
//!
//! The cards travel over the ranks themselves, on a binomial tree rooted at rank 0 (NCCL's
//! bootstrap does the same over a ring): rank `r`'s parent is `r` with its lowest set bit
//! cleared, and its subtree is the ranks `r .. r + lowbit(r)`. Each rank publishes its card in
//! the store (one SET) and reads only its parent's (one GET) to dial it; then
//!
//! 1. **gather**: a rank takes the connection of each child (which sends the cards of its
//!    subtree, a contiguous range of ranks), appends them to its own and, unless it is the
//!    root, sends the lot to its parent;
//! 2. **broadcast**: the root has every card and sends them all to each child, which forwards
//!    them to its own children.
//!
//! So the store serves 2n - 1 requests for the exchange, a rank holds at most ⌈log₂ n⌉ + 1
//! connections while it runs (none after), and the exchange takes 2⌈log₂ n⌉ hops. The
//! transport is the caller's: it dials the parent and takes each child's connection (both
//! authenticated, e.g. peer control connections), so this module does no address handling.
//!
//! # Wire format (little-endian)
//!
//! One frame each way per connection: `first u32 | count u32 | count × (len u32 | card)`,
//! the cards of ranks `first .. first + count`. Every length is checked against
//! [`MAX_CARD_LEN`] and the expected range before anything is allocated. A frame with `first`
//! = `u32::MAX` carries no cards but the news that rank `count` never joined: the rank that
//! finds a rank missing sends it up to its parent and down to its children, who pass it on,
//! so every rank's init fails naming the missing rank, not the neighbour that gave up.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Longest card, in bytes.
pub(crate) const MAX_CARD_LEN: usize = 4 << 10;

/// The parent of `rank` in the exchange tree (`None` for rank 0).
pub(crate) fn parent(rank: usize) -> Option<usize> {
    (rank != 0).then(|| rank & (rank - 1))
}

/// The ranks of `rank`'s subtree: `rank .. rank + lowbit(rank)`, cut at `n` (rank 0: all).
pub(crate) fn subtree(rank: usize, n: usize) -> Range<usize> {
    if rank == 0 {
        return 0..n;
    }
    let low = 1usize << rank.trailing_zeros();
    rank..rank.saturating_add(low).min(n)
}

/// The children of `rank` in the exchange tree, nearest first (`rank + 1, rank + 2, rank + 4,
/// ...` within its subtree).
pub(crate) fn children(rank: usize, n: usize) -> Vec<usize> {
    let end = subtree(rank, n).end;
    (0..usize::BITS)
        .map(|k| 1usize << k)
        .take_while(|&d| rank.checked_add(d).is_some_and(|c| c < end))
        .filter(|&d| rank == 0 || d < (1usize << rank.trailing_zeros()))
        .map(|d| rank + d)
        .collect()
}

/// Encodes the cards of ranks `first .. first + cards.len()` as one frame.
pub(crate) fn encode(first: usize, cards: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + cards.iter().map(|c| 4 + c.len()).sum::<usize>());
    v.extend_from_slice(&(first as u32).to_le_bytes());
    v.extend_from_slice(&(cards.len() as u32).to_le_bytes());
    for c in cards {
        v.extend_from_slice(&(c.len() as u32).to_le_bytes());
        v.extend_from_slice(c);
    }
    v
}

/// How long past its deadline a rank waits for its parent's word (see `all_gather`).
pub(crate) const NEWS_GRACE: Duration = Duration::from_secs(2);

/// `first` of a frame that says a rank never joined.
const ABSENT: u32 = u32::MAX;

/// The frame that says rank `lost` never joined.
pub(crate) fn encode_absent(lost: usize) -> Vec<u8> {
    let mut v = ABSENT.to_le_bytes().to_vec();
    v.extend_from_slice(&(lost as u32).to_le_bytes());
    v
}

/// Why a frame was not the cards expected.
enum Bad {
    /// The sender says this rank never joined.
    Absent(usize),
    /// A short read, a wrong range, an oversized card.
    Why(String),
}

/// Reads one frame that must hold exactly the cards of `want`; `Err(why)` for anything else
/// (a short read, a wrong range, an oversized card, the news that a rank never joined). Never
/// panics; allocates only as bytes arrive.
#[cfg(test)]
pub(crate) fn decode(
    r: &mut impl Read,
    want: Range<usize>,
) -> std::result::Result<Vec<Vec<u8>>, String> {
    read_frame(r, want).map_err(|b| match b {
        Bad::Absent(l) => format!("rank {l} never joined"),
        Bad::Why(w) => w,
    })
}

fn read_frame(r: &mut impl Read, want: Range<usize>) -> std::result::Result<Vec<Vec<u8>>, Bad> {
    fn word(r: &mut impl Read) -> std::result::Result<u32, Bad> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).map_err(|e| Bad::Why(io_why(&e)))?;
        Ok(u32::from_le_bytes(b))
    }
    let (first, count) = (word(r)?, word(r)?);
    if first == ABSENT {
        return Err(Bad::Absent(count as usize));
    }
    let (first, count) = (first as usize, count as usize);
    if first != want.start || count != want.len() {
        return Err(Bad::Why(format!(
            "expected the cards of ranks {}..{}, got {first}..{}",
            want.start,
            want.end,
            first.saturating_add(count)
        )));
    }
    let mut cards = Vec::with_capacity(count.min(1 << 16));
    for i in 0..count {
        let len = word(r)? as usize;
        if len > MAX_CARD_LEN {
            return Err(Bad::Why(format!(
                "the card of rank {} is {len} bytes (limit {MAX_CARD_LEN})",
                first + i
            )));
        }
        let mut c = Vec::new();
        r.take(len as u64)
            .read_to_end(&mut c)
            .map_err(|e| Bad::Why(io_why(&e)))?;
        if c.len() != len {
            return Err(Bad::Why("the connection closed mid-frame".into()));
        }
        cards.push(c);
    }
    Ok(cards)
}

fn io_why(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::UnexpectedEof => "the connection closed".into(),
        _ => e.to_string(),
    }
}

fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Runs the exchange as `rank` of `n` and returns every rank's card, in rank order.
///
/// `dial_parent(p)` connects to the parent (after learning its address, e.g. from the store);
/// `take_child(c)` waits for child `c`'s connection. When a child's part does not arrive,
/// `missing(range)` may name a rank of that subtree that never joined (the error then names
/// it); otherwise the error names the child.
pub(crate) fn all_gather(
    rank: usize,
    n: usize,
    mine: Vec<u8>,
    deadline: Instant,
    dial_parent: impl FnOnce(usize) -> Result<TcpStream>,
    mut take_child: impl FnMut(usize) -> Result<TcpStream>,
    missing: impl Fn(Range<usize>) -> Option<usize>,
) -> Result<Vec<Vec<u8>>> {
    if mine.len() > MAX_CARD_LEN {
        return Err(Error::internal(format!(
            "rank {rank}: its card is {} bytes (limit {MAX_CARD_LEN})",
            mine.len()
        )));
    }
    let absent = |lost: usize, msg: String| Error::timed_out(Some(lost), msg);
    // Gather: my subtree's cards, children in order (their ranges follow each other).
    let kids = children(rank, n);
    let mut cards = vec![mine];
    let mut socks: Vec<(usize, TcpStream)> = Vec::with_capacity(kids.len());
    let mut failed: Option<(usize, Error)> = None;
    for &c in &kids {
        let range = subtree(c, n);
        let mut s = match take_child(c) {
            Ok(s) => s,
            Err(e) if e.kind() == crate::error::ErrorKind::Timeout => {
                let lost = missing(range.clone()).unwrap_or(c);
                let msg = if lost == c {
                    format!("rank {rank}: rank {c} never joined; did all {n} ranks start?")
                } else {
                    format!(
                        "rank {rank}: rank {lost} never joined (so rank {c} never sent the cards of ranks {range:?}); \
                         did all {n} ranks start?"
                    )
                };
                failed = Some((lost, absent(lost, msg)));
                break;
            }
            Err(e) => return Err(e),
        };
        s.set_read_timeout(Some(left(deadline)))
            .map_err(|e| Error::io("bootstrap: set a read timeout", e))?;
        match read_frame(&mut s, range.clone()) {
            Ok(got) => {
                cards.extend(got);
                socks.push((c, s));
            }
            Err(Bad::Absent(lost)) => {
                let msg = format!(
                    "rank {rank}: rank {lost} never joined (word from rank {c}); did all {n} ranks start?"
                );
                failed = Some((lost, absent(lost, msg)));
                break;
            }
            Err(Bad::Why(why)) => {
                let lost = missing(range.clone()).unwrap_or(c);
                let msg = format!(
                    "rank {rank}: the cards of ranks {range:?} did not arrive from rank {c} ({why}); \
                     rank {lost} never joined? did all {n} ranks start?"
                );
                failed = Some((lost, absent(lost, msg)));
                break;
            }
        }
    }
    if let Some((lost, e)) = failed {
        // Tell the rest of the tree who is missing, so that every rank names it: the children
        // already heard from, those whose connection is waiting (taking it no longer waits:
        // the deadline has passed, or the failure was news from a child), and the parent.
        let news = encode_absent(lost);
        let quick = Duration::from_millis(500);
        let heard: Vec<usize> = socks.iter().map(|(c, _)| *c).collect();
        for &k in kids.iter().filter(|k| !heard.contains(k)) {
            if Instant::now() < deadline {
                break;
            }
            if let Ok(s) = take_child(k) {
                socks.push((k, s));
            }
        }
        for (_, mut s) in socks {
            let _ = s
                .set_write_timeout(Some(quick))
                .and_then(|()| s.write_all(&news));
        }
        if let Some(p) = parent(rank) {
            if let Ok(mut s) = dial_parent(p) {
                let _ = s
                    .set_write_timeout(Some(quick))
                    .and_then(|()| s.write_all(&news));
            }
        }
        return Err(e);
    }
    // Up to the parent, and everything back down from it.
    let all = match parent(rank) {
        None => cards,
        Some(p) => {
            let mut s = dial_parent(p)?;
            let lost = |why: String| {
                Error::peer_lost(
                    p,
                    format!(
                        "rank {rank}: the bootstrap card exchange with rank {p} (its parent) failed: {why}"
                    ),
                )
            };
            s.set_write_timeout(Some(left(deadline)))
                .and_then(|()| s.write_all(&encode(rank, &cards)))
                .map_err(|e| lost(io_why(&e)))?;
            // A little past the deadline: when a rank is missing, the news of it leaves its
            // parent at about the deadline and needs a few hops to get here.
            s.set_read_timeout(Some(left(deadline) + NEWS_GRACE))
                .map_err(|e| Error::io("bootstrap: set a read timeout", e))?;
            match read_frame(&mut s, 0..n) {
                Ok(all) => all,
                Err(Bad::Absent(l)) => {
                    let news = encode_absent(l);
                    for (_, mut s) in socks {
                        let _ = s
                            .set_write_timeout(Some(Duration::from_millis(500)))
                            .and_then(|()| s.write_all(&news));
                    }
                    return Err(absent(
                        l,
                        format!(
                            "rank {rank}: rank {l} never joined (word from rank {p}); did all {n} ranks start?"
                        ),
                    ));
                }
                Err(Bad::Why(why)) => return Err(lost(why)),
            }
        }
    };
    // Broadcast to the children.
    let frame = encode(0, &all);
    for (c, mut s) in socks {
        s.set_write_timeout(Some(left(deadline)))
            .and_then(|()| s.write_all(&frame))
            .map_err(|e| Error::peer_lost(c, format!(
                    "rank {rank}: sending every card to rank {c} (its child in the bootstrap tree): {}",
                    io_why(&e)
                )))?;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_tree_covers_every_rank_once() {
        for n in [1usize, 2, 3, 5, 8, 13, 64, 100, 1024, 1025] {
            let mut seen = vec![0; n];
            for r in 0..n {
                for c in children(r, n) {
                    assert_eq!(parent(c), Some(r), "n {n} child {c}");
                    seen[c] += 1;
                }
                // A subtree is the rank and its children's subtrees, back to back.
                let mut at = r + 1;
                for c in children(r, n) {
                    assert_eq!(subtree(c, n).start, at);
                    at = subtree(c, n).end;
                }
                assert_eq!(at, subtree(r, n).end, "n {n} rank {r}");
                assert!(children(r, n).len() <= (usize::BITS - n.leading_zeros()) as usize);
            }
            assert_eq!(seen[0], 0);
            assert!(seen[1..].iter().all(|&s| s == 1), "n {n}");
        }
    }

    #[test]
    fn frames_round_trip_and_reject_lies() {
        let cards = vec![b"a".to_vec(), Vec::new(), vec![7u8; 300]];
        let f = encode(4, &cards);
        assert_eq!(decode(&mut &f[..], 4..7).unwrap(), cards);
        assert!(decode(&mut &f[..], 0..3).is_err());
        assert!(decode(&mut &f[..f.len() - 1], 4..7).is_err());
        let mut big = encode(0, &[]);
        big[4..8].copy_from_slice(&1u32.to_le_bytes());
        big.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&mut &big[..], 0..1).is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_frames_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = decode(&mut &b[..], 0..3);
        }
    }

    /// Ranks as threads; connections are plain loopback sockets matched by (from, to).
    fn run(n: usize, absent: Option<usize>) -> Vec<Result<Vec<Vec<u8>>>> {
        let l = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
        let addr = l.local_addr().unwrap();
        let inbox: Arc<Mutex<HashMap<usize, TcpStream>>> = Arc::default();
        let deadline = Instant::now() + Duration::from_secs(if absent.is_some() { 1 } else { 20 });
        let acceptor = {
            let (l, inbox) = (l.clone(), inbox.clone());
            l.set_nonblocking(true).unwrap();
            std::thread::spawn(move || {
                // Until every expected dialer came, or the ranks' deadline passed.
                let mut got = 0;
                while got + 1 + usize::from(absent.is_some()) < n && Instant::now() < deadline {
                    let Ok((mut s, _)) = l.accept() else {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    s.set_nonblocking(false).unwrap();
                    let mut b = [0u8; 4];
                    s.read_exact(&mut b).unwrap();
                    inbox
                        .lock()
                        .unwrap()
                        .insert(u32::from_le_bytes(b) as usize, s);
                    got += 1;
                }
            })
        };
        let threads: Vec<_> = (0..n)
            .filter(|r| Some(*r) != absent)
            .map(|r| {
                let inbox = inbox.clone();
                std::thread::spawn(move || {
                    all_gather(
                        r,
                        n,
                        format!("card of {r}").into_bytes(),
                        deadline,
                        |_p| {
                            let mut s =
                                TcpStream::connect(addr).map_err(|e| Error::io("test", e))?;
                            s.write_all(&(r as u32).to_le_bytes())
                                .map_err(|e| Error::io("test", e))?;
                            Ok(s)
                        },
                        |c| loop {
                            if let Some(s) = inbox.lock().unwrap().remove(&c) {
                                return Ok(s);
                            }
                            if Instant::now() >= deadline {
                                return Err(Error::timeout(Some(c), "test", Duration::ZERO));
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        },
                        |range| absent.filter(|a| range.contains(a)),
                    )
                })
            })
            .collect();
        let out = threads.into_iter().map(|t| t.join().unwrap()).collect();
        acceptor.join().unwrap();
        out
    }

    #[test]
    fn every_rank_gets_every_card() {
        for n in [1, 2, 3, 7, 16, 33] {
            for (r, got) in run(n, None).into_iter().enumerate() {
                let got = got.unwrap_or_else(|e| panic!("n {n} rank {r}: {e}"));
                let want: Vec<Vec<u8>> = (0..n)
                    .map(|i| format!("card of {i}").into_bytes())
                    .collect();
                assert_eq!(got, want, "n {n} rank {r}");
            }
        }
    }

    #[test]
    fn a_rank_that_never_joins_is_named_by_every_rank() {
        for (n, absent) in [(6, 5), (8, 5), (8, 1), (13, 12)] {
            let out = run(n, Some(absent));
            let present = (0..n).filter(|&r| r != absent);
            for (r, got) in present.zip(out) {
                match got {
                    Err(e)
                        if e.kind() == crate::error::ErrorKind::Timeout
                            && e.peer() == Some(absent) =>
                    {
                        let msg = e.message();
                        assert!(
                            msg.contains(&format!("rank {absent} never joined")),
                            "{msg}"
                        )
                    }
                    other => panic!("n {n}, rank {absent} absent: rank {r} got {other:?}"),
                }
            }
        }
    }
}
