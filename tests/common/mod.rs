//! Shared helpers for integration tests: run closures as ranks on threads, with a deadline.
#![allow(dead_code)]

use std::sync::mpsc;
use std::time::Duration;

use oxccl::{Communicator, Config, UniqueId};

/// Runs `f(comm)` on `n` threads-as-ranks over a fresh loopback UniqueId and returns each rank's
/// result in rank order. Panics (failing the test) if the ranks do not all finish within `limit`.
pub(crate) fn run_ranks<T: Send + 'static>(
    n: usize,
    cfg: Config,
    limit: Duration,
    f: impl Fn(Communicator) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).expect("unique id");
    run_threads(n, limit, move |rank| {
        f(init_rank(rank, n, &id, cfg.clone()))
    })
}

/// Rank `rank`'s communicator of `n` over `id`; panics (failing the test) if init fails.
pub(crate) fn init_rank(rank: usize, n: usize, id: &UniqueId, cfg: Config) -> Communicator {
    Communicator::init(rank, n, id, cfg).unwrap_or_else(|e| panic!("rank {rank} init: {e}"))
}

/// Runs `body(rank)` for ranks `0..n`, each on its own thread, and returns the results in rank
/// order. Panics (failing the test) with a rank's own panic, or if the ranks do not all finish
/// within `limit` (naming the ranks still running).
pub(crate) fn run_threads<T: Send + 'static>(
    n: usize,
    limit: Duration,
    body: impl Fn(usize) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for rank in 0..n {
        let (body, tx) = (body.clone(), tx.clone());
        handles.push(std::thread::spawn(move || {
            let out = body(rank);
            let _ = tx.send((rank, out));
        }));
    }
    drop(tx);
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let deadline = std::time::Instant::now() + limit;
    for _ in 0..n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((r, v)) => out[r] = Some(v),
            Err(_) => {
                // A rank panicked (its sender dropped) or the deadline passed.
                for (r, h) in handles.into_iter().enumerate() {
                    if h.is_finished() {
                        if let Err(p) = h.join() {
                            std::panic::resume_unwind(p);
                        }
                    } else {
                        eprintln!("rank {r} still running");
                    }
                }
                panic!("ranks did not finish within {limit:?}");
            }
        }
    }
    for h in handles {
        h.join().expect("rank thread");
    }
    out.into_iter()
        .map(|v| v.expect("every rank reported"))
        .collect()
}

