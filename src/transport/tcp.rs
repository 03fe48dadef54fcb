//! The TCP link: several sockets per peer, messages striped across them round-robin.
//!
//! Message `k` travels on socket `k % nsocks` and lands in receive slot `k % nslots`, so each
//! socket carries its messages in order and the receiver reassembles the global order from the
//! sequence alone. A socket reads the next message's body only when its slot is free: that is the
//! credit, and TCP's own window carries the back-pressure to the sender. Sends are written
//! straight from the caller's memory (writev of header + body), so nothing is copied or
//! allocated on the data path.
//!
//! Frame: `magic u16 | kind u8 | 0 u8 | len u32 | Tag (24 B)`, then `len` bytes.
//! Kinds: data (len <= slot size) and abort (len <= 4 KiB: code, peer, message). The layouts and
//! their checked parsers live in [`wire`](super::wire).

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;

use super::framing::{RxEvent, RxFramer, TxFramer};
use super::wire::{self, AbortBody, TcpHeader};
use super::{Link, Region, RegionMut, Tag};
use crate::error::Error;
use crate::error::Result;
use crate::sys::AlignedBuf;

const KIND_DATA: u8 = wire::DATA;
const KIND_ABORT: u8 = wire::ABORT;
/// Frame header size.
pub const HDR: usize = TcpHeader::LEN;
const MAX_ABORT: usize = wire::MAX_ABORT;

fn encode_hdr(kind: u8, len: usize, tag: &Tag) -> [u8; HDR] {
    TcpHeader {
        kind,
        len,
        tag: *tag,
    }
    .encode()
}

/// Parses a frame header; never panics. Returns (kind, len, tag) ([`TcpHeader::new_checked`]).
pub fn decode_hdr(h: &[u8; HDR], max_data: usize) -> std::result::Result<(u8, usize, Tag), String> {
    let h = TcpHeader::new_checked(h, max_data)?;
    Ok((h.kind, h.len, h.tag))
}

/// Decodes an abort frame body (from `peer`) back into an error.
pub fn decode_abort(body: &[u8], peer: usize) -> Error {
    match AbortBody::new_checked(body) {
        Ok(a) => {
            // Relayed over several hops, the text names the first reporter once (it used to
            // gain one "[reported by rank N]" per hop); the field names the latest.
            let msg = a.message_lossy();
            let msg = if msg.contains("[reported by rank ") {
                msg.to_string()
            } else {
                format!("{msg} [reported by rank {peer}]")
            };
            Error::from_parts(a.code, a.peer, msg).reported_by_rank(peer)
        }
        Err(_) => Error::peer_lost(peer, format!("rank {peer} aborted (truncated abort frame)")),
    }
}

/// How far ahead of the next message to hand out a receive may be posted (the executor offers
/// up to 16 ahead).
const POST_WINDOW: usize = 32;

/// The posted destination of message `seq` with header `h`, or null (none posted, another
/// length, or not data).
fn posted_for(posted: &[Option<(u64, *mut u8, usize)>], seq: u64, h: &TcpHeader) -> *mut u8 {
    match posted[(seq % POST_WINDOW as u64) as usize] {
        Some((idx, dst, len)) if h.kind == KIND_DATA && idx == seq && len == h.len => dst,
        _ => std::ptr::null_mut(),
    }
}

struct Stream {
    sock: TcpStream,
    /// Next message sequence this socket receives.
    rx_seq: u64,
    rx: RxFramer<TcpHeader>,
    /// Where the body being received goes: null for a slot (or the abort buffer), else the
    /// posted receive.
    rx_dst: *mut u8,
    /// Next message sequence this socket sends.
    tx_seq: u64,
    tx: TxFramer<TcpHeader>,
    eof: bool,
}

#[derive(Clone, Copy)]
struct Pending {
    tag: Tag,
    data: *const u8,
    len: usize,
    done: bool,
}

