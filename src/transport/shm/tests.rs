//! ShmLink tests: two ends in one process over one memfd mapped twice, as two processes would.

mod support {
    use super::super::*;
    use std::os::unix::net::UnixStream;

    /// Two ends of a link in one process, over one memfd mapped twice (as two processes would).
    pub(super) fn pair(nslots: usize, slot_size: usize) -> (ShmLink, ShmLink) {
        let (seg0, fd) = Segment::create(Geometry { nslots, slot_size }).unwrap();
        let seg1 = Segment::open(fd.as_fd()).unwrap();
        let b0 = Arc::new(Doorbell::create().unwrap());
        let b1 = Arc::new(Doorbell::create().unwrap());
        let b0_for_1 = Doorbell::open(b0.clone_fd().unwrap()).unwrap();
        let b1_for_0 = Doorbell::open(b1.clone_fd().unwrap()).unwrap();
        let (s0, s1) = UnixStream::pair().unwrap();
        let (k0, k1) = (s0.try_clone().unwrap(), s1.try_clone().unwrap());
        let (mut a, mut b) = (
            ShmLink::new(1, 0, seg0, b0, b1_for_0, Some(s0)).unwrap(),
            ShmLink::new(0, 1, seg1, b1, b0_for_1, Some(s1)).unwrap(),
        );
        // A link to a thread of this process keeps no socket; these ends play two processes
        // (tests close a socket to play a peer process dying), so they keep theirs.
        (a.sock, b.sock) = (Some(k0), Some(k1));
        (a, b)
    }
}

mod unit {
    use super::super::*;
    use super::support::pair;
    use std::time::Duration;

    fn tag(seq: u64) -> Tag {
        Tag {
            seq,
            count: 3,
            coll: 1,
            dtype: 7,
            op: 0,
            root: u32::MAX,
        }
    }

    fn deadline() -> std::time::Instant {
        std::time::Instant::now() + Duration::from_secs(20)
    }

    #[test]
    fn geometry_is_validated() {
        assert!(
            Segment::create(Geometry {
                nslots: 0,
                slot_size: 64
            })
            .is_err()
        );
        assert!(
            Segment::create(Geometry {
                nslots: 2,
                slot_size: MAX_SLOT_BYTES + 1
            })
            .is_err()
        );
        // A memfd that is not a segment is refused.
        let fd = sys::memfd_sealed("x", 8192).unwrap();
        assert!(Segment::open(fd.as_fd()).is_err());
    }

    #[test]
    fn messages_arrive_in_order_with_tags_across_threads() {
        let (mut a, mut b) = pair(4, 1000);
        let msgs: Vec<Vec<u8>> = (0..200u32)
            .map(|i| {
                (0..(i as usize * 37) % 1001)
                    .map(|j| (i as usize + j) as u8)
                    .collect()
            })
            .collect();
        std::thread::scope(|s| {
            let msgs2 = &msgs;
            s.spawn(move || {
                let d = deadline();
                let mut done = 0;
                for (i, m) in msgs2.iter().enumerate() {
                    // SAFETY: `m` outlives the loop and is not modified.
                    while !unsafe {
                        a.post_send(&tag(i as u64), Region::from_raw(m.as_ptr(), m.len()))
                    }
                    .unwrap()
                    {
                        assert!(std::time::Instant::now() < d);
                        std::thread::yield_now();
                    }
                    done += a.take_send_completions();
                }
                assert_eq!(done, msgs2.len(), "a posted send completes at once");
            });
            let d = deadline();
            let mut got = 0;
            while got < msgs.len() {
                assert!(std::time::Instant::now() < d);
                match b.peek_recv().unwrap() {
                    Some((t, data)) => {
                        assert_eq!(t, tag(got as u64));
                        assert_eq!(data, &msgs[got][..]);
                        b.release_recv();
                        got += 1;
                    }
                    None => std::thread::yield_now(),
                }
            }
        });
    }