/// A config with a short timeout for tests.
pub(crate) fn test_cfg(timeout_ms: u64) -> Config {
    Config {
        timeout: Some(Duration::from_millis(timeout_ms)),
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs with exactly known results, and a comparison against `oxccl::internals::reduce::reference`.

use half::{bf16, f16};
use oxccl::{Element, ReduceOp};

/// The element types the tests generate values for.
pub(crate) trait TestElem: Element {
    /// Integers: `v` truncated (wrapping) to the type. Floats: `v` exactly (callers keep |v| small).
    fn from_i64(v: i64) -> Self;
    /// Distance in units in the last place (floats; NaN equals only NaN), or 0 / `u64::MAX` for
    /// integers (equal / not equal).
    fn ulps(a: Self, b: Self) -> u64;
}

macro_rules! test_int {
    ($($t:ty),*) => {$(
        impl TestElem for $t {
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn ulps(a: Self, b: Self) -> u64 {
                if a == b { 0 } else { u64::MAX }
            }
        }
    )*};
}
test_int!(i8, u8, i32, u32, i64, u64);

/// Maps float bits to an integer that orders like the float (sign-magnitude to offset binary),
/// so that the difference of two of them is the distance in ulps (-0.0 and +0.0 are 1 apart).
macro_rules! test_float {
    ($($t:ty => $bits:ty, $sign:expr, $nan:expr, $to_bits:expr);* $(;)?) => {$(
        impl TestElem for $t {
            fn from_i64(v: i64) -> Self {
                let f = v as f32;
                assert!(f as i64 == v, "{v} is not exact in f32");
                let x: $t = <$t as From32>::from32(f);
                assert!(<$t as From32>::to32(x) == f, "{v} is not exact in {}", stringify!($t));
                x
            }
            fn ulps(a: Self, b: Self) -> u64 {
                let (na, nb): (bool, bool) = ($nan(a), $nan(b));
                if na || nb {
                    return if na && nb { 0 } else { u64::MAX };
                }
                let ord = |x: $bits| -> u64 {
                    (if x & $sign != 0 { !x } else { x | $sign }) as u64
                };
                ord($to_bits(a)).abs_diff(ord($to_bits(b)))
            }
        }
    )*};
}

/// Conversions from and to f32 for the four float types.
trait From32: Sized {
    fn from32(x: f32) -> Self;
    fn to32(self) -> f32;
}
impl From32 for f32 {
    fn from32(x: f32) -> Self {
        x
    }
    fn to32(self) -> f32 {
        self
    }
}
impl From32 for f64 {
    fn from32(x: f32) -> Self {
        f64::from(x)
    }
    fn to32(self) -> f32 {
        self as f32
    }
}
impl From32 for f16 {
    fn from32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to32(self) -> f32 {
        self.to_f32()
    }
}
impl From32 for bf16 {
    fn from32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to32(self) -> f32 {
        self.to_f32()
    }
}

test_float! {
    f32 => u32, 1u32 << 31, f32::is_nan, f32::to_bits;
    f64 => u64, 1u64 << 63, f64::is_nan, f64::to_bits;
    f16 => u16, 1u16 << 15, f16::is_nan, f16::to_bits;
    bf16 => u16, 1u16 << 15, bf16::is_nan, bf16::to_bits;
}

/// SplitMix64 of a few words: a cheap, well-mixed deterministic hash.
pub(crate) fn mix(words: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &w in words {
        h ^= w;
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    h
}

/// Rank `rank`'s input for `op` (`salt` varies it between calls). Chosen so that every float
/// result is exact in any reduction order, for up to 8 ranks, in every float type:
/// - Sum / Avg: integers in [-16, 16] (partial sums stay within ±128, exact even in bf16; Avg then
///   divides once, like the reference);
/// - Prod: ±1 and ±2 (products are powers of two up to 2^8);
/// - Max / Min: integers in [-100, 100] (no -0.0, whose order against +0.0 is unspecified).
///
/// Integers are full-width pseudo-random values: Sum, Prod and Avg wrap, which is associative and
/// commutative modulo 2^bits, so the reference's rank-order fold gives the only right answer.
pub(crate) fn input<T: TestElem>(op: ReduceOp, rank: usize, count: usize, salt: u64) -> Vec<T> {
    let float = T::DTYPE.is_float();
    let key = mix(&[rank as u64, salt, T::DTYPE as u64, op as u64]);
    (0..count)
        .map(|i| {
            let h = mix(&[key, i as u64]);
            let v = if !float {
                h as i64
            } else {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => (h % 33) as i64 - 16,
                    ReduceOp::Prod => [-2, -1, 1, 2][(h % 4) as usize],
                    ReduceOp::Max | ReduceOp::Min => (h % 201) as i64 - 100,
                }
            };
            T::from_i64(v)
        })
        .collect()
}

/// The expected result of all-reducing `input::<T>(op, r, count, salt)` over ranks `0..n`.
pub(crate) fn expected<T: TestElem>(op: ReduceOp, n: usize, count: usize, salt: u64) -> Vec<T> {
    let inputs: Vec<Vec<T>> = (0..n).map(|r| input(op, r, count, salt)).collect();
    let refs: Vec<&[T]> = inputs.iter().map(Vec::as_slice).collect();
    oxccl::internals::reduce::reference(op, &refs)
}

/// Compares a result with the reference: bit for bit, except float Avg within 1 ulp (the division
/// may legitimately round differently in a vectorised kernel). Errors name the first bad indices.
pub(crate) fn check<T: TestElem>(
    what: &str,
    op: ReduceOp,
    got: &[T],
    want: &[T],
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} elements, expected {}",
            got.len(),
            want.len()
        ));
    }
    let tol = if op == ReduceOp::Avg && T::DTYPE.is_float() {
        1
    } else {
        0
    };
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| T::ulps(got[i], want[i]) > tol)
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    let show: Vec<String> = bad
        .iter()
        .take(5)
        .map(|&i| format!("[{i}] got {:?} want {:?}", got[i], want[i]))
        .collect();
    Err(format!(
        "{what}: {} of {} elements wrong: {}",
        bad.len(),
        got.len(),
        show.join(", ")
    ))
}

