//! Survive a dead rank: 4 process ranks loop mixed collectives; one of them (each position in
//! turn, rank 0 — the first store host — included) is SIGKILLed. The survivors must fail within
//! timeout + 1 s with an error naming it, shrink to a 3-rank communicator without it, and
//! complete 100 more all-reduces correctly.

mod common;
use common::*;
use oxccl::{Communicator, Config, ReduceOp, UniqueId};
use std::time::{Duration, Instant};

const CHILD: &str = "shrink_child";
const TIMEOUT: Duration = Duration::from_millis(3000);

#[test]
#[ignore = "a child process of this file's tests (they run it with --include-ignored)"]
fn shrink_child() {
    if !is_child(CHILD) {
        return;
    }
    child_main(|| {
        let comm = Communicator::from_env().map_err(|e| e.to_string())?;
        let (n, r) = (comm.size(), comm.rank());
        let mut iter = 0u64;
        let failed_at;
        let err = loop {
            let mut a = vec![(r + 1) as f32; 1 << 18];
            let res = comm
                .all_reduce(&mut a, ReduceOp::Sum)
                .and_then(|()| {
                    let mut b = vec![r as u32; 100];
                    comm.broadcast(&mut b, (iter as usize) % n)
                })
                .and_then(|()| {
                    let mut g = vec![0u64; n];
                    comm.all_gather(&[r as u64], &mut g)
                });
            if let Err(e) = res {
                failed_at = Instant::now();
                break e;
            }
            if a[0] != (n * (n + 1) / 2) as f32 {
                return Err(format!("iter {iter}: wrong sum {}", a[0]));
            }
            println!("ITER {iter}");
            iter += 1;
        };
        println!("ERROR peer={:?} {err}", err.peer());
        let sub = comm.shrink().map_err(|e| format!("shrink: {e}"))?;
        println!(
            "SHRUNK rank {} of {} after {:?}",
            sub.rank(),
            sub.size(),
            failed_at.elapsed()
        );
        if sub.size() != n - 1 {
            return Err(format!("shrunk to {} ranks, want {}", sub.size(), n - 1));
        }
        for i in 0..100 {
            let mut v = vec![(sub.rank() + i) as i64; 1000];
            sub.all_reduce(&mut v, ReduceOp::Sum)
                .map_err(|e| format!("after shrink, iter {i}: {e}"))?;
            let want: i64 = (0..sub.size()).map(|k| (k + i) as i64).sum();
            if v.iter().any(|&x| x != want) {
                return Err(format!("after shrink, iter {i}: got {} want {want}", v[0]));
            }
        }
        println!("DONE");
        Ok(())
    });
}

