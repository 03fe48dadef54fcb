//! Protocol tests of [`super::RdmaLink`] over the emulated NIC.

use super::super::emu::Fabric;
use super::*;
use crate::transport::Region as Src;

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

/// Two connected links over an emulated fabric.
pub(super) fn pair(
    f: &Fabric,
    nslots: usize,
    slot_size: usize,
    params: LinkParams,
) -> (RdmaLink, RdmaLink) {
    let geo = Geometry { nslots, slot_size };
    let mk = |label: usize, peer: usize| {
        let d = f.device(label);
        RdmaLink::new(
            label,
            peer,
            d.open(geo.caps()).unwrap(),
            d.name(),
            geo,
            params,
        )
        .unwrap()
    };
    let (mut a, mut b) = (mk(0, 1), mk(1, 0));
    let (qa, ma, qb, mb) = (a.address(), a.mem_info(), b.address(), b.mem_info());
    a.connect(&qb, &mb).unwrap();
    b.connect(&qa, &ma).unwrap();
    (a, b)
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

fn recv_one(l: &mut RdmaLink, d: Instant) -> Result<(Tag, Vec<u8>)> {
    loop {
        if let Some((t, data)) = l.peek_recv()? {
            let v = data.to_vec();
            l.release_recv();
            return Ok((t, v));
        }
        assert!(Instant::now() < d, "no message");
        std::thread::yield_now();
    }
}

#[test]
fn immediates_round_trip() {
    for k in 0..4 {
        for v in [0u64, 1, 12345, (1 << 30) - 1, 1 << 30, u64::MAX] {
            assert_eq!(imm_parts(imm(k, v)), (k, v as u32 & IMM_MASK));
        }
    }
}

#[test]
fn messages_arrive_in_order_with_tags_copy_and_zero_copy() {
    let f = Fabric::new();
    let params = LinkParams {
        zcopy_min: 300,
        ..LinkParams::default()
    };
    let (mut a, mut b) = pair(&f, 4, 1000, params);
    let msgs: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            (0..(i as usize * 37) % 1001)
                .map(|j| (i as usize * 7 + j) as u8)
                .collect()
        })
        .collect();
    std::thread::scope(|s| {
        let msgs2 = &msgs;
        s.spawn(move || {
            let d = deadline();
            let mut done = 0;
            for (i, m) in msgs2.iter().enumerate() {
                // SAFETY: `m` outlives the loop and the link's use of it (all sends
                // complete before the thread ends, checked below).
                while !unsafe { a.post_send(&tag(i as u64), Src::from_raw(m.as_ptr(), m.len())) }
                    .unwrap()
                {
                    assert!(Instant::now() < d);
                    a.progress().unwrap();
                    done += a.take_send_completions();
                    std::thread::yield_now();
                }
                a.progress().unwrap();
                done += a.take_send_completions();
            }
            while done < msgs2.len() {
                assert!(Instant::now() < d);
                a.progress().unwrap();
                done += a.take_send_completions();
            }
            assert!(a.registrations_made() >= 1, "large messages went zero-copy");
            a.cancel_recvs();
            a
        });
        let d = deadline();
        for (i, m) in msgs.iter().enumerate() {
            let (t, data) = recv_one(&mut b, d).unwrap();
            assert_eq!(t, tag(i as u64));
            assert_eq!(&data, m);
        }
    });
}

#[test]
fn credits_bound_the_sender_and_wake_it() {
    let f = Fabric::new();
    let (mut a, mut b) = pair(&f, 2, 64, LinkParams::default());
    let m = [7u8; 64];
    for i in 0..2 {
        // SAFETY: `m` outlives the calls.
        assert!(unsafe { a.post_send(&tag(i), Src::from_raw(m.as_ptr(), 64)) }.unwrap());
    }
    // SAFETY: as above.
    assert!(!unsafe { a.post_send(&tag(2), Src::from_raw(m.as_ptr(), 64)) }.unwrap());
    assert_eq!(
        a.take_send_completions(),
        2,
        "copied sends complete at once"
    );
    // Peeking does not return the credit; releasing does, and it wakes the sender's fd.
    assert!(b.peek_recv().unwrap().is_some());
    assert!(!a.before_wait(), "nothing new yet: armed");
    let mut fds = Vec::new();
    a.wait_interest(&mut fds);
    assert_eq!(crate::sys::poll(&mut fds, 0).unwrap(), 0);
    b.release_recv();
    assert_eq!(
        crate::sys::poll(&mut fds, 1000).unwrap(),
        1,
        "credit woke the sender"
    );
    // SAFETY: as above.
    assert!(unsafe { a.post_send(&tag(2), Src::from_raw(m.as_ptr(), 64)) }.unwrap());
    for i in 1..3 {
        let (t, d) = recv_one(&mut b, deadline()).unwrap();
        assert_eq!((t.seq, d.len()), (i, 64));
    }
    // A message larger than a slot is refused.
    // SAFETY: as above.
    assert!(unsafe { a.post_send(&tag(9), Src::from_raw(m.as_ptr(), 65)) }.is_err());
}