/// A TCP link to one peer.
pub struct TcpLink {
    peer: usize,
    streams: Vec<Stream>,
    slot_size: usize,
    nslots: usize,
    slots: AlignedBuf,
    /// Per slot: (tag, len) when a message is ready in it.
    ready: Vec<Option<(Tag, usize, *mut u8)>>,
    /// Posted receives (message index, destination, length), at `index % POST_WINDOW`: a
    /// window wider than the slots, because the executor offers destinations for messages
    /// further ahead than the credits let arrive.
    posted_rx: Vec<Option<(u64, *mut u8, usize)>>,
    /// Messages released so far (the next message to hand out has this sequence).
    released: u64,
    abort_body: Vec<u8>,
    /// Set when an abort frame arrived: the peer's own account of why it gave up.
    peer_abort: Option<Error>,
    pending: Vec<Pending>,
    posted: u64,
    completed: u64,
    reported: u64,
    failed: Option<Error>,
}

impl std::fmt::Debug for TcpLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLink")
            .field("peer", &self.peer)
            .field("streams", &self.streams.len())
            .field("slot_size", &self.slot_size)
            .field("nslots", &self.nslots)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers in `pending` point into caller memory that the Region's contract keeps
// valid until completion; the link is used by one thread at a time (&mut self).
unsafe impl Send for TcpLink {}

impl TcpLink {
    /// Wraps connected, authenticated sockets (all to `peer`, in socket-index order) as a link
    /// with `nslots` receive slots of `slot_size` bytes.
    pub fn new(
        peer: usize,
        socks: Vec<TcpStream>,
        slot_size: usize,
        nslots: usize,
    ) -> Result<TcpLink> {
        if socks.is_empty() {
            return Err(Error::invalid_argument(
                "a TCP link needs at least one socket",
            ));
        }
        let nslots = nslots.max(socks.len()).max(2);
        let mut streams = Vec::with_capacity(socks.len());
        for (i, s) in socks.into_iter().enumerate() {
            s.set_nonblocking(true)
                .map_err(|e| Error::io(format!("set nonblocking on link to rank {peer}"), e))?;
            s.set_nodelay(true)
                .map_err(|e| Error::io(format!("set TCP_NODELAY on link to rank {peer}"), e))?;
            streams.push(Stream {
                sock: s,
                rx_seq: i as u64,
                rx: RxFramer::new(slot_size),
                rx_dst: std::ptr::null_mut(),
                tx_seq: i as u64,
                tx: TxFramer::default(),
                eof: false,
            });
        }
        Ok(TcpLink {
            peer,
            streams,
            slot_size,
            nslots,
            slots: AlignedBuf::new(slot_size * nslots),
            ready: vec![None; nslots],
            posted_rx: vec![None; POST_WINDOW],
            released: 0,
            abort_body: Vec::with_capacity(MAX_ABORT),
            peer_abort: None,
            pending: vec![
                Pending {
                    tag: Tag::default(),
                    data: std::ptr::null(),
                    len: 0,
                    done: true
                };
                nslots
            ],
            posted: 0,
            completed: 0,
            reported: 0,
            failed: None,
        })
    }

    fn lost(&self, what: &str, e: Option<io::Error>) -> Error {
        let detail = e.map(|e| format!(": {e}")).unwrap_or_default();
        Error::peer_lost(
            self.peer,
            format!(
                "connection to rank {} {what}{detail} (the process exited or was killed; see its log)",
                self.peer
            ),
        )
    }

    /// A send or receive failed because the peer went away: if it left an abort frame saying
    /// why (say, a mismatch it detected, or the rank it lost), on this socket or another, that
    /// is the real error; report it instead of the reset or EOF.
    fn abort_behind(&mut self, e: Error) -> Error {
        if e.kind() != crate::error::ErrorKind::PeerLost || self.peer_abort.is_some() {
            return e;
        }
        for i in 0..self.streams.len() {
            let _ = self.pump_rx(i);
            if let Some(abort) = &self.peer_abort {
                return abort.clone();
            }
        }
        e
    }

    fn fail(&mut self, e: Error) -> Error {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        e
    }