fn kill_and_shrink(transport: &str, victim: usize) {
    let n = 4;
    let ms = TIMEOUT.as_millis().to_string();
    let mut g = ProcGroup::spawn(
        CHILD,
        n,
        &[
            ("OXCCL_TIMEOUT_MS", &ms),
            ("OXCCL_TRANSPORT", transport),
            ("OXCCL_ALGO", ""),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut iters = vec![0usize; n];
    while iters.iter().any(|&i| i < 2) {
        let Some((rank, line)) = g.next_line(deadline) else {
            panic!("no progress within 60 s:\n{}", g.report());
        };
        if line.starts_with("ITER ") {
            iters[rank] += 1;
        }
    }
    g.kill(victim);
    let killed = Instant::now();
    // Time to detection: until each survivor prints its error.
    let mut detected: Vec<Option<Duration>> = vec![None; n];
    detected[victim] = Some(Duration::ZERO);
    while detected.iter().any(Option::is_none) {
        let Some((rank, line)) = g.next_line(killed + TIMEOUT + Duration::from_secs(1)) else {
            panic!(
                "not every survivor reported an error within timeout + 1 s: {detected:?}\n{}",
                g.report()
            );
        };
        if line.starts_with("ERROR") && detected[rank].is_none() {
            detected[rank] = Some(killed.elapsed());
        }
    }
    eprintln!("{transport}: rank {victim} killed; detection per rank {detected:?}");
    // The victim counts as failed, so wait for everyone without stopping at the first failure.
    g.wait(killed + TIMEOUT * 3 + Duration::from_secs(30), false);
    let report = g.report();
    for r in (0..n).filter(|&r| r != victim) {
        assert_eq!(
            g.status(r).and_then(|s| s.code()),
            Some(0),
            "rank {r}:\n{report}"
        );
        let out = g.output(r);
        let err = out
            .lines()
            .find(|l| l.starts_with("ERROR"))
            .unwrap_or_else(|| panic!("rank {r} saw no error:\n{report}"));
        assert!(
            err.contains(&format!("rank {victim}")),
            "rank {r}'s error does not name rank {victim}: {err}"
        );
        assert!(
            out.contains("DONE"),
            "rank {r} did not finish after shrinking:\n{report}"
        );
        let took = g.exited_at(r).unwrap() - killed;
        assert!(
            took < TIMEOUT * 3 + Duration::from_secs(20),
            "rank {r} took {took:?}"
        );
    }
}

#[test]
fn kill_each_rank_then_shrink_tcp() {
    for victim in 0..4 {
        kill_and_shrink("tcp", victim);
    }
}

#[test]
fn kill_each_rank_then_shrink_shm() {
    for victim in 0..4 {
        kill_and_shrink("shm", victim);
    }
}

// ---------------------------------------------------------------------------------------------
// Heal: kill, shrink, grow back to full size with a replacement process.

const GROW_CHILD: &str = "grow_child";
/// Set on a replacement process: "<join id> <rank> <size>".
const JOIN_VAR: &str = "OXCCL_TEST_JOIN";

/// Child entry. The first 4: all-reduces until one fails (the parent kills a rank), shrink,
/// rank 0 of the survivors prints `JOIN <id> <rank> <size>` for the parent, and all grow back
/// to 4. A replacement (JOIN_VAR set) joins with that id. Then everyone: rank 0's weights by
/// broadcast (`FIRST` once done), 100 checked all-reduces, `DONE`.
#[test]
#[ignore = "a child process of this file's tests (they run it with --include-ignored)"]
fn grow_child() {
    if !is_child(GROW_CHILD) {
        return;
    }
    child_main(|| {
        if let Ok(join) = std::env::var(JOIN_VAR) {
            let w: Vec<&str> = join.split_whitespace().collect();
            let [id, rank, size] = w[..] else {
                return Err(format!("bad {JOIN_VAR}: {join}"));
            };
            let id: UniqueId = id.parse().map_err(|e| format!("join id: {e}"))?;
            let (rank, size) = (rank.parse().unwrap(), size.parse().unwrap());
            let comm = Communicator::join(rank, size, &id, Config::default())
                .map_err(|e| format!("join: {e}"))?;
            return grown_work(&comm);
        }
        let comm = Communicator::from_env().map_err(|e| e.to_string())?;
        let (n, r) = (comm.size(), comm.rank());
        let mut iter = 0u64;
        let err = loop {
            let mut a = vec![(r + 1) as f32; 1 << 16];
            if let Err(e) = comm.all_reduce(&mut a, ReduceOp::Sum) {
                break e;
            }
            if a[0] != (n * (n + 1) / 2) as f32 {
                return Err(format!("iter {iter}: wrong sum {}", a[0]));
            }
            println!("ITER {iter}");
            iter += 1;
        };
        println!("ERROR peer={:?} {err}", err.peer());
        let sub = comm.shrink().map_err(|e| format!("shrink: {e}"))?;
        println!("SHRUNK rank {} of {}", sub.rank(), sub.size());
        let id = if sub.rank() == 0 {
            let id = sub.grow_id().map_err(|e| format!("grow_id: {e}"))?;
            println!("JOIN {id} {} {n}", sub.size());
            Some(id)
        } else {
            None
        };
        let full = sub
            .grow(n, id.as_ref(), Config::default())
            .map_err(|e| format!("grow: {e}"))?;
        if full.rank() != sub.rank() || full.size() != n {
            return Err(format!(
                "grown: rank {} of {}, want {} of {n}",
                full.rank(),
                full.size(),
                sub.rank()
            ));
        }
        grown_work(&full)
    });
}

fn grown_work(comm: &Communicator) -> Result<(), String> {
    let (n, r) = (comm.size(), comm.rank());
    let want_w: Vec<f32> = (0..4096).map(|i| i as f32 * 0.5).collect();
    let mut w = if r == 0 {
        want_w.clone()
    } else {
        vec![0f32; 4096]
    };
    comm.broadcast(&mut w, 0)
        .map_err(|e| format!("weights: {e}"))?;
    if w != want_w {
        return Err("weights from rank 0 differ".into());
    }
    println!("FIRST");
    for i in 0..100 {
        let mut v = vec![(r + i) as i64; 1000];
        comm.all_reduce(&mut v, ReduceOp::Sum)
            .map_err(|e| format!("after grow, iter {i}: {e}"))?;
        let want: i64 = (0..n).map(|k| (k + i) as i64).sum();
        if v.iter().any(|&x| x != want) {
            return Err(format!("after grow, iter {i}: got {} want {want}", v[0]));
        }
    }
    println!("DONE");
    Ok(())
}

fn kill_shrink_grow(transport: &str, victim: usize) {
    let n = 4;
    let ms = TIMEOUT.as_millis().to_string();
    let env = [
        ("OXCCL_TIMEOUT_MS", ms.as_str()),
        ("OXCCL_TRANSPORT", transport),
        ("OXCCL_ALGO", ""),
    ];
    let mut g = ProcGroup::spawn(GROW_CHILD, n, &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut iters = vec![0usize; n];
    while iters.iter().any(|&i| i < 2) {
        let Some((rank, line)) = g.next_line(deadline) else {
            panic!("no progress within 60 s:\n{}", g.report());
        };
        if line.starts_with("ITER ") {
            iters[rank] += 1;
        }
    }
    g.kill(victim);
    let join = loop {
        let Some((_, line)) = g.next_line(deadline) else {
            panic!("no join id within 60 s:\n{}", g.report());
        };
        if let Some(rest) = line.strip_prefix("JOIN ") {
            break rest.to_string();
        }
    };
    assert!(join.ends_with(" 3 4"), "join line {join}");
    let started = Instant::now();
    let mut env = env.to_vec();
    env.push((JOIN_VAR, &join));
    let newbie = g.add(GROW_CHILD, &env);
    let first = loop {
        let Some((rank, line)) = g.next_line(deadline) else {
            panic!(
                "the replacement never finished a collective:\n{}",
                g.report()
            );
        };
        // (The child's first stdout line follows the test harness's "test ... " prefix.)
        if rank == newbie && line.ends_with("FIRST") {
            break started.elapsed();
        }
    };
    g.wait(Instant::now() + Duration::from_secs(60), false);
    let report = g.report();
    for r in (0..=n).filter(|&r| r != victim) {
        assert_eq!(
            g.status(r).and_then(|s| s.code()),
            Some(0),
            "rank {r}:\n{report}"
        );
        assert!(g.output(r).contains("DONE"), "rank {r}:\n{report}");
    }
    eprintln!(
        "{transport}: rank {victim} killed, survivors shrank and grew back to 4; replacement start \
         to its first collective: {first:?}"
    );
    assert!(
        first < Duration::from_secs(10),
        "the replacement took {first:?} to its first collective"
    );
}

#[test]
fn kill_shrink_and_grow_back_tcp() {
    kill_shrink_grow("tcp", 2);
}

#[test]
fn kill_shrink_and_grow_back_shm() {
    kill_shrink_grow("shm", 0);
}

/// After one rank revokes, every rank's split still works: the live ranks agree on who they are
/// (as shrink does) and split that; the halves all-reduce correctly.
#[test]
fn split_after_revoke() {
    let out = run_ranks(4, test_cfg(5000), Duration::from_secs(60), |comm| {
        let r = comm.rank();
        let mut v = vec![1u32; 8];
        comm.all_reduce(&mut v, ReduceOp::Sum)
            .map_err(|e| e.to_string())?;
        if r == 1 {
            comm.revoke();
        }
        let half = comm
            .split(Some((r % 2) as u32), r as u32, Config::default())
            .map_err(|e| format!("rank {r}: split after revoke: {e}"))?
            .ok_or("no communicator")?;
        let mut w = vec![r as u32; 8];
        half.all_reduce(&mut w, ReduceOp::Sum)
            .map_err(|e| format!("rank {r}: all-reduce on the half: {e}"))?;
        let want = if r % 2 == 0 { 2 } else { 4 };
        if half.size() != 2 || w[0] != want {
            return Err(format!("rank {r}: size {} sum {}", half.size(), w[0]));
        }
        Ok::<_, String>(())
    });
    for (r, o) in out.into_iter().enumerate() {
        o.unwrap_or_else(|e| panic!("rank {r}: {e}"));
    }
}