/// Calls `$f::<T>(args...)` with `T` the Rust type of the `DataType` value `$dt`.
#[macro_export]
macro_rules! with_dtype {
    ($dt:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $dt {
            oxccl::DataType::I8 => $f::<i8>($($arg),*),
            oxccl::DataType::U8 => $f::<u8>($($arg),*),
            oxccl::DataType::I32 => $f::<i32>($($arg),*),
            oxccl::DataType::U32 => $f::<u32>($($arg),*),
            oxccl::DataType::I64 => $f::<i64>($($arg),*),
            oxccl::DataType::U64 => $f::<u64>($($arg),*),
            oxccl::DataType::F16 => $f::<half::f16>($($arg),*),
            oxccl::DataType::F32 => $f::<f32>($($arg),*),
            oxccl::DataType::F64 => $f::<f64>($($arg),*),
            oxccl::DataType::BF16 => $f::<half::bf16>($($arg),*),
        }
    };
}

/// One all-reduce on `comm` of `input::<T>(op, rank, count, salt)`, in or out of place, checked
/// against `want` (the reference, computed by the caller once for all ranks). Out of place, the
/// send buffer must come back unchanged.
pub(crate) fn all_reduce_checked<T: TestElem>(
    comm: &Communicator,
    op: ReduceOp,
    count: usize,
    salt: u64,
    in_place: bool,
    want: &[T],
) -> Result<(), String> {
    let what = format!(
        "rank {} of {}: all_reduce {} {} count {count} {}",
        comm.rank(),
        comm.size(),
        T::DTYPE,
        op,
        if in_place { "in place" } else { "out of place" }
    );
    let send: Vec<T> = input(op, comm.rank(), count, salt);
    if in_place {
        let mut buf = send;
        comm.all_reduce(&mut buf, op)
            .map_err(|e| format!("{what}: {e}"))?;
        check(&what, op, &buf, want)
    } else {
        // Pre-fill the output with garbage that differs from any result.
        let mut recv: Vec<T> = input(ReduceOp::Max, comm.rank() + 1000, count, salt);
        comm.all_reduce_into(&send, &mut recv, op)
            .map_err(|e| format!("{what}: {e}"))?;
        let again: Vec<T> = input(op, comm.rank(), count, salt);
        check(
            &format!("{what} (send buffer)"),
            ReduceOp::Sum,
            &send,
            &again,
        )?;
        check(&what, op, &recv, want)
    }
}

// ---------------------------------------------------------------------------------------------
// Processes as ranks: the test binary re-executes itself, one child per rank.
//
// The parent serves the rendezvous store (as a launcher would: OXCCL_ROOT_EXTERNAL=1) and spawns
// `current_exe() --exact <child test> --nocapture --test-threads=1` with OXCCL_RANK,
// OXCCL_WORLD_SIZE, OXCCL_ROOT, OXCCL_SECRET and `CHILD_MARKER=<child test>`. The child test is a
// normal `#[test]` that returns at once unless the marker names it; when it does, it joins with
// `Communicator::from_env()`, checks its own results and exits non-zero on any failure.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Environment variable naming the child test a re-executed test binary must act in.
pub(crate) const CHILD_MARKER: &str = "OXCCL_TEST_CHILD";

/// Rank/world variables of other launchers, removed from children so that only OXCCL_* apply.
const FOREIGN_LAUNCHER_VARS: [&str; 9] = [
    "RANK",
    "WORLD_SIZE",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_NPROCS",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_RANK",
    "PMI_SIZE",
];

/// True in a child process spawned by [`ProcGroup::spawn`] to run the test named `name`.
pub(crate) fn is_child(name: &str) -> bool {
    std::env::var(CHILD_MARKER).is_ok_and(|v| v == name)
}

/// Runs a child rank's body: on `Err` prints it to stderr and exits with status 1 (so the parent
/// sees a failure even if the harness would not), on `Ok` returns (the harness then exits 0).
pub(crate) fn child_main(f: impl FnOnce() -> Result<(), String>) {
    let rank = std::env::var("OXCCL_RANK").unwrap_or_default();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("CHILD FAILED (rank {rank}): {e}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("CHILD PANICKED (rank {rank})");
            std::process::exit(2);
        }
    }
}