    #[test]
    fn sender_blocks_when_the_ring_is_full_until_a_release() {
        let (mut a, mut b) = pair(3, 64);
        let m = [7u8; 64];
        for i in 0..3 {
            // SAFETY: `m` outlives the calls.
            assert!(unsafe { a.post_send(&tag(i), Region::from_raw(m.as_ptr(), 64)) }.unwrap());
        }
        // SAFETY: as above.
        assert!(!unsafe { a.post_send(&tag(3), Region::from_raw(m.as_ptr(), 64)) }.unwrap());
        assert_eq!(a.take_send_completions(), 3);
        // Peeking does not return the credit; releasing does.
        assert!(b.peek_recv().unwrap().is_some());
        // SAFETY: as above.
        assert!(!unsafe { a.post_send(&tag(3), Region::from_raw(m.as_ptr(), 64)) }.unwrap());
        b.release_recv();
        // SAFETY: as above.
        assert!(unsafe { a.post_send(&tag(3), Region::from_raw(m.as_ptr(), 64)) }.unwrap());
        for i in 1..4 {
            let (t, d) = b.peek_recv().unwrap().unwrap();
            assert_eq!((t.seq, d.len()), (i, 64));
            b.release_recv();
        }
        assert!(b.peek_recv().unwrap().is_none());
        // A message larger than a slot is refused.
        // SAFETY: as above.
        assert!(unsafe { a.post_send(&tag(9), Region::from_raw(m.as_ptr(), 65)) }.is_err());
    }

