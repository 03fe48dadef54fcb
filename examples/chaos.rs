//! The chaos soak's worker and driver (run by `benches/chaos.sh`, which builds the network
//! namespaces; read that script's header for the whole picture).
//!
//! **Worker** (`CHAOS_ROLE=worker`): trains in a loop. Each step is one all-reduce of
//! [`LEN`] floats whose expected sum is known (every rank contributes the step's value, so the
//! sum is `size x value`: checked element by element; a wrong element prints `WRONG` and exits
//! 3). A failed step (a rank killed, stopped past the threshold, cut off) is followed by
//! `shrink`: if the survivors are no majority of the full size, this side exits (`MINORITY`: a
//! partitioned host must not go on as a second job); otherwise rank 0 makes a join id and prints
//! `JOIN <id> <size> <full>`. Rank 0 learns on its stdin when replacements run (`READY <target>`)
//! or when to stop (`STOP`), and carries that to everyone in the step's all-reduce (one extra
//! element), so all grow (or stop) at the same step; after a grow rank 0 broadcasts the step
//! number. A replacement (`CHAOS_JOIN="<id> <rank> <size>"`) joins with the id. A failed grow
//! is a failed step. Every half second each worker prints `PROGRESS <steps>`.
//!
//! **Driver** (`--driver`): starts the workers in the host namespaces (`ip netns exec`), serves
//! the store, injects faults at random (SIGKILL; SIGSTOP short and long; a host's link down
//! short and long), starts replacements where a host has room, watches for hangs (no progress
//! anywhere for 30 s) and for wrong results, samples descriptors, threads and RSS of the
//! workers from /proc, and prints a summary. Exit status 0 when nothing hung and nothing was
//! wrong.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use oxccl::{Communicator, Config, ReduceOp, UniqueId};

#[path = "common/splitmix.rs"]
mod splitmix;
use splitmix::Rng;

/// Floats per step.
const LEN: usize = 4096;
const ROLE: &str = "CHAOS_ROLE";
const JOIN: &str = "CHAOS_JOIN";
const FULL: &str = "CHAOS_FULL";

// ---------------------------------------------------------------------------------------------
// Worker.

/// What rank 0 was told on stdin: 0 nothing, > 0 grow to that size, -1 stop.
static ORDER: AtomicI64 = AtomicI64::new(0);
/// Rank 0's join id, kept for its `grow` call.
static JOIN_ID: Mutex<Option<UniqueId>> = Mutex::new(None);

/// Keeps rank 0's new join id; an older one that was never used gives its listener back.
fn publish(id: UniqueId) {
    if let Some(old) = JOIN_ID.lock().unwrap().replace(id) {
        drop(old.take_listener());
    }
}

fn value(step: u64) -> f32 {
    (step % 97 + 1) as f32
}

/// The highest step of any rank (a replacement says 0). An all-reduce, not a broadcast: no rank
/// finishes it before every rank has taken part.
fn share_step(comm: &Communicator, step: u64) -> oxccl::Result<u64> {
    let mut s = [step];
    comm.all_reduce(&mut s, ReduceOp::Max)?;
    Ok(s[0])
}

enum Next {
    Continue(Box<Communicator>),
    Exit(i32),
}

/// After a failure on `comm`: shrink, and (rank 0) publish a join id.
fn recover(comm: &Communicator, full: usize, why: &str) -> Next {
    println!("FAILED {why}");
    let sub = match comm.shrink() {
        Ok(s) => s,
        Err(e) => {
            println!("SHRINK-FAILED {e}");
            return Next::Exit(4);
        }
    };
    if sub.size() * 2 <= full {
        println!("MINORITY {} of {full}", sub.size());
        return Next::Exit(0);
    }
    println!("SHRUNK {} of {full}", sub.size());
    ORDER.store(0, Ordering::SeqCst);
    if sub.rank() == 0 && sub.size() < full {
        match sub.grow_id() {
            Ok(id) => {
                println!("JOIN {id} {} {full}", sub.size());
                publish(id);
            }
            Err(e) => println!("GROW-ID-FAILED {e}"),
        }
    }
    Next::Continue(Box::new(sub))
}