/// One child's captured output: stdout and stderr accumulate here as the reader threads get them.
#[derive(Default)]
struct Captured {
    stdout: Mutex<String>,
    stderr: Mutex<String>,
}

/// A group of child processes acting as ranks 0..n of one communicator, with the store served by
/// this process. Every child is SIGKILLed and reaped when the group is dropped (also when the
/// test panics), so no test leaves processes behind.
pub(crate) struct ProcGroup {
    children: Vec<Option<Child>>,
    status: Vec<Option<ExitStatus>>,
    exited_at: Vec<Option<Instant>>,
    killed: Vec<bool>,
    captured: Vec<Arc<Captured>>,
    /// Each stdout line of every child, as (rank, line), in arrival order.
    lines: mpsc::Receiver<(usize, String)>,
    /// One message per pipe when the reader thread hits EOF, as rank.
    eof: mpsc::Receiver<usize>,
    /// EOFs seen so far per rank (2 = both pipes closed).
    eofs: std::cell::RefCell<Vec<u8>>,
    /// For children added later (`add`).
    line_tx: mpsc::Sender<(usize, String)>,
    eof_tx: mpsc::Sender<usize>,
    world: usize,
    root: std::net::SocketAddr,
    secret: [u8; 16],
    /// Dropped after the children: the store they rendezvous at.
    _store: oxccl::internals::bootstrap::StoreServer,
}