#[test]
fn abort_arrives_after_the_messages_before_it() {
    let f = Fabric::new();
    let (mut a, mut b) = pair(&f, 4, 128, LinkParams::default());
    let m = [1u8; 8];
    // SAFETY: `m` outlives the call.
    assert!(unsafe { a.post_send(&tag(0), Src::from_raw(m.as_ptr(), 8)) }.unwrap());
    a.send_abort(&Error::mismatch(2, "count 3 vs 4"));
    assert!(recv_one(&mut b, deadline()).is_ok());
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
    assert!(b.peek_recv().is_err(), "sticky");
    // SAFETY: as above.
    assert!(unsafe { a.post_send(&tag(1), Src::from_raw(m.as_ptr(), 8)) }.is_err());
}

#[test]
fn a_closed_peer_is_peer_lost_and_a_killed_one_too() {
    let f = Fabric::with_retries(3, Duration::from_millis(1));
    let (a, mut b) = pair(&f, 2, 64, LinkParams::default());
    drop(a);
    assert!(b.progress().is_ok(), "nothing is owed yet");
    match b.peek_recv() {
        Err(e) if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(0) => {
            let msg = e.message();
            assert!(msg.contains("closed"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    // A killed peer (its NIC gone, its thread alive): a waiting receiver's probe finds out.
    let params = LinkParams {
        probe_every: Duration::from_millis(5),
        ..LinkParams::default()
    };
    let (c, mut d) = pair(&f, 2, 64, params);
    f.kill(0);
    let dl = deadline();
    let err = loop {
        match d.peek_recv() {
            Ok(None) => {}
            Ok(Some(_)) => panic!("no message was sent"),
            Err(e) => break e,
        }
        d.before_wait();
        assert!(Instant::now() < dl);
        std::thread::sleep(Duration::from_millis(1));
    };
    match err {
        e if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(0) => {
            let msg = e.message();
            assert!(msg.contains("retry") && msg.contains("probe"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    drop((b, c, d));
    assert_eq!((f.queue_pairs(), f.registrations()), (0, 0));
}

#[test]
fn lost_packets_are_retransmitted_transparently() {
    let f = Fabric::with_retries(7, Duration::from_millis(1));
    let (mut a, mut b) = pair(&f, 4, 256, LinkParams::default());
    let d = deadline();
    for i in 0..40u64 {
        if i % 5 == 0 {
            f.lose_packets(0, 3);
        }
        let m = [i as u8; 200];
        // SAFETY: `m` lives until the send is received below (copied sends complete at once).
        while !unsafe { a.post_send(&tag(i), Src::from_raw(m.as_ptr(), 200)) }.unwrap() {
            assert!(Instant::now() < d);
            std::thread::sleep(Duration::from_micros(200));
        }
        let (t, data) = recv_one(&mut b, d).unwrap();
        assert_eq!((t.seq, data), (i, vec![i as u8; 200]));
    }
}

#[test]
fn dropping_a_link_delivers_what_it_already_reported_sent() {
    let f = Fabric::with_retries(7, Duration::from_millis(2));
    let (mut a, mut b) = pair(&f, 4, 64, LinkParams::default());
    f.lose_packets(0, 3);
    let m = [9u8; 64];
    for i in 0..3 {
        // SAFETY: copied sends: `m` is only read during the call.
        assert!(unsafe { a.post_send(&tag(i), Src::from_raw(m.as_ptr(), 64)) }.unwrap());
    }
    assert_eq!(
        a.take_send_completions(),
        3,
        "copied sends complete at once"
    );
    // The writes are still being retried when the sender goes away.
    drop(a);
    for i in 0..3 {
        let (t, d) = recv_one(&mut b, deadline()).unwrap();
        assert_eq!((t.seq, d), (i, m.to_vec()));
    }
    match b.peek_recv() {
        Err(e) if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(0) => {
            let msg = e.message();
            assert!(msg.contains("closed"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
}