fn work(mut comm: Communicator, mut step: u64, full: usize) -> i32 {
    let mut last = Instant::now();
    let mut done = 0u64;
    loop {
        if last.elapsed() > Duration::from_millis(500) {
            println!("PROGRESS {done} step {step} size {}", comm.size());
            last = Instant::now();
        }
        // A little compute per step, as training has.
        std::thread::sleep(Duration::from_millis(2));
        let mut buf = vec![value(step); LEN + 1];
        buf[LEN] = if comm.rank() == 0 {
            ORDER.load(Ordering::SeqCst) as f32
        } else {
            0.0
        };
        if let Err(e) = comm.all_reduce(&mut buf, ReduceOp::Sum) {
            match recover(&comm, full, &e.to_string()) {
                Next::Continue(c) => comm = *c,
                Next::Exit(code) => return code,
            }
            match share_step(&comm, step) {
                Ok(s) => step = s,
                Err(e) => match recover(&comm, full, &e.to_string()) {
                    Next::Continue(c) => comm = *c,
                    Next::Exit(code) => return code,
                },
            }
            continue;
        }
        let want = value(step) * comm.size() as f32;
        if let Some(i) = buf[..LEN].iter().position(|&x| x != want) {
            println!(
                "WRONG step {step} element {i}: {} want {want} (size {})",
                buf[i],
                comm.size()
            );
            return 3;
        }
        step += 1;
        done += 1;
        let order = buf[LEN] as i64;
        if order < 0 {
            println!("STOPPED at step {step}, {done} steps here");
            return 0;
        }
        if order > 0 {
            ORDER.store(0, Ordering::SeqCst);
            let id = JOIN_ID.lock().unwrap().take();
            // The grow counts once the grown communicator's first collective is done; until
            // then a failure (a rank lost during the grow) is recovered on the communicator
            // every survivor still shares: the one before the grow.
            let grown = comm
                .grow(order as usize, id.as_ref(), Config::default())
                .and_then(|big| share_step(&big, step).map(|s| (big, s)));
            match grown {
                Ok((big, s)) => {
                    comm = big;
                    step = s;
                    println!("GROWN {} of {full}", comm.size());
                    if comm.rank() == 0 && comm.size() < full {
                        // Grown only part of the way (no room for more yet): ask again.
                        match comm.grow_id() {
                            Ok(id) => {
                                println!("JOIN {id} {} {full}", comm.size());
                                publish(id);
                            }
                            Err(e) => println!("GROW-ID-FAILED {e}"),
                        }
                    }
                }
                Err(e) => match recover(&comm, full, &format!("grow: {e}")) {
                    Next::Continue(c) => comm = *c,
                    Next::Exit(code) => return code,
                },
            }
        }
    }
}