impl ProcGroup {
    /// Spawns `n` ranks running the child test `child_test` of this binary, with `env` added.
    pub(crate) fn spawn(child_test: &str, n: usize, env: &[(&str, &str)]) -> ProcGroup {
        let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).expect("store address");
        let listener = id.take_listener().expect("store listener");
        let store =
            oxccl::internals::bootstrap::StoreServer::start(listener, id.secret).expect("store");
        let (line_tx, lines) = mpsc::channel();
        let (eof_tx, eof) = mpsc::channel();
        let mut g = ProcGroup {
            children: Vec::new(),
            status: Vec::new(),
            exited_at: Vec::new(),
            killed: Vec::new(),
            captured: Vec::new(),
            lines,
            eof,
            eofs: std::cell::RefCell::new(Vec::new()),
            line_tx,
            eof_tx,
            world: n,
            root: id.addr,
            secret: id.secret,
            _store: store,
        };
        for _ in 0..n {
            // On a spawn failure, `g` is dropped by the panic and reaps the ranks already started.
            g.add(child_test, env);
        }
        g
    }

    /// Starts one more child running `child_test` (a process joining later, say) with `env`
    /// added; it is numbered after the others (its `OXCCL_RANK`), and returns that number.
    pub(crate) fn add(&mut self, child_test: &str, env: &[(&str, &str)]) -> usize {
        let rank = self.children.len();
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(&exe);
        // Child entry points are #[ignore]d, so that a plain test run does not count them as
        // passes; run this one on purpose.
        cmd.args([
            "--exact",
            child_test,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MARKER, child_test)
        .env("OXCCL_RANK", rank.to_string())
        .env("OXCCL_WORLD_SIZE", self.world.to_string())
        .env("OXCCL_ROOT", self.root.to_string())
        .env(
            "OXCCL_SECRET",
            oxccl::internals::bootstrap::secret_hex(&self.secret),
        )
        .env("OXCCL_ROOT_EXTERNAL", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for v in FOREIGN_LAUNCHER_VARS {
            cmd.env_remove(v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn a child rank");
        let cap = Arc::new(Captured::default());
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        {
            let (cap, tx, eof_tx) = (cap.clone(), self.line_tx.clone(), self.eof_tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let mut s = cap.stdout.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                    drop(s);
                    let _ = tx.send((rank, line));
                }
                let _ = eof_tx.send(rank);
            });
        }
        {
            let (cap, eof_tx) = (cap.clone(), self.eof_tx.clone());
            std::thread::spawn(move || {
                let mut err = err;
                let mut buf = [0u8; 4096];
                while let Ok(k) = err.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    cap.stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..k]));
                }
                let _ = eof_tx.send(rank);
            });
        }
        self.children.push(Some(child));
        self.captured.push(cap);
        self.status.push(None);
        self.exited_at.push(None);
        self.killed.push(false);
        self.eofs.borrow_mut().push(0);
        rank
    }

    /// Number of ranks.
    pub(crate) fn len(&self) -> usize {
        self.status.len()
    }

    /// The next stdout line of any child, or `None` if none comes before `deadline`.
    pub(crate) fn next_line(&self, deadline: Instant) -> Option<(usize, String)> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(left).ok()
    }

    /// SIGKILLs rank `rank` (if still running) and reaps it.
    pub(crate) fn kill(&mut self, rank: usize) {
        if let Some(mut c) = self.children[rank].take() {
            let _ = c.kill(); // SIGKILL on Unix
            let st = c.wait().expect("reap a killed child");
            self.status[rank] = Some(st);
            self.exited_at[rank] = Some(Instant::now());
            self.killed[rank] = true;
        }
    }

    fn reap_finished(&mut self) {
        for r in 0..self.len() {
            if let Some(c) = &mut self.children[r] {
                if let Some(st) = c.try_wait().expect("try_wait") {
                    self.status[r] = Some(st);
                    self.exited_at[r] = Some(Instant::now());
                    self.children[r] = None;
                }
            }
        }
    }

    /// Waits until every child has exited, or until `deadline`, or (with `stop_on_failure`) until
    /// one exits unsuccessfully; every child still running then is SIGKILLed and reaped. Returns
    /// true if all exited by themselves before the deadline. Polls every 10 ms: a child's exit
    /// has no other portable notification, and polling only bounds how late we notice it.
    pub(crate) fn wait(&mut self, deadline: Instant, stop_on_failure: bool) -> bool {
        loop {
            self.reap_finished();
            let running = self.children.iter().filter(|c| c.is_some()).count();
            if running == 0 {
                return !self.killed.iter().any(|&k| k);
            }
            let failed = self.status.iter().any(|s| s.is_some_and(|s| !s.success()));
            if (stop_on_failure && failed) || Instant::now() >= deadline {
                for r in 0..self.len() {
                    self.kill(r);
                }
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The exit status of `rank` once reaped (`None` while running).
    pub(crate) fn status(&self, rank: usize) -> Option<ExitStatus> {
        self.status[rank]
    }

    /// When `rank` was seen to exit (or was killed).
    pub(crate) fn exited_at(&self, rank: usize) -> Option<Instant> {
        self.exited_at[rank]
    }

    /// True if this group SIGKILLed `rank` (by [`ProcGroup::kill`] or at a deadline).
    pub(crate) fn was_killed(&self, rank: usize) -> bool {
        self.killed[rank]
    }

    /// Waits (up to 5 s) until the reader threads have seen EOF on both pipes of every reaped
    /// child, so that [`ProcGroup::output`] is complete.
    fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut eofs = self.eofs.borrow_mut();
        while (0..self.len()).any(|r| self.children[r].is_none() && eofs[r] < 2) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.eof.recv_timeout(left) {
                Ok(r) => eofs[r] += 1,
                Err(_) => break,
            }
        }
    }

    /// Everything `rank` wrote to stdout and stderr so far.
    pub(crate) fn output(&self, rank: usize) -> String {
        format!(
            "--- stdout:\n{}--- stderr:\n{}",
            self.captured[rank].stdout.lock().unwrap(),
            self.captured[rank].stderr.lock().unwrap()
        )
    }

    /// A report of every rank's exit status and output, for failure messages.
    pub(crate) fn report(&self) -> String {
        self.drain();
        let mut s = String::new();
        for r in 0..self.len() {
            s += &format!(
                "=== rank {r}: {}{}\n{}\n",
                match self.status[r] {
                    Some(st) => st.to_string(),
                    None => "still running".into(),
                },
                if self.killed[r] {
                    " (killed by the test)"
                } else {
                    ""
                },
                self.output(r)
            );
        }
        s
    }

    /// Waits up to `limit` for all ranks and panics with a full report unless every one exited 0.
    pub(crate) fn expect_success(mut self, limit: Duration) {
        let ok = self.wait(Instant::now() + limit, true);
        let all_zero = (0..self.len()).all(|r| self.status[r].is_some_and(|s| s.success()));
        if !ok || !all_zero {
            panic!(
                "{} child ranks did not all exit 0 within {limit:?}:\n{}",
                self.len(),
                self.report()
            );
        }
    }
}

impl Drop for ProcGroup {
    fn drop(&mut self) {
        for r in 0..self.len() {
            self.kill(r);
        }
    }
}
