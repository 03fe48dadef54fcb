//! C programs (tests/c/*.c and examples/c/allreduce.c) compiled with `cc` against include/oxccl.h
//! and the built liboxccl, run as 1–4 processes. The harness serves the rendezvous store itself
//! (as a launcher would) and gives each process OXCCL_RANK / OXCCL_WORLD_SIZE / OXCCL_ROOT /
//! OXCCL_SECRET / OXCCL_ROOT_EXTERNAL=1, or lets rank 0 make a unique id and passes it on.
//! Every test has a deadline; every child is killed and reaped on every path.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use core_oxccl::internals::bootstrap::{StoreServer, UniqueId, secret_hex};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds liboxccl (cargo builds only the Rust parts for tests) with the profile this test was
/// built with, into the same target directory, and returns the directory holding liboxccl.so.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(manifest_dir())
            .args(["build", "--quiet", "-p", "oxccl-ffi", "--target-dir"])
            .arg(target_dir);
        match profile_dir.file_name().and_then(|s| s.to_str()) {
            Some("release") => cmd.arg("--release"),
            // `cargo test` builds with the test profile into target/debug: reuse its artifacts.
            Some("debug") => cmd.args(["--profile", "test"]),
            Some(other) => cmd.args(["--profile", other]),
            None => panic!("odd target dir {}", profile_dir.display()),
        };
        let st = cmd.status().expect("run cargo build -p oxccl-ffi");
        assert!(st.success(), "cargo build -p oxccl-ffi failed");
        assert!(
            profile_dir.join("liboxccl.so").exists(),
            "no liboxccl.so in {}",
            profile_dir.display()
        );
        profile_dir
    })
}