fn worker() -> i32 {
    std::thread::spawn(|| {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w[..] {
                ["READY", n] => ORDER.store(n.parse().unwrap_or(0), Ordering::SeqCst),
                ["STOP"] => ORDER.store(-1, Ordering::SeqCst),
                _ => {}
            }
        }
    });
    let full: usize = std::env::var(FULL)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    if let Ok(join) = std::env::var(JOIN) {
        let v: Vec<&str> = join.split_whitespace().collect();
        let (Some(id), Some(rank), Some(size)) = (
            v.first().and_then(|s| s.parse::<UniqueId>().ok()),
            v.get(1).and_then(|s| s.parse::<usize>().ok()),
            v.get(2).and_then(|s| s.parse::<usize>().ok()),
        ) else {
            println!("BAD-JOIN {join}");
            return 2;
        };
        println!("STARTED");
        let comm = match Communicator::join(rank, size, &id, Config::default()) {
            Ok(c) => c,
            Err(e) => {
                println!("JOIN-FAILED {e}");
                return 0;
            }
        };
        let step = match share_step(&comm, 0) {
            Ok(s) => s,
            Err(e) => {
                println!("JOIN-FAILED {e}");
                return 0;
            }
        };
        println!("JOINED {rank} of {size}");
        return work(comm, step, full);
    }
    match Communicator::from_env() {
        Ok(c) => work(c, 0, full),
        Err(e) => {
            println!("INIT-FAILED {e}");
            4
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver.

struct Opts {
    hosts: usize,
    per_host: usize,
    seconds: u64,
    ns: String,
    store_ip: String,
    timeout_ms: u64,
    seed: u64,
}

fn opts() -> Opts {
    let mut o = Opts {
        hosts: 4,
        per_host: 2,
        seconds: 600,
        ns: "chaos".into(),
        store_ip: "10.79.0.254".into(),
        timeout_ms: 3000,
        seed: 1,
    };
    let a: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < a.len() {
        let v = a.get(i + 1).cloned().unwrap_or_default();
        match a[i].as_str() {
            "--hosts" => o.hosts = v.parse().expect("--hosts N"),
            "--per-host" => o.per_host = v.parse().expect("--per-host N"),
            "--seconds" => o.seconds = v.parse().expect("--seconds N"),
            "--ns" => o.ns = v,
            "--store-ip" => o.store_ip = v,
            "--timeout-ms" => o.timeout_ms = v.parse().expect("--timeout-ms N"),
            "--seed" => o.seed = v.parse().expect("--seed N"),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

struct Worker {
    child: Child,
    host: usize,
    started: Instant,
    /// Still in the job as far as the driver knows (not killed, not exited).
    alive: bool,
    /// Stopped with SIGSTOP; resume (`Some(when, long)`).
    stopped: Option<(Instant, bool)>,
}

#[derive(Default, Debug)]
struct Tally {
    kills: u32,
    short_stops: u32,
    long_stops: u32,
    short_cuts: u32,
    long_cuts: u32,
    replacements: u32,
    grows: u32,
    shrinks: u32,
    minority_exits: u32,
    wrong: u32,
    hangs: u32,
    abnormal_exits: u32,
}

/// Descriptors, threads, RSS in KiB.
type Stats = (usize, usize, usize);

fn proc_stats(pid: u32) -> Option<Stats> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| -> Option<usize> {
        status
            .lines()
            .find(|l| l.starts_with(k))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((fds, field("Threads:")?, field("VmRSS:")?))
}

fn ip(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn driver() -> i32 {
    let o = opts();
    let full = o.hosts * o.per_host;
    let exe = std::env::current_exe().expect("current_exe");
    let id = UniqueId::bind(format!("{}:0", o.store_ip).parse().expect("store ip"))
        .expect("bind the store");
    let listener = id.take_listener().expect("listener");
    let _store = oxccl::internals::bootstrap::StoreServer::start(listener, id.secret)
        .expect("serve the store");
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let workers: Arc<Mutex<Vec<Worker>>> = Arc::new(Mutex::new(Vec::new()));
    let spawn = |host: usize, env: Vec<(&str, String)>| -> usize {
        let mut ws = workers.lock().unwrap();
        let who = ws.len();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("{}-h{host}", o.ns)])
            .arg(&exe)
            .env(ROLE, "worker")
            .env(FULL, full.to_string())
            .env("OXCCL_TIMEOUT_MS", o.timeout_ms.to_string())
            .env("OXCCL_TRANSPORT", "auto")
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn a worker");
        let out = child.stdout.take().expect("stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((who, line));
            }
            let _ = tx.send((who, "EOF".into()));
        });
        ws.push(Worker {
            child,
            host,
            started: Instant::now(),
            alive: true,
            stopped: None,
        });
        who
    };
    let secret = oxccl::internals::bootstrap::secret_hex(&id.secret);
    for r in 0..full {
        spawn(
            r / o.per_host,
            vec![
                ("OXCCL_RANK", r.to_string()),
                ("OXCCL_WORLD_SIZE", full.to_string()),
                ("OXCCL_ROOT", id.addr.to_string()),
                ("OXCCL_SECRET", secret.clone()),
                ("OXCCL_ROOT_EXTERNAL", "1".into()),
            ],
        );
    }
    let mut rng = Rng(o.seed);
    let mut t = Tally::default();
    let start = Instant::now();
    let end = start + Duration::from_secs(o.seconds);
    let threshold = Duration::from_millis(o.timeout_ms.max(2000));
    let mut next_fault = start + Duration::from_secs(5);
    let mut last_progress = Instant::now();
    let mut rank0: Option<usize> = None;
    // A join waiting for replacements: (id line, current size), and the replacements started.
    let mut pending: Option<(String, usize)> = None;
    let mut joiners: Vec<usize> = Vec::new();
    let mut started_joiners = 0usize;
    let mut started_seen = 0usize;
    // Members of the communicator being grown that report being in it (GROWN / JOINED).
    let mut settled = 0usize;
    let mut ready_sent = false;
    let mut cut: Option<(usize, Instant)> = None;
    let mut max_step = 0u64;
    let mut first_stats: HashMap<usize, (Stats, Instant)> = HashMap::new();
    let mut next_sample = start;
    let mut stopping: Option<Instant> = None;
    let mut last_event = String::new();
    let mut report: Vec<String> = Vec::new();
    let mut series: HashMap<usize, Vec<(u64, Stats)>> = HashMap::new();
    let mut next_series = start + Duration::from_secs(30);
    let verbose = std::env::var("CHAOS_VERBOSE").is_ok_and(|v| v == "1");
    loop {
        let now = Instant::now();
        // Periodic duties.
        if now >= next_series {
            // Every 30 s, every running worker: the long-lived ones show whether anything grows.
            next_series = now + Duration::from_secs(30);
            for (i, w) in workers.lock().unwrap().iter().enumerate() {
                if w.alive && w.stopped.is_none() {
                    if let Some(s) = proc_stats(w.child.id()) {
                        series
                            .entry(i)
                            .or_default()
                            .push((start.elapsed().as_secs(), s));
                    }
                }
            }
        }
        if now >= next_sample {
            // Each worker's first sample, once it has run for 10 s (after its setup).
            next_sample = now + Duration::from_secs(5);
            for (i, w) in workers.lock().unwrap().iter().enumerate() {
                let settled = w.started.elapsed() >= Duration::from_secs(10);
                if w.alive && w.stopped.is_none() && settled && !first_stats.contains_key(&i) {
                    if let Some(s) = proc_stats(w.child.id()) {
                        first_stats.insert(i, (s, Instant::now()));
                    }
                }
            }
        }
        {
            let mut ws = workers.lock().unwrap();
            for w in ws.iter_mut() {
                if let Some((until, long)) = w.stopped {
                    if now >= until {
                        w.stopped = None;
                        if long {
                            // Declared lost by now: it is out of the job; end it.
                            let _ = w.child.kill();
                            w.alive = false;
                        } else {
                            // SAFETY: kill(2) on our own child.
                            unsafe { libc::kill(w.child.id() as i32, libc::SIGCONT) };
                        }
                    }
                }
            }
        }
        if let Some((h, until)) = cut {
            if now >= until {
                ip(&["-n", &format!("{}-h{h}", o.ns), "link", "set", "eth0", "up"]);
                cut = None;
                last_event = format!("link of host {h} up");
            }
        }
        if stopping.is_none() && now >= end {
            stopping = Some(now);
            // The last resource sample, while every worker still runs.
            let ws = workers.lock().unwrap();
            let mut firsts: Vec<_> = first_stats.iter().collect();
            firsts.sort_by_key(|(_, (_, at))| *at);
            for (i, (s0, at)) in firsts {
                if let Some(s1) = proc_stats(ws[*i].child.id()).filter(|_| ws[*i].alive) {
                    report.push(format!(
                        "worker {i} over its last {:.0} s: descriptors {} -> {}, threads {} -> {}, RSS {} -> {} KiB",
                        at.elapsed().as_secs_f64(),
                        s0.0,
                        s1.0,
                        s0.1,
                        s1.1,
                        s0.2,
                        s1.2
                    ));
                }
            }
            drop(ws);
            if let Some(r0) = rank0.or(Some(0)) {
                let mut ws = workers.lock().unwrap();
                if let Some(s) = ws[r0].child.stdin.as_mut() {
                    let _ = writeln!(s, "STOP");
                }
            }
        }
        if stopping.is_none() && now >= next_fault && cut.is_none() && pending.is_none() {
            let mut ws = workers.lock().unwrap();
            let live: Vec<usize> = (0..ws.len())
                .filter(|&i| ws[i].alive && ws[i].stopped.is_none())
                .collect();
            if live.len() == full && !live.is_empty() {
                let victim = live[rng.below(live.len() as u64) as usize];
                let pid = ws[victim].child.id() as i32;
                match rng.below(5) {
                    0 | 1 => {
                        let _ = ws[victim].child.kill();
                        ws[victim].alive = false;
                        t.kills += 1;
                        last_event = format!("killed worker {victim}");
                    }
                    2 => {
                        // SAFETY: kill(2) on our own child.
                        unsafe { libc::kill(pid, libc::SIGSTOP) };
                        let long = rng.below(2) == 0;
                        let d = if long {
                            threshold + Duration::from_secs(3)
                        } else {
                            threshold / 4
                        };
                        ws[victim].stopped = Some((now + d, long));
                        if long {
                            t.long_stops += 1;
                        } else {
                            t.short_stops += 1;
                        }
                        last_event = format!("stopped worker {victim} for {d:?}");
                    }
                    _ => {
                        let h = ws[victim].host;
                        let long = rng.below(2) == 0;
                        let d = if long {
                            threshold + Duration::from_secs(3)
                        } else {
                            threshold / 4
                        };
                        ip(&[
                            "-n",
                            &format!("{}-h{h}", o.ns),
                            "link",
                            "set",
                            "eth0",
                            "down",
                        ]);
                        cut = Some((h, now + d));
                        if long {
                            t.long_cuts += 1;
                        } else {
                            t.short_cuts += 1;
                        }
                        last_event = format!("cut host {h} for {d:?}");
                    }
                }
                println!("[{:>5.1}s] {last_event}", start.elapsed().as_secs_f64());
            }
            next_fault = now + Duration::from_secs(4 + rng.below(6));
        }
        // Replacements: fill hosts with room while a join is pending and the links are up.
        if let (Some((idline, size)), None, None) = (&pending, cut, stopping) {
            let want = full - size;
            if started_joiners == 0 {
                let mut room: Vec<usize> = Vec::new();
                {
                    let ws = workers.lock().unwrap();
                    for h in 0..o.hosts {
                        let used = ws.iter().filter(|w| w.alive && w.host == h).count();
                        for _ in used..o.per_host {
                            room.push(h);
                        }
                    }
                }
                let target = size + room.len().min(want);
                for (k, &h) in room.iter().take(want).enumerate() {
                    let rank = size + k;
                    let j = spawn(
                        h,
                        vec![(
                            JOIN,
                            format!(
                                "{} {rank} {target}",
                                idline.split_whitespace().next().unwrap_or("")
                            ),
                        )],
                    );
                    joiners.push(j);
                    t.replacements += 1;
                }
                started_joiners = target - size;
                if started_joiners > 0 {
                    println!(
                        "[{:>5.1}s] started {} replacement(s) to grow {size} -> {target}",
                        start.elapsed().as_secs_f64(),
                        started_joiners
                    );
                }
            }
        }
        // Events from the workers.
        let msg = rx.recv_timeout(Duration::from_millis(50));
        if let Ok((who, line)) = msg {
            let w: Vec<&str> = line.split_whitespace().collect();
            if verbose && !line.starts_with("PROGRESS") {
                println!(
                    "[{:>5.1}s] worker {who}: {line}",
                    start.elapsed().as_secs_f64()
                );
            }
            match w.first().copied() {
                Some("PROGRESS") => {
                    last_progress = Instant::now();
                    if let Some(s) = w.get(3).and_then(|s| s.parse::<u64>().ok()) {
                        max_step = max_step.max(s);
                    }
                }
                Some("JOIN") => {
                    // A new shrink: replacements waiting on an older id will never join.
                    let mut ws = workers.lock().unwrap();
                    for &j in &joiners {
                        if ws[j].alive {
                            let _ = ws[j].child.kill();
                            ws[j].alive = false;
                        }
                    }
                    joiners.clear();
                    rank0 = Some(who);
                    t.shrinks += 1;
                    let size: usize = w.get(2).and_then(|s| s.parse().ok()).unwrap_or(full);
                    pending = Some((w.get(1).unwrap_or(&"").to_string(), size));
                    started_joiners = 0;
                    started_seen = 0;
                    settled = 0;
                    ready_sent = false;
                }
                Some("STARTED") if joiners.contains(&who) => started_seen += 1,
                Some("JOINED") | Some("GROWN") => {
                    // Faults wait until every member of the grown communicator is in it.
                    joiners.retain(|&j| j != who);
                    if w[0] == "GROWN" && Some(who) == rank0 {
                        t.grows += 1;
                    }
                    settled += 1;
                    let size: Option<usize> = w.get(1).and_then(|s| s.parse().ok());
                    let grown_to = if w[0] == "GROWN" {
                        size
                    } else {
                        w.get(3).and_then(|s| s.parse().ok())
                    };
                    if grown_to == Some(full) && settled >= full {
                        pending = None;
                        joiners.clear();
                    }
                }
                Some("MINORITY") => t.minority_exits += 1,
                Some("WRONG") => {
                    t.wrong += 1;
                    println!("worker {who}: {line}");
                }
                Some("EOF") => {
                    let mut ws = workers.lock().unwrap();
                    let wk = &mut ws[who];
                    let st = wk.child.wait().ok();
                    if wk.alive && stopping.is_none() {
                        let code = st.and_then(|s| s.code());
                        if !matches!(code, Some(0)) {
                            t.abnormal_exits += 1;
                            println!("worker {who} exited with {st:?}");
                        }
                    }
                    wk.alive = false;
                }
                _ => {}
            }
            // Once every replacement runs, tell rank 0 to grow.
            if let (Some((_, size)), Some(r0)) = (&pending, rank0) {
                if !ready_sent && started_joiners > 0 && started_seen == started_joiners {
                    let mut ws = workers.lock().unwrap();
                    if let Some(s) = ws[r0].child.stdin.as_mut() {
                        let _ = writeln!(s, "READY {}", size + started_joiners);
                    }
                    ready_sent = true;
                }
            }
        }
        let all_gone = workers.lock().unwrap().iter().all(|w| !w.alive);
        if stopping.is_some() && all_gone {
            break;
        }
        if stopping.is_some_and(|s| s.elapsed() > Duration::from_secs(60)) {
            println!("workers did not stop within 60 s");
            t.hangs += 1;
            break;
        }
        if last_progress.elapsed() > Duration::from_secs(30) {
            println!("HANG: no progress anywhere for 30 s (last event: {last_event})");
            t.hangs += 1;
            break;
        }
    }
    let mut ws = workers.lock().unwrap();
    for w in ws.iter_mut() {
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
    println!(
        "\n== chaos soak summary ({} s, {} hosts x {} ranks)",
        start.elapsed().as_secs(),
        o.hosts,
        o.per_host
    );
    println!(
        "faults: {} kills, {} short stops, {} long stops, {} short link cuts, {} long link cuts",
        t.kills, t.short_stops, t.long_stops, t.short_cuts, t.long_cuts
    );
    println!(
        "healing: {} join ids published (after a shrink or a partial grow), {} grows, {} replacements started, {} minority exits",
        t.shrinks, t.grows, t.replacements, t.minority_exits
    );
    println!("steps completed (highest step number): {max_step}");
    println!(
        "hangs {}, wrong results {}, abnormal exits {}",
        t.hangs, t.wrong, t.abnormal_exits
    );
    println!(
        "resources of the workers alive at the stop (10 s after each one started -> just before the stop):"
    );
    for l in &report {
        println!("  {l}");
    }
    let mut longest: Vec<_> = series.iter().filter(|(_, v)| v.len() >= 3).collect();
    longest.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    println!("the longest-lived workers, every 30 s (s: descriptors/threads/RSS KiB):");
    for (i, v) in longest.into_iter().take(3) {
        let pts: Vec<String> = v
            .iter()
            .map(|(t, (f, th, rss))| format!("{t}s: {f}/{th}/{rss}"))
            .collect();
        println!("  worker {i}: {}", pts.join(", "));
    }
    i32::from(t.hangs > 0 || t.wrong > 0)
}

fn main() {
    if std::env::var(ROLE).is_ok() {
        std::process::exit(worker());
    }
    if std::env::args().any(|a| a == "--driver") {
        std::process::exit(driver());
    }
    eprintln!("run benches/chaos.sh (it sets up the namespaces and runs this with --driver)");
    std::process::exit(2);
}