    fn check(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Writes as much of stream `i`'s pending frames as the socket takes.
    fn pump_tx(&mut self, i: usize) -> Result<bool> {
        let nsocks = self.streams.len() as u64;
        let mut moved = false;
        loop {
            let st = &mut self.streams[i];
            if st.tx_seq >= self.posted {
                return Ok(moved);
            }
            let p = self.pending[(st.tx_seq % self.nslots as u64) as usize];
            if st.tx.idle() {
                st.tx.start(&TcpHeader {
                    kind: KIND_DATA,
                    len: p.len,
                    tag: p.tag,
                });
            }
            // SAFETY: the Region's contract keeps p.data..p.data+p.len valid and unmodified until
            // this send is reported complete, which happens only after this loop finishes it.
            let ptr = if p.len == 0 {
                std::ptr::NonNull::<u8>::dangling().as_ptr().cast_const()
            } else {
                p.data
            };
            // SAFETY: see above; a zero-length slice only needs a non-null aligned pointer.
            let body = unsafe { std::slice::from_raw_parts(ptr, p.len) };
            let (hdr, body) = st.tx.rest(body);
            let r = if hdr.is_empty() {
                st.sock.write(body)
            } else {
                crate::sys::NoSigPipe::new(&st.sock)
                    .write_vectored(&[IoSlice::new(hdr), IoSlice::new(body)])
            };
            match r {
                Ok(0) => return Err(self.lost("closed while sending", None)),
                Ok(n) => {
                    moved = true;
                    if st.tx.advance(n) {
                        let seq = st.tx_seq;
                        st.tx_seq += nsocks;
                        self.pending[(seq % self.nslots as u64) as usize].done = true;
                        while self.completed < self.posted
                            && self.pending[(self.completed % self.nslots as u64) as usize].done
                        {
                            self.completed += 1;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.lost("failed while sending", Some(e))),
            }
        }
    }

    /// Reads as much of stream `i`'s incoming frames as slots allow.
    fn pump_rx(&mut self, i: usize) -> Result<bool> {
        let nsocks = self.streams.len() as u64;
        let mut moved = false;
        loop {
            let slot_size = self.slot_size;
            let st = &mut self.streams[i];
            if st.eof {
                return Ok(moved);
            }
            let r = match st.rx.body() {
                None => st.sock.read(st.rx.header_buf().unwrap_or_default()),
                Some((h, got)) if h.kind == KIND_ABORT => {
                    self.abort_body.resize(h.len, 0);
                    st.sock.read(&mut self.abort_body[got..])
                }
                Some((h, _))
                    if h.kind == KIND_DATA && st.rx_seq >= self.released + self.nslots as u64 =>
                {
                    // The credit: a message may only arrive once its slot has been released.
                    return Ok(moved);
                }
                Some((h, 0))
                    if st.rx_dst.is_null()
                        && !posted_for(&self.posted_rx, st.rx_seq, &h).is_null() =>
                {
                    // Posted after the header arrived but before any of the body: the body
                    // goes to the posted destination after all.
                    st.rx_dst = posted_for(&self.posted_rx, st.rx_seq, &h);
                    continue;
                }
                Some((h, got)) if !st.rx_dst.is_null() => {
                    // SAFETY: the RegionMut's contract keeps dst..dst+len valid and untouched by
                    // others until this message is released or the receive is cancelled (which
                    // fails the link if a body is partly placed, so we never get here after it).
                    let buf = unsafe { std::slice::from_raw_parts_mut(st.rx_dst, h.len) };
                    st.sock.read(&mut buf[got..])
                }
                Some((h, got)) => {
                    let slot = (st.rx_seq % self.nslots as u64) as usize;
                    let buf =
                        &mut self.slots.as_mut_slice()[slot * slot_size..slot * slot_size + h.len];
                    st.sock.read(&mut buf[got..])
                }
            };
            match r {
                Ok(0) => {
                    st.eof = true;
                    // EOF between frames with nothing owed is only an error if we need more; the
                    // caller finds out when it waits for a message that cannot come.
                    if !st.rx.at_boundary() {
                        return Err(self.lost("closed in the middle of a message", None));
                    }
                    return Ok(true);
                }
                Ok(n) => {
                    moved = true;
                    match st.rx.advance(n) {
                        Err(e) => {
                            let peer = self.peer;
                            return Err(Error::peer_lost(
                                peer,
                                format!("protocol error on the link from rank {peer}: {e}"),
                            ));
                        }
                        Ok(Some(RxEvent::Header(h))) => {
                            st.rx_dst = posted_for(&self.posted_rx, st.rx_seq, &h);
                            if h.len == 0 {
                                self.finish_rx(i, h, nsocks)?;
                            }
                        }
                        Ok(Some(RxEvent::Body(h))) => self.finish_rx(i, h, nsocks)?,
                        Ok(None) => {}
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.lost("failed while receiving", Some(e))),
            }
        }
    }

    /// A frame `h` arrived whole on stream `i`.
    fn finish_rx(&mut self, i: usize, h: TcpHeader, nsocks: u64) -> Result<()> {
        let st = &mut self.streams[i];
        let dst = std::mem::replace(&mut st.rx_dst, std::ptr::null_mut());
        if h.kind == KIND_ABORT {
            let e = decode_abort(&self.abort_body, self.peer);
            self.peer_abort = Some(e.clone());
            return Err(e);
        }
        let seq = st.rx_seq;
        st.rx_seq += nsocks;
        self.ready[(seq % self.nslots as u64) as usize] = Some((h.tag, h.len, dst));
        Ok(())
    }

    /// Whether the next message can no longer arrive: the socket that carries it (message k
    /// travels on socket k % nsocks) has reached EOF. Another socket's EOF says nothing: the
    /// peer may have written its last message on this one and closed them all.
    fn next_lost(&self) -> bool {
        let st = &self.streams[(self.released % self.streams.len() as u64) as usize];
        st.eof && st.rx.at_boundary()
    }
}

impl Link for TcpLink {
    fn peer(&self) -> usize {
        self.peer
    }

    fn max_message(&self) -> usize {
        self.slot_size
    }

    fn post_send(&mut self, tag: &Tag, data: Region<'_>) -> Result<bool> {
        let (data, len) = (data.as_ptr(), data.len());
        self.check()?;
        if len > self.slot_size {
            return Err(Error::internal(format!(
                "message of {len} bytes exceeds the link's {}-byte slots",
                self.slot_size
            )));
        }
        if self.posted - self.completed >= self.nslots as u64 {
            return Ok(false);
        }
        let idx = (self.posted % self.nslots as u64) as usize;
        self.pending[idx] = Pending {
            tag: *tag,
            data,
            len,
            done: false,
        };
        self.posted += 1;
        // Start writing right away: for small messages this is the whole send.
        let s = ((self.posted - 1) % self.streams.len() as u64) as usize;
        if let Err(e) = self.pump_tx(s) {
            let e = self.abort_behind(e);
            return Err(self.fail(e));
        }
        Ok(true)
    }

    fn progress(&mut self) -> Result<bool> {
        self.check()?;
        let mut moved = false;
        for i in 0..self.streams.len() {
            match self.pump_tx(i) {
                Ok(m) => moved |= m,
                Err(e) => {
                    let e = self.abort_behind(e);
                    return Err(self.fail(e));
                }
            }
            match self.pump_rx(i) {
                Ok(m) => moved |= m,
                Err(e) => {
                    // A peer that gave up mid-message on this socket may have said why on
                    // another one.
                    let e = self.abort_behind(e);
                    return Err(self.fail(e));
                }
            }
        }
        Ok(moved)
    }

    fn take_send_completions(&mut self) -> usize {
        let n = self.completed - self.reported;
        self.reported = self.completed;
        n as usize
    }

    fn peek_recv(&mut self) -> Result<Option<(Tag, &[u8])>> {
        self.check()?;
        let slot = (self.released % self.nslots as u64) as usize;
        match self.ready[slot] {
            Some((tag, len, dst)) if !dst.is_null() => {
                // SAFETY: the body was placed at the posted destination, which post_recv's
                // contract keeps valid until release.
                Ok(Some((tag, unsafe { std::slice::from_raw_parts(dst, len) })))
            }
            Some((tag, len, _)) => {
                let off = slot * self.slot_size;
                Ok(Some((tag, &self.slots.as_slice()[off..off + len])))
            }
            None if self.next_lost() => {
                let e = self.lost(
                    "was closed by the peer while a message was still expected",
                    None,
                );
                let e = self.abort_behind(e);
                Err(self.fail(e))
            }
            None => Ok(None),
        }
    }

    fn release_recv(&mut self) {
        let slot = (self.released % self.nslots as u64) as usize;
        if self.ready[slot].take().is_some() {
            let w = (self.released % POST_WINDOW as u64) as usize;
            if self.posted_rx[w].is_some_and(|(idx, _, _)| idx == self.released) {
                self.posted_rx[w] = None;
            }
            self.released += 1;
        }
    }

    fn released(&self) -> u64 {
        self.released
    }

    fn post_recv(&mut self, index: u64, dst: RegionMut<'_>) {
        let (dst, len) = (dst.as_mut_ptr(), dst.len());
        // Only messages that can still be placed: within the window, and whose body has not
        // begun to arrive (the stream carrying it has not passed it, and is not in its body
        // with a destination already chosen). A message whose body has begun in a slot just
        // never looks here again.
        if index < self.released || index >= self.released + POST_WINDOW as u64 || len == 0 {
            return;
        }
        let st = &self.streams[(index % self.streams.len() as u64) as usize];
        if st.rx_seq > index {
            return;
        }
        self.posted_rx[(index % POST_WINDOW as u64) as usize] = Some((index, dst, len));
    }

    fn cancel_recvs(&mut self) {
        self.posted_rx.iter_mut().for_each(|p| *p = None);
        let partly = self
            .streams
            .iter()
            .any(|st| st.rx.body().is_some() && !st.rx_dst.is_null())
            || self.ready.iter().flatten().any(|(_, _, d)| !d.is_null());
        if partly && self.failed.is_none() {
            self.failed = Some(Error::internal(format!(
                "link to rank {} abandoned with a receive in flight",
                self.peer
            )));
        }
    }

    fn wait_interest(&self, out: &mut Vec<libc::pollfd>) {
        for st in &self.streams {
            let mut events = 0;
            if st.tx_seq < self.posted {
                events |= libc::POLLOUT;
            }
            let rx_blocked = st.rx.body().is_some_and(|(h, _)| h.kind == KIND_DATA)
                && st.rx_seq >= self.released + self.nslots as u64;
            if !st.eof && !rx_blocked {
                events |= libc::POLLIN;
            }
            out.push(libc::pollfd {
                fd: st.sock.as_raw_fd(),
                events,
                revents: 0,
            });
        }
    }

    fn send_abort(&mut self, err: &Error) {
        let mut buf = [0u8; MAX_ABORT];
        let n = wire::encode_abort(err, &mut buf);
        let body = &buf[..n];
        let hdr = encode_hdr(KIND_ABORT, body.len(), &Tag::default());
        for st in &mut self.streams {
            if st.tx.at_boundary() {
                // At a frame boundary: the abort frame is well-formed for the peer. A socket in
                // the middle of a frame (or whose buffer is full) just gets shut down; the peer
                // sees EOF there and looks for the reason on the others.
                let _ = crate::sys::NoSigPipe::new(&st.sock)
                    .write_vectored(&[IoSlice::new(&hdr), IoSlice::new(body)]);
            }
        }
        // Every reason is written before any socket closes, so a peer that sees the first EOF
        // finds the abort frame already waiting on another socket.
        for st in &mut self.streams {
            let _ = st.sock.shutdown(Shutdown::Write);
        }
        if self.failed.is_none() {
            self.failed = Some(err.clone());
        }
    }

    fn transport(&self) -> &'static str {
        "tcp"
    }
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        for st in &self.streams {
            let _ = st.sock.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(nsocks: usize, slot: usize, nslots: usize) -> (TcpLink, TcpLink) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut a = Vec::new();
        let mut b = Vec::new();
        for _ in 0..nsocks {
            a.push(TcpStream::connect(addr).unwrap());
            b.push(l.accept().unwrap().0);
        }
        (
            TcpLink::new(1, a, slot, nslots).unwrap(),
            TcpLink::new(0, b, slot, nslots).unwrap(),
        )
    }

    fn wait_until(mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "link made no progress"
            );
        }
    }

    #[test]
    fn header_round_trip_and_bounds() {
        let tag = Tag {
            seq: 9,
            count: 77,
            coll: 1,
            dtype: 7,
            op: 0,
            root: u32::MAX,
        };
        let h = encode_hdr(KIND_DATA, 100, &tag);
        assert_eq!(decode_hdr(&h, 100), Ok((KIND_DATA, 100, tag)));
        assert!(decode_hdr(&h, 99).is_err());
        let mut bad = h;
        bad[0] = 0;
        assert!(decode_hdr(&bad, 100).is_err());
        let mut bad = h;
        bad[2] = 9;
        assert!(decode_hdr(&bad, 100).is_err());
    }

    #[test]
    fn messages_arrive_in_order_across_sockets() {
        for nsocks in [1, 3] {
            let (mut a, mut b) = pair(nsocks, 4096, 4);
            let msgs: Vec<Vec<u8>> = (0..50u32)
                .map(|i| vec![i as u8; (i as usize * 97) % 4097])
                .collect();
            let mut sent = 0;
            let mut got = 0;
            let mut done = 0;
            wait_until(|| {
                while sent < msgs.len() {
                    let tag = Tag {
                        seq: sent as u64,
                        ..Tag::default()
                    };
                    // SAFETY: msgs outlives the loop and is not modified.
                    if !unsafe {
                        a.post_send(
                            &tag,
                            Region::from_raw(msgs[sent].as_ptr(), msgs[sent].len()),
                        )
                    }
                    .unwrap()
                    {
                        break;
                    }
                    sent += 1;
                }
                a.progress().unwrap();
                done += a.take_send_completions();
                b.progress().unwrap();
                while let Some((tag, data)) = b.peek_recv().unwrap() {
                    assert_eq!(tag.seq, got as u64);
                    assert_eq!(data, &msgs[got][..]);
                    b.release_recv();
                    got += 1;
                }
                got == msgs.len() && done == msgs.len()
            });
        }
    }

    /// An error relayed over two hops says "[reported by rank N]" once, naming the first
    /// reporter; the field names the latest.
    #[test]
    fn a_relayed_abort_names_its_reporter_once() {
        let mut body = [0u8; 512];
        let n =
            crate::transport::wire::encode_abort(&Error::peer_lost(3, "rank 3 died"), &mut body);
        let first = decode_abort(&body[..n], 2);
        assert!(
            first
                .message()
                .ends_with("rank 3 died [reported by rank 2]")
        );
        let n = crate::transport::wire::encode_abort(&first, &mut body);
        let second = decode_abort(&body[..n], 1);
        assert_eq!(second.message().matches("[reported by rank").count(), 1);
        assert!(second.message().contains("[reported by rank 2]"));
        assert_eq!((second.peer(), second.reported_by()), (Some(3), Some(1)));
    }

    #[test]
    fn abort_reaches_the_peer() {
        let (mut a, mut b) = pair(2, 1024, 4);
        a.send_abort(&Error::mismatch(0, "count 3 vs 4"));
        let mut res = Ok(None);
        wait_until(|| {
            res = b
                .progress()
                .and_then(|_| b.peek_recv().map(|m| m.map(|_| ())));
            res.is_err()
        });
        match res {
            Err(e) if e.kind() == crate::error::ErrorKind::Mismatch && e.peer() == Some(0) => {
                let msg = e.message();
                assert!(msg.contains("count 3 vs 4"), "{msg}");
                assert_eq!(e.reported_by(), Some(b.peer()), "a field, not only text");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn eof_is_peer_lost() {
        let (a, mut b) = pair(1, 1024, 2);
        drop(a);
        let mut res = Ok(None);
        wait_until(|| {
            res = b
                .progress()
                .and_then(|_| b.peek_recv().map(|m| m.map(|_| ())));
            res.is_err()
        });
        assert!(
            res.as_ref().is_err_and(
                |e| e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(0)
            ),
            "{res:?}"
        );
    }

    #[test]
    fn eof_mid_message_reports_the_abort_left_on_another_socket() {
        // The peer (rank 1) gave up while in the middle of a frame on socket 0: it could only
        // shut that socket, and wrote its reason (it lost rank 2) on socket 1.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            raw.push(TcpStream::connect(addr).unwrap());
            ours.push(l.accept().unwrap().0);
        }
        let mut link = TcpLink::new(1, ours, 1024, 4).unwrap();
        let hdr = encode_hdr(KIND_DATA, 512, &Tag::default());
        raw[0].write_all(&hdr).unwrap();
        raw[0].write_all(&[7u8; 100]).unwrap();
        let why = Error::peer_lost(2, "connection to rank 2 was closed");
        let mut buf = [0u8; 256];
        let n = wire::encode_abort(&why, &mut buf);
        let body = &buf[..n];
        raw[1]
            .write_all(&encode_hdr(KIND_ABORT, body.len(), &Tag::default()))
            .unwrap();
        raw[1].write_all(body).unwrap();
        for r in &raw {
            r.shutdown(Shutdown::Write).unwrap();
        }
        let mut got = None;
        wait_until(|| match link.progress() {
            Ok(_) => false,
            Err(e) => {
                got = Some(e);
                true
            }
        });
        match got.unwrap() {
            e if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(2) => {
                let msg = e.message();
                assert!(msg.contains("rank 2"), "{msg}")
            }
            e => panic!("expected rank 1's reason (rank 2 lost), got {e:?}"),
        }
    }

    /// Receives posted further ahead than the slots (the executor offers 16 ahead, a link
    /// has 4 slots), and ones posted after a message's header arrived but before its body
    /// did, land at the posted destination: no copy out of a slot.
    #[test]
    fn posted_receives_beyond_the_slots_land_in_place() {
        let (mut a, mut b) = pair(2, 4096, 4);
        let n = 12usize;
        let msgs: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8 + 1; 4096]).collect();
        let mut dsts = vec![vec![0u8; 4096]; n];
        // Post every receive but the last one up front: 11 > 4 slots.
        for (i, d) in dsts.iter_mut().enumerate().take(n - 1) {
            // SAFETY: dsts outlives the link's use of it (cancel_recvs below) and is only
            // read after each message is released.
            unsafe { b.post_recv(i as u64, RegionMut::from_raw(d.as_mut_ptr(), d.len())) };
        }
        let (mut sent, mut done, mut got) = (0, 0, 0);
        let mut in_place = 0;
        wait_until(|| {
            while sent < n {
                let tag = Tag {
                    seq: sent as u64,
                    ..Tag::default()
                };
                // SAFETY: msgs outlives the loop and is not modified.
                if !unsafe { a.post_send(&tag, Region::from_raw(msgs[sent].as_ptr(), 4096)) }
                    .unwrap()
                {
                    break;
                }
                sent += 1;
            }
            a.progress().unwrap();
            done += a.take_send_completions();
            b.progress().unwrap();
            while let Some((tag, data)) = b.peek_recv().unwrap() {
                assert_eq!(tag.seq, got as u64);
                assert_eq!(data, &msgs[got][..]);
                if data.as_ptr() == dsts[got].as_ptr() {
                    in_place += 1;
                }
                b.release_recv();
                got += 1;
            }
            if got == n - 1 && sent == n {
                // Post the last one once its header may have arrived.
                let d = &mut dsts[n - 1];
                // SAFETY: as above.
                unsafe {
                    b.post_recv((n - 1) as u64, RegionMut::from_raw(d.as_mut_ptr(), d.len()))
                };
            }
            got == n && done == n
        });
        b.cancel_recvs();
        assert!(
            in_place >= n - 1,
            "only {in_place} of {n} messages landed in place"
        );
        for (d, m) in dsts.iter().zip(&msgs).take(in_place) {
            assert_eq!(d, m);
        }
    }

    /// A receive posted after its message's header arrived, while the credit holds its body
    /// back, still lands in place.
    #[test]
    fn a_receive_posted_after_the_header_lands_in_place() {
        let (mut a, mut b) = pair(1, 4096, 4);
        let msgs: Vec<Vec<u8>> = (0..5).map(|i| vec![i as u8 + 1; 4096]).collect();
        let mut sent = 0;
        // Messages 0-3 fill the slots; message 4's header arrives, its body waits for a slot.
        wait_until(|| {
            while sent < 5 {
                let tag = Tag {
                    seq: sent as u64,
                    ..Tag::default()
                };
                // SAFETY: msgs outlives the loop and is not modified.
                if !unsafe { a.post_send(&tag, Region::from_raw(msgs[sent].as_ptr(), 4096)) }
                    .unwrap()
                {
                    break;
                }
                sent += 1;
            }
            a.progress().unwrap();
            b.progress().unwrap();
            b.streams[0].rx_seq == 4 && b.streams[0].rx.body().is_some()
        });
        let mut dst = vec![0u8; 4096];
        // SAFETY: dst outlives the link's use of it (cancel_recvs below).
        unsafe { b.post_recv(4, RegionMut::from_raw(dst.as_mut_ptr(), dst.len())) };
        let mut got = 0;
        let mut placed = false;
        wait_until(|| {
            a.progress().unwrap();
            b.progress().unwrap();
            while let Some((tag, data)) = b.peek_recv().unwrap() {
                assert_eq!(tag.seq, got as u64);
                assert_eq!(data, &msgs[got][..]);
                placed |= got == 4 && data.as_ptr() == dst.as_ptr();
                b.release_recv();
                got += 1;
            }
            got == 5
        });
        b.cancel_recvs();
        assert!(placed, "message 4 went through a slot");
        assert_eq!(dst, msgs[4]);
    }
}