/// A fresh directory under cargo's temp dir (unique per call: tests run in parallel).
fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("oxccl-ffi-c")
        .join(format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiles C sources into an executable linked against liboxccl.so (rpath set), or against
/// liboxccl.a when `static_lib`. Warnings are errors.
fn compile(name: &str, srcs: &[PathBuf], static_lib: bool) -> PathBuf {
    let lib = lib_dir();
    let out = scratch("bin").join(name);
    let mut cmd = Command::new("cc");
    cmd.args(["-std=c11", "-O1", "-pthread", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-I{}", manifest_dir().join("include").display()))
        .args(srcs)
        .arg("-o")
        .arg(&out);
    if static_lib {
        cmd.arg(lib.join("liboxccl.a"))
            .args(["-lpthread", "-ldl", "-lm", "-lrt"]);
    } else {
        cmd.arg(format!("-L{}", lib.display()))
            .arg("-loxccl")
            .arg(format!("-Wl,-rpath,{}", lib.display()));
    }
    let o = cmd.output().expect("run cc");
    assert!(
        o.status.success(),
        "cc {name} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn test_src(name: &str) -> PathBuf {
    manifest_dir().join("tests/c").join(name)
}

/// One child process, killed and reaped when dropped (whatever happened).
struct Proc {
    rank: usize,
    child: Child,
    out: PathBuf,
    err: PathBuf,
    status: Option<ExitStatus>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proc {
    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

/// Starts `exe args` as rank `rank` with a clean environment plus `env`.
fn spawn(exe: &Path, rank: usize, args: &[String], env: &[(String, String)]) -> Proc {
    spawn_wrapped(&[], exe, rank, args, env)
}

/// Like `spawn`, with `wrap` before the program (`ip netns exec NS`, which execs it: the child's
/// pid is the program's).
fn spawn_wrapped(
    wrap: &[String],
    exe: &Path,
    rank: usize,
    args: &[String],
    env: &[(String, String)],
) -> Proc {
    let dir = scratch(&format!("run-rank{rank}"));
    let out = dir.join(format!("rank{rank}.out"));
    let err = dir.join(format!("rank{rank}.err"));
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap());
    for k in ["PATH", "OXCCL_DEBUG"] {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    // A hang becomes an error naming the peer well before the test's deadline.
    cmd.env("OXCCL_TIMEOUT_MS", "30000");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
    Proc {
        rank,
        child,
        out,
        err,
        status: None,
    }
}

/// Waits for every process until `deadline`; on the deadline, kills them all (Drop) and fails.
fn wait_all(procs: &mut [Proc], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut running = 0;
        for p in procs.iter_mut() {
            if p.status.is_none() {
                match p.child.try_wait().expect("try_wait") {
                    Some(st) => p.status = Some(st),
                    None => running += 1,
                }
            }
        }
        if running == 0 {
            return;
        }
        if Instant::now() > deadline {
            let report = report(procs);
            panic!("processes still running after {limit:?}:\n{report}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn report(procs: &[Proc]) -> String {
    procs
        .iter()
        .map(|p| {
            format!(
                "--- rank {} ({:?})\nstdout:\n{}stderr:\n{}",
                p.rank,
                p.status,
                p.stdout(),
                p.stderr()
            )
        })
        .collect()
}

fn assert_all_ok(procs: &[Proc]) {
    if procs.iter().any(|p| !p.status.is_some_and(|s| s.success())) {
        panic!("a rank failed:\n{}", report(procs));
    }
}

/// A store served by this process, as a launcher serves it, and each rank's environment.
struct Launch {
    _server: StoreServer,
    env: Vec<Vec<(String, String)>>,
}

fn launch(n: usize) -> Launch {
    let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).expect("bind store");
    let listener = id.take_listener().expect("listener");
    launch_on(n, listener, id.secret)
}

/// `launch`, serving the store on `listener` (bound in a network namespace, say).
fn launch_on(n: usize, listener: std::net::TcpListener, secret: [u8; 16]) -> Launch {
    let server = StoreServer::start(listener, secret).expect("serve store");
    let root = server.addr();
    let env = (0..n)
        .map(|r| {
            vec![
                ("OXCCL_RANK".into(), r.to_string()),
                ("OXCCL_WORLD_SIZE".into(), n.to_string()),
                ("OXCCL_ROOT".into(), root.to_string()),
                ("OXCCL_SECRET".into(), secret_hex(&secret)),
                ("OXCCL_ROOT_EXTERNAL".into(), "1".into()),
            ]
        })
        .collect();
    Launch {
        _server: server,
        env,
    }
}

/// Runs `exe args` as `n` ranks from the environment and waits for all of them.
fn run_env(exe: &Path, n: usize, args: &[&str], limit: Duration) -> Vec<Proc> {
    let l = launch(n);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut procs: Vec<Proc> = (0..n).map(|r| spawn(exe, r, &args, &l.env[r])).collect();
    wait_all(&mut procs, limit);
    procs
}

#[test]
fn allreduce_every_type_and_op() {
    let exe = compile("allreduce_all", &[test_src("allreduce_all.c")], false);
    for n in [2, 4] {
        let t = Instant::now();
        let procs = run_env(&exe, n, &[], Duration::from_secs(120));
        assert_all_ok(&procs);
        for p in &procs {
            assert!(p.stdout().contains("all-reduce ok"), "{}", report(&procs));
        }
        eprintln!("{n} ranks: {:?}", t.elapsed());
    }
}

#[test]
fn every_collective_blocking_nonblocking_and_grouped() {
    let exe = compile("collectives", &[test_src("collectives.c")], false);
    for n in [2, 3, 4] {
        let t = Instant::now();
        let procs = run_env(&exe, n, &[], Duration::from_secs(120));
        assert_all_ok(&procs);
        for p in &procs {
            assert!(p.stdout().contains("collectives ok"), "{}", report(&procs));
        }
        eprintln!("{n} ranks: {:?}", t.elapsed());
    }
}

#[test]
fn registered_memory_between_processes() {
    let exe = compile("memalloc", &[test_src("memalloc.c")], false);
    for n in [2, 4] {
        let l = launch(n);
        let mut procs: Vec<Proc> = (0..n)
            .map(|r| {
                let mut env = l.env[r].clone();
                env.push(("OXCCL_TRANSPORT".into(), "shm".into()));
                spawn(&exe, r, &[], &env)
            })
            .collect();
        wait_all(&mut procs, Duration::from_secs(120));
        assert_all_ok(&procs);
        for p in &procs {
            assert!(p.stdout().contains("memalloc ok"), "{}", report(&procs));
        }
    }
}

#[test]
fn error_paths() {
    let exe = compile("errors", &[test_src("errors.c")], false);
    let mut p = vec![spawn(&exe, 0, &[], &[])];
    wait_all(&mut p, Duration::from_secs(60));
    assert_all_ok(&p);
    assert!(p[0].stdout().contains("errors ok"), "{}", report(&p));
}

#[test]
fn unique_id_from_rank_zero() {
    let exe = compile("unique_id", &[test_src("unique_id.c")], false);
    let n = 3;
    let limit = Duration::from_secs(60);
    let deadline = Instant::now() + limit;
    let mut procs = vec![spawn(&exe, 0, &["0".into(), n.to_string()], &[])];
    // Rank 0 prints the id on its first line.
    let id = loop {
        let out = procs[0].stdout();
        if let Some((line, _)) = out.split_once('\n') {
            break line.trim().to_string();
        }
        if let Some(st) = procs[0].child.try_wait().unwrap() {
            procs[0].status = Some(st);
            panic!("rank 0 exited before printing the id:\n{}", report(&procs));
        }
        assert!(Instant::now() < deadline, "no id:\n{}", report(&procs));
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(id.parse::<UniqueId>().is_ok(), "rank 0 printed {id:?}");
    for r in 1..n {
        procs.push(spawn(
            &exe,
            r,
            &[r.to_string(), n.to_string(), id.clone()],
            &[],
        ));
    }
    wait_all(
        &mut procs,
        deadline.saturating_duration_since(Instant::now()),
    );
    assert_all_ok(&procs);
}

#[test]
fn lost_peer_fails_and_revokes() {
    let exe = compile("failures", &[test_src("failures.c")], false);
    let procs = run_env(&exe, 2, &["lost"], Duration::from_secs(60));
    assert_all_ok(&procs);
    assert!(procs[0].stdout().contains("lost ok"), "{}", report(&procs));
}

#[test]
fn mismatched_counts_fail_on_every_rank() {
    let exe = compile("failures", &[test_src("failures.c")], false);
    let procs = run_env(&exe, 2, &["mismatch"], Duration::from_secs(60));
    let codes: Vec<Option<i32>> = procs
        .iter()
        .map(|p| p.status.and_then(|s| s.code()))
        .collect();
    assert!(
        codes.iter().all(|c| matches!(c, Some(10 | 11))) && codes.contains(&Some(10)),
        "expected every rank to fail, at least one with oxcclMismatch; got {codes:?}\n{}",
        report(&procs)
    );
}

#[test]
fn split_into_two_colors_and_no_color() {
    let exe = compile("manage", &[test_src("manage.c")], false);
    let procs = run_env(&exe, 4, &["split"], Duration::from_secs(60));
    assert_all_ok(&procs);
}

#[test]
fn shrink_to_the_survivors() {
    let exe = compile("manage", &[test_src("manage.c")], false);
    let procs = run_env(&exe, 3, &["shrink"], Duration::from_secs(90));
    assert_all_ok(&procs);
    for p in &procs[..2] {
        assert!(p.stdout().contains("shrink ok"), "{}", report(&procs));
    }
}

#[test]
fn revoke_shrink_excluding_and_grow_back() {
    let exe = compile("manage", &[test_src("manage.c")], false);
    let l = launch(4);
    let args = vec!["heal".to_string()];
    let mut procs: Vec<Proc> = (0..4).map(|r| spawn(&exe, r, &args, &l.env[r])).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        if let Some(line) = procs[0].stdout().lines().find(|l| l.starts_with("JOIN ")) {
            break line["JOIN ".len()..].trim().to_string();
        }
        if let Some(st) = procs[0].child.try_wait().unwrap() {
            procs[0].status = Some(st);
            panic!(
                "rank 0 exited before printing the join id:\n{}",
                report(&procs)
            );
        }
        assert!(Instant::now() < deadline, "no join id:\n{}", report(&procs));
        std::thread::sleep(Duration::from_millis(10));
    };
    let joiner = vec!["join".to_string(), id, "3".into(), "4".into()];
    procs.push(spawn(&exe, 4, &joiner, &[]));
    wait_all(
        &mut procs,
        deadline.saturating_duration_since(Instant::now()),
    );
    assert_all_ok(&procs);
    for p in &procs {
        assert!(p.stdout().contains("heal ok"), "{}", report(&procs));
    }
}

#[test]
fn abort_interrupts_a_blocked_call() {
    let exe = compile("manage", &[test_src("manage.c")], false);
    let procs = run_env(&exe, 2, &["abort"], Duration::from_secs(60));
    assert_all_ok(&procs);
}

/// Runs `config <args>` as `n` ranks; every rank must print `says`.
fn config_runs(n: usize, args: &[&str], says: &str) {
    let exe = compile("config", &[test_src("config.c")], false);
    let mut procs = if n == 1 {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        vec![spawn(&exe, 0, &args, &[])]
    } else {
        run_env(&exe, n, args, Duration::from_secs(60))
    };
    wait_all(&mut procs, Duration::from_secs(60));
    assert_all_ok(&procs);
    for p in &procs {
        assert!(p.stdout().contains(says), "{}", report(&procs));
    }
}

#[test]
fn config_v1_bad_values_persistent_calls_and_a_nonblocking_init_that_fails() {
    config_runs(1, &["single"], "config single ok");
}

#[test]
fn config_nonblocking_init_and_comm_name() {
    let flag = scratch("nonblocking").join("rank0-checked");
    config_runs(
        2,
        &["nonblocking", flag.to_str().unwrap()],
        "config nonblocking ok",
    );
}

#[test]
fn config_split_share_and_names() {
    config_runs(2, &["split"], "config split ok");
}

fn example_src() -> PathBuf {
    manifest_dir().join("../examples/c/allreduce.c")
}

#[test]
fn example_allreduce_c_runs_on_two_ranks() {
    let exe = compile("allreduce_example", &[example_src()], false);
    let procs = run_env(&exe, 2, &[], Duration::from_secs(60));
    assert_all_ok(&procs);
    for p in &procs {
        let want = format!("rank {} of 2: sum of ranks = 1 (expected 1)", p.rank);
        assert!(p.stdout().contains(&want), "{}", report(&procs));
    }
}

#[test]
fn static_library_links() {
    let exe = compile("allreduce_static", &[example_src()], true);
    let procs = run_env(&exe, 3, &[], Duration::from_secs(60));
    assert_all_ok(&procs);
    assert!(
        procs[2]
            .stdout()
            .contains("rank 2 of 3: sum of ranks = 3 (expected 3)"),
        "{}",
        report(&procs)
    );
}

// ---- A C host with SIGPIPE at its default: a dead or departed peer is an error, never a signal.

/// Where the 4 ranks of a sigpipe.c run live: loopback with one transport, or a network
/// namespace with two interfaces and multi-path TCP over both.
enum Net {
    Local(&'static str),
    Multipath,
}

/// A network namespace with loopback and two interfaces (`d0` 10.78.0.1, `d1` 10.78.1.1:
/// addresses that exist only inside it), deleted on drop. `None` (after printing why) where
/// namespaces cannot be made.
struct Netns(String);

impl Netns {
    fn create() -> Option<Netns> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "oxsp{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ip = |args: &[&str]| -> Result<(), String> {
            let o = Command::new("ip")
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if o.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
        };
        let _ = ip(&["netns", "del", &name]);
        if let Err(e) = ip(&["netns", "add", &name]) {
            println!(
                "skipped: cannot create a network namespace here (needs root and iproute2): {e}"
            );
            return None;
        }
        let ns = Netns(name);
        let n = ns.0.as_str();
        let setup = [
            vec!["-n", n, "link", "set", "lo", "up"],
            // veth pairs with both ends inside (this kernel has no dummy interfaces); traffic
            // between the two addresses is local delivery.
            vec![
                "-n", n, "link", "add", "d0", "type", "veth", "peer", "name", "d0p",
            ],
            vec![
                "-n", n, "link", "add", "d1", "type", "veth", "peer", "name", "d1p",
            ],
            vec!["-n", n, "link", "set", "d0p", "up"],
            vec!["-n", n, "link", "set", "d1p", "up"],
            vec!["-n", n, "addr", "add", "10.78.0.1/24", "dev", "d0"],
            vec!["-n", n, "addr", "add", "10.78.1.1/24", "dev", "d1"],
            vec!["-n", n, "link", "set", "d0", "up"],
            vec!["-n", n, "link", "set", "d1", "up"],
        ];
        for a in setup {
            if let Err(e) = ip(&a) {
                println!("skipped: cannot set up the namespace's interfaces: {e}");
                return None;
            }
        }
        Some(ns)
    }

    /// A listener bound to `addr` inside the namespace (from a thread that entered it).
    fn bind(&self, addr: &str) -> std::net::TcpListener {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{}", self.0);
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns on a descriptor this thread holds open; it switches only this thread,
            // which ends right after binding.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            std::net::TcpListener::bind(addr).expect("bind in the namespace")
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stdin(Stdio::null())
            .output();
    }
}

/// Runs sigpipe.c `mode victim` on 4 ranks over `net`; checks that the victim went as planned,
/// that no survivor died of a signal, and that every survivor printed its "survived" line.
/// Returns the survivors' lines.
fn sigpipe(mode: &str, victim: usize, net: Net) -> Vec<String> {
    const N: usize = 4;
    let exe = compile("sigpipe", &[test_src("sigpipe.c")], false);
    let mut extra: Vec<(String, String)> = Vec::new();
    let (l, wrap, _ns) = match net {
        Net::Local(transport) => {
            extra.push(("OXCCL_TRANSPORT".into(), transport.into()));
            (launch(N), Vec::new(), None)
        }
        Net::Multipath => {
            let Some(ns) = Netns::create() else {
                return Vec::new();
            };
            let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).expect("a secret");
            drop(id.take_listener());
            let l = launch_on(N, ns.bind("10.78.0.1:0"), id.secret);
            extra.push(("OXCCL_TRANSPORT".into(), "tcp".into()));
            extra.push(("OXCCL_SOCKET_IFNAME".into(), "d0,d1".into()));
            extra.push(("OXCCL_DEBUG".into(), "INFO".into()));
            let wrap = vec![
                "ip".to_string(),
                "netns".into(),
                "exec".into(),
                ns.0.clone(),
            ];
            (l, wrap, Some(ns))
        }
    };
    if mode == "idle" || mode == "abort" {
        extra.push(("OXCCL_TIMEOUT_MS".into(), "3000".into()));
    }
    let args = vec![mode.to_string(), victim.to_string()];
    let mut procs: Vec<Proc> = (0..N)
        .map(|r| {
            let mut env = l.env[r].clone();
            env.extend(extra.iter().cloned());
            spawn_wrapped(&wrap, &exe, r, &args, &env)
        })
        .collect();
    let limit = Duration::from_secs(120);
    let deadline = Instant::now() + limit;
    if mode == "idle" || mode == "abort" {
        // Every rank idle (its calls done, polling): now the victim dies, as `kill -9` would.
        while !procs.iter().all(|p| p.stdout().contains("idle")) {
            for i in 0..N {
                if let Some(st) = procs[i].child.try_wait().expect("try_wait") {
                    procs[i].status = Some(st);
                    panic!("rank {i} exited before going idle:\n{}", report(&procs));
                }
            }
            assert!(
                Instant::now() < deadline,
                "ranks never went idle:\n{}",
                report(&procs)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let v = &mut procs[victim];
        if mode == "abort" {
            // SAFETY: kill(2) on our own child, which has not been reaped (its pid is ours).
            let rc = unsafe { libc::kill(v.child.id() as i32, libc::SIGUSR1) };
            assert_eq!(rc, 0, "SIGUSR1 to the victim");
        } else {
            v.child.kill().expect("kill the victim");
            v.status = Some(v.child.wait().expect("reap the victim"));
        }
    }
    wait_all(
        &mut procs,
        deadline.saturating_duration_since(Instant::now()),
    );
    use std::os::unix::process::ExitStatusExt;
    let mut lines = Vec::new();
    for p in &procs {
        let st = p.status.expect("waited");
        if p.rank == victim {
            let planned = match mode {
                "close" | "abort" => st.code() == Some(0),
                _ => st.signal() == Some(libc::SIGKILL),
            };
            assert!(planned, "the victim ended with {st:?}:\n{}", report(&procs));
            continue;
        }
        if let Some(sig) = st.signal() {
            panic!(
                "rank {} was killed by signal {sig}{}:\n{}",
                p.rank,
                if sig == libc::SIGPIPE {
                    " (SIGPIPE)"
                } else {
                    ""
                },
                report(&procs)
            );
        }
        assert!(st.success(), "rank {} failed:\n{}", p.rank, report(&procs));
        let out = p.stdout();
        let line = out
            .lines()
            .find(|l| l.starts_with("survived"))
            .unwrap_or_else(|| panic!("rank {} did not survive:\n{}", p.rank, report(&procs)));
        lines.push(format!("rank {}: {line}", p.rank));
    }
    if !wrap.is_empty() {
        let survivor = (victim + 1) % N;
        assert!(
            procs[survivor]
                .stderr()
                .contains("multi-path tcp over 2 paths"),
            "rank {survivor} did not use multi-path links:\n{}",
            report(&procs)
        );
    }
    eprintln!("{mode} victim {victim}:\n  {}", lines.join("\n  "));
    lines
}

#[test]
fn c_host_survives_a_killed_peer_over_tcp() {
    sigpipe("kill", 2, Net::Local("tcp"));
}

#[test]
fn c_host_survives_a_killed_peer_over_shm() {
    sigpipe("kill", 2, Net::Local("shm"));
}

#[test]
fn c_host_survives_a_killed_peer_over_multipath_tcp() {
    sigpipe("kill", 2, Net::Multipath);
}

#[test]
fn c_host_survives_a_peer_that_closes_early_over_tcp() {
    sigpipe("close", 2, Net::Local("tcp"));
}

#[test]
fn c_host_survives_a_peer_that_closes_early_over_shm() {
    sigpipe("close", 2, Net::Local("shm"));
}

#[test]
fn c_host_survives_a_peer_that_closes_early_over_multipath_tcp() {
    sigpipe("close", 2, Net::Multipath);
}

/// Every survivor's "async error ... after <ms> ms idle" stays within timeout + one period
/// (3,000 ms + 375 ms; a SIGKILL is seen at once, by EOF on the liveness ring) plus slack for
/// a busy machine.
fn check_idle_detection(lines: &[String]) {
    for l in lines {
        let ms: f64 = l
            .split("after ")
            .nth(1)
            .and_then(|r| r.split(" ms").next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no time in {l:?}"));
        assert!(ms <= 3375.0 + 1500.0, "too slow to notice: {l}");
    }
}

#[test]
fn idle_c_host_polls_the_loss_of_rank_0_over_tcp() {
    check_idle_detection(&sigpipe("idle", 0, Net::Local("tcp")));
}

#[test]
fn idle_c_host_polls_the_loss_of_rank_2_over_tcp() {
    check_idle_detection(&sigpipe("idle", 2, Net::Local("tcp")));
}

#[test]
fn idle_c_host_polls_the_loss_of_rank_0_over_shm() {
    check_idle_detection(&sigpipe("idle", 0, Net::Local("shm")));
}

#[test]
fn idle_c_host_polls_the_loss_of_rank_2_over_shm() {
    check_idle_detection(&sigpipe("idle", 2, Net::Local("shm")));
}

#[test]
fn idle_c_host_polls_a_peers_abort_over_tcp() {
    check_idle_detection(&sigpipe("abort", 1, Net::Local("tcp")));
}