    #[test]
    fn abort_reaches_the_peer_after_the_messages_before_it() {
        let (mut a, mut b) = pair(4, 128);
        let m = [1u8; 8];
        // SAFETY: `m` outlives the call.
        assert!(unsafe { a.post_send(&tag(0), Region::from_raw(m.as_ptr(), 8)) }.unwrap());
        a.send_abort(&Error::mismatch(2, "count 3 vs 4"));
        assert!(b.before_wait(), "an abort is news for a waiter");
        assert!(!b.before_wait(), "but only once");
        assert!(b.peek_recv().unwrap().is_some());
        b.release_recv();
        match b.peek_recv() {
            Err(e) if e.kind() == crate::error::ErrorKind::Mismatch && e.peer() == Some(2) => {
                let msg = e.message();
                assert!(
                    msg.contains("count 3 vs 4") && msg.contains("rank 0"),
                    "{msg}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Sticky, and a's own sends fail too.
        assert!(b.peek_recv().is_err());
        // SAFETY: as above.
        assert!(unsafe { a.post_send(&tag(1), Region::from_raw(m.as_ptr(), 8)) }.is_err());
    }

    #[test]
    fn a_dropped_or_dead_peer_is_peer_lost() {
        let (a, mut b) = pair(2, 64);
        drop(a);
        assert!(b.progress().is_ok(), "nothing is owed yet");
        match b.peek_recv() {
            Err(e) if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(0) => {
                let msg = e.message();
                assert!(msg.contains("closed"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn eof_on_the_socket_is_peer_lost() {
        let (mut a, mut b) = pair(2, 64);
        // Simulate the peer process dying: its socket closes, its memory stays mapped.
        a.sock = None;
        a.abort_sent = true; // suppress the clean-close mark in Drop
        drop(a);
        assert!(b.before_wait());
        match b.peek_recv() {
            Err(e) if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(0) => {
                let msg = e.message();
                assert!(msg.contains("socket EOF"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn doorbell_wakes_a_sleeper_without_lost_wakeups() {
        let (mut a, mut b) = pair(2, 64);
        let bell = b.doorbell().unwrap().clone();
        let m = [5u8; 16];
        std::thread::scope(|s| {
            s.spawn(move || {
                for i in 0..500u64 {
                    // SAFETY: `m` outlives the calls.
                    while !unsafe { a.post_send(&tag(i), Region::from_raw(m.as_ptr(), 16)) }
                        .unwrap()
                    {
                        let seen = a.doorbell().unwrap().announce();
                        // SAFETY: as above.
                        if unsafe { a.post_send(&tag(i), Region::from_raw(m.as_ptr(), 16)) }
                            .unwrap()
                        {
                            a.doorbell().unwrap().retract();
                            break;
                        }
                        a.doorbell().unwrap().sleep(seen, Duration::from_secs(5));
                        a.doorbell().unwrap().retract();
                    }
                }
            });
            let d = deadline();
            let mut got = 0;
            while got < 500 {
                assert!(std::time::Instant::now() < d, "lost a wake-up");
                if b.peek_recv().unwrap().is_some() {
                    b.release_recv();
                    got += 1;
                    continue;
                }
                let seen = bell.announce();
                if b.peek_recv().unwrap().is_none() {
                    // 5 s: a lost wake-up would show up as a test that takes minutes.
                    bell.sleep(seen, Duration::from_secs(5));
                }
                bell.retract();
            }
        });
    }
    #[test]
    fn posted_receives_are_placed_directly_in_one_copy() {
        let (mut a, mut b) = pair(2, 128 << 10);
        // Unposted messages through the slot here, not pulled (see the pull tests).
        a.pull_min = usize::MAX;
        let len = place::PLACE_MIN + 8;
        let msg: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut dst = vec![0u8; len];
        // Message 0 is posted; message 1 (same size) is not; message 2 is posted too late.
        // SAFETY: dst stays valid and untouched until the message is released.
        unsafe { b.post_recv(0, RegionMut::from_raw(dst.as_mut_ptr(), len)) };
        for i in 0..2 {
            // SAFETY: `msg` outlives the calls.
            assert!(unsafe { a.post_send(&tag(i), Region::from_raw(msg.as_ptr(), len)) }.unwrap());
        }
        let dst_ptr = dst.as_ptr();
        {
            let (t, got) = b.peek_recv().unwrap().unwrap();
            assert_eq!(t, tag(0));
            assert_eq!(
                got.as_ptr(),
                dst_ptr,
                "placed straight into the posted buffer"
            );
            assert_eq!(got, &msg[..]);
        }
        b.release_recv();
        {
            let (_, got) = b.peek_recv().unwrap().unwrap();
            assert_ne!(got.as_ptr(), dst_ptr, "not posted: through the slot");
            assert_eq!(got, &msg[..]);
        }
        b.release_recv();
        // A posting withdrawn before the send is never written to.
        let mut dst2 = vec![0u8; len];
        // SAFETY: as above.
        unsafe { b.post_recv(2, RegionMut::from_raw(dst2.as_mut_ptr(), len)) };
        b.cancel_recvs();
        // SAFETY: as above.
        assert!(unsafe { a.post_send(&tag(2), Region::from_raw(msg.as_ptr(), len)) }.unwrap());
        let (_, got) = b.peek_recv().unwrap().unwrap();
        assert_eq!(got, &msg[..]);
        assert!(dst2.iter().all(|&x| x == 0));
        b.release_recv();
        // Small messages are not posted (a second copy is cheaper than the bookkeeping).
        let mut small = vec![0u8; 64];
        // SAFETY: as above.
        unsafe { b.post_recv(3, RegionMut::from_raw(small.as_mut_ptr(), 64)) };
        // SAFETY: as above.
        assert!(unsafe { a.post_send(&tag(3), Region::from_raw(msg.as_ptr(), 64)) }.unwrap());
        assert_ne!(b.peek_recv().unwrap().unwrap().1.as_ptr(), small.as_ptr());
        b.release_recv();
        b.cancel_recvs();
        assert!(b.peek_recv().unwrap().is_none(), "the link is still usable");
    }

    #[test]
    fn a_cancel_after_a_claim_fails_the_link() {
        let (_a, mut b) = pair(2, 128 << 10);
        let len = place::PLACE_MIN;
        let mut dst = vec![0u8; len];
        let src = vec![9u8; len];
        // SAFETY: dst stays valid until cancel_recvs.
        unsafe { b.post_recv(0, RegionMut::from_raw(dst.as_mut_ptr(), len)) };
        // The peer places message 0 (as a's post_send would), but b gives the buffer back
        // before consuming it: the link can no longer be trusted.
        let mut w = place::Writer::Same;
        let (_, posts, _) = b.seg.ring(1 - b.side);
        // SAFETY: `posts` is the table b posts into; src is readable.
        assert!(unsafe {
            place::try_place(
                posts,
                &mut w,
                &mut crate::transport::shm::reg::PeerMaps::writable(),
                None,
                0,
                src.as_ptr(),
                len,
            )
        });
        b.cancel_recvs();
        assert_eq!(dst, src);
        assert!(
            b.peek_recv()
                .as_ref()
                .is_err_and(|e| e.kind() == crate::error::ErrorKind::Internal)
        );
    }
}

mod pull {
    use super::super::*;
    use super::support::pair;

    fn tag(seq: u64) -> Tag {
        Tag {
            seq,
            ..Tag::default()
        }
    }

    /// Takes the next message as the executor does: the slot's bytes, or the pieces pulled
    /// from the sender (checked to be contiguous and 64-byte multiples but the last).
    fn take(b: &mut ShmLink) -> Result<Option<(Tag, Vec<u8>, usize)>> {
        let Some((t, data)) = b.peek_recv()? else {
            return Ok(None);
        };
        let mut got = data.to_vec();
        let mut pieces = 0;
        let len = b.pull_len();
        if len > 0 {
            assert!(got.is_empty());
            b.pull_recv(&mut |off, piece| {
                assert_eq!(off, got.len(), "pieces come in order");
                assert_eq!(got.len() % 64, 0, "only the last piece is short");
                got.extend_from_slice(piece);
                pieces += 1;
            })?;
            assert_eq!(got.len(), len);
        }
        b.release_recv();
        Ok(Some((t, got, pieces)))
    }

    fn message(len: usize, salt: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + salt) as u8).collect()
    }

    /// Large messages stay in the sender's buffer and complete only once the receiver has read
    /// them; small ones still travel in the slot; both readers (a thread peer's plain reads,
    /// process_vm_readv) give back every byte, in pieces of the configured size.
    fn pulls_with(reader: place::Writer) {
        let (mut a, mut b) = pair(4, 1 << 20);
        b.reader = reader;
        b.piece_bytes = 64 << 10;
        let lens = [PULL_MIN, PULL_MIN + 1, 100, 3 * (64 << 10) + 7, 1 << 20, 0];
        let msgs: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| message(l, i))
            .collect();
        for (i, m) in msgs.iter().enumerate().take(4) {
            // SAFETY: `msgs` outlives the link's use of it (the messages are read below).
            let sent =
                unsafe { a.post_send(&tag(i as u64), Region::from_raw(m.as_ptr(), m.len())) };
            assert!(sent.unwrap());
        }
        assert_eq!(
            a.take_send_completions(),
            0,
            "message 0 is still to be pulled"
        );
        let (t, got, pieces) = take(&mut b).unwrap().unwrap();
        assert_eq!((t, &got), (tag(0), &msgs[0]));
        assert_eq!(pieces, 1, "one piece of 32 KiB");
        a.progress().unwrap();
        assert_eq!(
            a.take_send_completions(),
            1,
            "released: complete, up to message 1"
        );
        for i in 1..4 {
            let (t, got, pieces) = take(&mut b).unwrap().unwrap();
            assert_eq!((t, &got), (tag(i as u64), &msgs[i]));
            let want = match (lens[i] >= PULL_MIN, reader) {
                (false, _) => 0,
                (true, place::Writer::Same) => 1,
                (true, _) => lens[i].div_ceil(64 << 10),
            };
            assert_eq!(pieces, want, "message {i}");
        }
        assert_eq!(a.take_send_completions(), 3);
        for (i, m) in msgs.iter().enumerate().skip(4) {
            // SAFETY: as above.
            let sent =
                unsafe { a.post_send(&tag(i as u64), Region::from_raw(m.as_ptr(), m.len())) };
            assert!(sent.unwrap());
            let (_, got, _) = take(&mut b).unwrap().unwrap();
            assert_eq!(&got, m);
        }
        assert_eq!(a.take_send_completions(), 2);
        assert!(take(&mut b).unwrap().is_none());
    }

    #[test]
    fn a_thread_peer_pulls_with_plain_reads() {
        pulls_with(place::Writer::Same);
    }

    #[test]
    fn a_process_peer_pulls_with_process_vm_readv() {
        pulls_with(place::Writer::Process(std::process::id() as i32));
    }

    #[test]
    fn without_the_receivers_offer_large_messages_go_through_the_slot() {
        let (mut a, mut b) = pair(2, 1 << 20);
        // As if b's probe had failed (ptrace rules, another pid namespace).
        b.seg.pulls(b.side).store(0, Ordering::Release);
        a.peer_pulls = false;
        let m = message(PULL_MIN * 2, 3);
        // SAFETY: `m` outlives the calls.
        assert!(unsafe { a.post_send(&tag(0), Region::from_raw(m.as_ptr(), m.len())) }.unwrap());
        assert_eq!(a.take_send_completions(), 1, "copied into the slot");
        let (_, got, pieces) = take(&mut b).unwrap().unwrap();
        assert_eq!((got, pieces), (m, 0));
    }

    /// A sender that settles its held messages (the executor's way out of two ranks waiting
    /// on each other's held sends) completes them at once, and the receiver gets every byte
    /// out of the slot: whether it had not looked yet, or had already seen the message as
    /// one to pull. A message the receiver is reading stays held until it is released.
    #[test]
    fn settled_messages_complete_at_once_and_arrive_whole() {
        let (mut a, mut b) = pair(4, 1 << 20);
        let msgs: Vec<Vec<u8>> = (0..3).map(|i| message(PULL_MIN + 64 * i + 5, i)).collect();
        for (i, m) in msgs.iter().take(2).enumerate() {
            // SAFETY: `msgs` outlives the link's use of it.
            let sent =
                unsafe { a.post_send(&tag(i as u64), Region::from_raw(m.as_ptr(), m.len())) };
            assert!(sent.unwrap());
        }
        assert_eq!(a.take_send_completions(), 0, "both held for b to pull");
        // b sees message 0 as one to pull before a settles it.
        let (t, data) = b.peek_recv().unwrap().unwrap();
        assert_eq!((t, data.len(), b.pull_len()), (tag(0), 0, msgs[0].len()));
        assert!(a.settle_sends().unwrap());
        assert_eq!(a.take_send_completions(), 2, "complete without b");
        assert!(!a.settle_sends().unwrap(), "nothing left to settle");
        let mut got = Vec::new();
        b.pull_recv(&mut |off, piece| {
            assert_eq!(off, got.len());
            got.extend_from_slice(piece);
        })
        .unwrap();
        b.release_recv();
        assert_eq!(got, msgs[0]);
        let (t, got, pieces) = take(&mut b).unwrap().unwrap();
        assert_eq!(
            (t, &got, pieces),
            (tag(1), &msgs[1], 0),
            "settled before b looked"
        );
        // Held while b reads it: settling leaves it, and it completes on release.
        // SAFETY: as above.
        let sent =
            unsafe { a.post_send(&tag(2), Region::from_raw(msgs[2].as_ptr(), msgs[2].len())) };
        assert!(sent.unwrap());
        assert!(b.peek_recv().unwrap().is_some());
        let mut seen = 0;
        b.pull_recv(&mut |_, piece| {
            if seen == 0 {
                assert!(!a.settle_sends().unwrap(), "b is reading it");
            }
            seen += piece.len();
        })
        .unwrap();
        assert_eq!(seen, msgs[2].len());
        assert_eq!(a.take_send_completions(), 0);
        b.release_recv();
        a.progress().unwrap();
        assert_eq!(a.take_send_completions(), 1);
    }

    #[test]
    fn a_sender_that_gives_up_takes_its_message_back_and_the_reader_says_why() {
        for with_abort in [true, false] {
            let (mut a, mut b) = pair(2, 1 << 20);
            let m = message(PULL_MIN, 1);
            // SAFETY: `m` outlives the calls.
            let sent = unsafe { a.post_send(&tag(0), Region::from_raw(m.as_ptr(), m.len())) };
            assert!(sent.unwrap());
            // The sender's call fails elsewhere and returns: its buffer is no longer offered.
            a.cancel_recvs();
            assert!(a.pulls.is_empty());
            assert!(b.peek_recv().unwrap().is_some());
            if with_abort {
                // What the sender's executor does next: the cause, naming the rank at fault.
                a.send_abort(&Error::peer_lost(5, "rank 5 died"));
            }
            let r = b.pull_recv(&mut |_, _| panic!("nothing may be read"));
            match (with_abort, r) {
                (true, Err(e))
                    if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(5) =>
                {
                    assert!(e.message().contains("rank 5 died"), "{e}")
                }
                (false, Err(e))
                    if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(0) =>
                {
                    assert!(e.message().contains("took back"), "{e}")
                }
                (_, other) => panic!("{with_abort}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_receiver_that_dies_before_pulling_fails_the_send_naming_it() {
        let (mut a, mut b) = pair(2, 1 << 20);
        let m = message(PULL_MIN, 2);
        // SAFETY: `m` outlives the calls.
        assert!(unsafe { a.post_send(&tag(0), Region::from_raw(m.as_ptr(), m.len())) }.unwrap());
        assert!(a.progress().is_ok(), "the receiver is alive");
        // The receiver process dies: its socket closes, its memory stays mapped.
        b.sock = None;
        b.abort_sent = true;
        drop(b);
        // Another test of this process forking a child holds a copy of b's socket until the
        // child execs: the EOF can come a moment late.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !a.before_wait() {
            assert!(std::time::Instant::now() < deadline, "the EOF never came");
            std::thread::yield_now();
        }
        assert_eq!(a.take_send_completions(), 0);
        match a.progress() {
            Err(e) if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(1) => {
                assert!(e.message().contains("rank 1"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sender_that_dies_before_its_message_is_read_is_peer_lost() {
        let (mut a, mut b) = pair(2, 1 << 20);
        let m = message(PULL_MIN, 4);
        // SAFETY: `m` outlives the calls.
        assert!(unsafe { a.post_send(&tag(0), Region::from_raw(m.as_ptr(), m.len())) }.unwrap());
        // Play a sender process that is gone: a reaped child's pid reads nothing.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        b.reader = place::Writer::Process(pid);
        assert!(b.peek_recv().unwrap().is_some());
        match b.pull_recv(&mut |_, _| panic!("nothing may be read")) {
            Err(e) if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(0) => {
                assert!(e.message().contains("rank 0"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(b.peek_recv().is_err(), "the link stays failed");
    }
}

mod bench {
    use super::super::*;
    use super::support::pair;

    /// Round-trip time of an 8-byte message between two threads (run with --ignored --nocapture
    /// in release mode).
    #[test]
    #[ignore]
    fn ping_pong_latency() {
        let (mut a, mut b) = pair(4, 512 << 10);
        let n = 100_000u64;
        let reps = 7;
        let m = [1u8; 8];
        let t = std::thread::spawn(move || {
            for i in 0..n * reps {
                loop {
                    if b.peek_recv().unwrap().is_some() {
                        b.release_recv();
                        break;
                    }
                    std::hint::spin_loop();
                }
                // SAFETY: `m` outlives the call.
                while !unsafe {
                    b.post_send(
                        &Tag {
                            seq: i,
                            ..Tag::default()
                        },
                        Region::from_raw(m.as_ptr(), 8),
                    )
                }
                .unwrap()
                {}
            }
        });
        let mut best = f64::MAX;
        for _ in 0..reps {
            let start = std::time::Instant::now();
            for i in 0..n {
                // SAFETY: `m` outlives the call.
                while !unsafe {
                    a.post_send(
                        &Tag {
                            seq: i,
                            ..Tag::default()
                        },
                        Region::from_raw(m.as_ptr(), 8),
                    )
                }
                .unwrap()
                {}
                loop {
                    if a.peek_recv().unwrap().is_some() {
                        a.release_recv();
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
        }
        t.join().unwrap();
        eprintln!("round trip {best:.0} ns (best of {reps})");
    }
}
