//! End-to-end tests of the `oxccl-perf` binary: it launches its own ranks (`-N`), measures every
//! collective with nccl-tests' conventions, prints the table, checks results, forces algorithms
//! (`-a`), writes JSON and rejects bad flags. Every run has a deadline: a child that outlives it
//! is killed and reaped, and the test fails instead of hanging.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Output;
use serde_json::Value;

const PERF: &str = env!("CARGO_BIN_EXE_oxccl-perf");

/// Runs oxccl-perf with `args`, killing it (and failing the test) after `timeout`.
fn perf(args: &[&str], timeout: Duration) -> Output {
    perf_with(PERF, args, &[], timeout)
}

/// Runs the binary at `exe` (oxccl-perf, or a link to it) with `args` and extra `envs`, killing
/// it (and failing the test) after `timeout`.
fn perf_with(exe: &str, args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Output {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("OXCCL_TIMEOUT_MS", "60000")
        .env_remove("OXCCL_RANK")
        .env_remove("RANK")
        .env_remove("SLURM_PROCID")
        .env_remove("OMPI_COMM_WORLD_RANK")
        .env_remove("PMI_RANK")
        .env_remove("OXCCL_ALGO")
        .env_remove("OXCCL_DETERMINISTIC")
        .envs(envs.iter().copied());
    common::run(cmd, &format!("oxccl-perf {args:?}"), timeout)
}

const LIMIT: Duration = Duration::from_secs(120);

/// The table rows (lines that are not comments), split into columns.
fn rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// What a run's table must show.
struct Expect<'a> {
    /// The collective as the header names it.
    coll: &'a str,
    /// Number of ranks.
    nranks: usize,
    /// The `type` column and its element size.
    dtype: &'a str,
    elem: usize,
    /// The `redop` column.
    op: &'a str,
    /// The `root` column of each pass over the sizes, in order.
    roots: Vec<i64>,
    /// The sweep's sizes, before nccl-tests' rounding to whole elements.
    sizes: Vec<usize>,
}

impl Expect<'_> {
    /// nccl-tests' blocks per size: the n-block buffer for all-gather, reduce-scatter, all-to-all.
    fn blocks(&self) -> usize {
        match self.coll {
            "allgather" | "reducescatter" | "alltoall" => self.nranks,
            _ => 1,
        }
    }

    /// The rows' (size, count, root), in order: count = size / (blocks x element size), sizes too
    /// small for one element left out (except 0), repeats dropped.
    fn rows(&self) -> Vec<(usize, usize, i64)> {
        let unit = self.elem * self.blocks();
        let mut out: Vec<(usize, usize, i64)> = Vec::new();
        for &root in &self.roots {
            let mut last = None;
            for &s in &self.sizes {
                let count = s / unit;
                if (count == 0 && s != 0) || last == Some(count) {
                    continue;
                }
                last = Some(count);
                out.push((count * unit, count, root));
            }
        }
        out
    }
}

/// nccl-tests' bus-bandwidth factor of a collective, for n ranks.
type BusFactor = fn(f64) -> f64;

/// The collectives, with their bus-bandwidth factor.
const COLLECTIVES: [(&str, BusFactor); 7] = [
    ("allreduce", |n| 2.0 * (n - 1.0) / n),
    ("allgather", |n| (n - 1.0) / n),
    ("reducescatter", |n| (n - 1.0) / n),
    ("broadcast", |_| 1.0),
    ("reduce", |_| 1.0),
    ("alltoall", |n| (n - 1.0) / n),
    ("sendrecv", |_| 1.0),
];

fn reduces(coll: &str) -> bool {
    matches!(coll, "allreduce" | "reducescatter" | "reduce")
}

fn rooted(coll: &str) -> bool {
    matches!(coll, "broadcast" | "reduce")
}

/// Asserts a successful run whose table has exactly the rows `e` describes, every one correct:
/// nccl-tests' 13 columns (one more, the algorithm, on every row when it changes with the size),
/// `#wrong` 0, and N/A in place where the collective has no in-place form.
fn assert_rows(o: &Output, e: &Expect<'_>) {
    assert!(
        o.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        o.stdout,
        o.stderr
    );
    let out = &o.stdout;
    let rows = rows(out);
    let got: Vec<(usize, usize, i64)> = rows
        .iter()
        .map(|r| {
            (
                r[0].parse().unwrap(),
                r[1].parse().unwrap(),
                r[4].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, e.rows(), "stdout:\n{out}");
    let per_row = out.contains("# Algorithm: the tuner's pick per size");
    let in_place = e.coll != "sendrecv";
    for r in &rows {
        assert_eq!(r.len(), if per_row { 14 } else { 13 }, "row {r:?}\n{out}");
        assert_eq!((r[2].as_str(), r[3].as_str()), (e.dtype, e.op), "row {r:?}");
        assert_eq!(r[8], "0", "#wrong out of place in row {r:?}");
        let number = |c: usize| {
            let x: f64 = r[c]
                .parse()
                .unwrap_or_else(|_| panic!("column {c} of {r:?}"));
            assert!(x.is_finite() && x >= 0.0, "row {r:?}");
        };
        for c in [5, 6, 7] {
            number(c);
        }
        if in_place {
            assert_eq!(r[12], "0", "#wrong in place in row {r:?}");
            for c in [9, 10, 11] {
                number(c);
            }
        } else {
            assert_eq!(&r[9..13], ["N/A"; 4], "row {r:?}");
        }
    }
    for line in [
        format!("# Collective test starting: oxccl-perf {}", e.coll),
        "# Out of bounds values : 0 OK".into(),
        "# Avg bus bandwidth".into(),
        "# Algorithm: ".into(),
        "#       size         count      type   redop    root     time   algbw   busbw #wrong"
            .into(),
    ] {
        assert!(out.contains(&line), "no {line:?} in\n{out}");
    }
    let devices = out.lines().filter(|l| l.starts_with("#  Rank ")).count();
    assert_eq!(devices, e.nranks, "{out}");
}

/// Asserts a successful run of one type and operator over `sizes`, rootless (all-reduce).
fn assert_table(o: &Output, sizes: &[usize], dtype: &str, op: &str, elem: usize, nranks: usize) {
    assert_rows(
        o,
        &Expect {
            coll: "allreduce",
            nranks,
            dtype,
            elem,
            op,
            roots: vec![-1],
            sizes: sizes.to_vec(),
        },
    );
}

fn sizes_x4(max: usize) -> Vec<usize> {
    std::iter::successors(Some(8usize), |s| Some(s * 4))
        .take_while(|&s| s <= max)
        .collect()
}

#[test]
fn two_ranks_float_sum() {
    let o = perf(
        &[
            "-N",
            "2",
            "-b",
            "8",
            "-e",
            "64K",
            "-f",
            "4",
            "-n",
            "2",
            "-w",
            "1",
            "--watchdog",
            "100",
        ],
        LIMIT,
    );
    assert_table(&o, &sizes_x4(64 << 10), "float", "sum", 4, 2);
    // One `# Using devices` line per rank.
    assert_eq!(
        o.stdout
            .lines()
            .filter(|l| l.starts_with("#  Rank "))
            .count(),
        2,
        "{}",
        o.stdout
    );
}

#[test]
fn three_ranks_int32_max() {
    let args = [
        "allreduce",
        "-N",
        "3",
        "-b",
        "8",
        "-e",
        "64K",
        "-f",
        "4",
        "-n",
        "2",
        "-w",
        "1",
        "-d",
        "int32",
        "-o",
        "max",
        "--watchdog",
        "100",
    ];
    let o = perf(&args, LIMIT);
    assert_table(&o, &sizes_x4(64 << 10), "int32", "max", 4, 3);
}

#[test]
fn every_type_and_op_checks_out() {
    let o = perf(
        &[
            "-N", "2", "-d", "all", "-o", "all", "-b", "8", "-e", "4K", "-f", "8", "-n", "1", "-w",
            "0",
        ],
        LIMIT,
    );
    assert!(
        o.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        o.stdout,
        o.stderr
    );
    let rows = rows(&o.stdout);
    // 10 types x 5 ops; 8 B is too small for nothing, so every type has sizes 8, 64, 512, 4096.
    assert_eq!(rows.len(), 10 * 5 * 4, "{}", o.stdout);
    for r in &rows {
        assert_eq!(
            (r[8].as_str(), r[12].as_str()),
            ("0", "0"),
            "#wrong in row {r:?}"
        );
    }
}

#[test]
fn one_rank_without_launcher() {
    let o = perf(
        &["-b", "8", "-e", "1K", "-f", "4", "-n", "2", "-w", "1"],
        LIMIT,
    );
    assert_table(&o, &sizes_x4(1024), "float", "sum", 4, 1);
}

#[test]
fn bad_flags_fail_with_a_message() {
    for (args, needle) in [
        (&["--bogus"][..], "--bogus"),
        (&["-b", "12X"][..], "12X"),
        (&["-d", "float128"][..], "float128"),
        (&["-o", "xor"][..], "xor"),
        (&["-b", "1M", "-e", "1K"][..], "larger"),
    ] {
        let o = perf(args, Duration::from_secs(30));
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(o.stderr.contains(needle), "{args:?}: stderr {:?}", o.stderr);
        assert!(o.stdout.is_empty(), "{args:?}: stdout {:?}", o.stdout);
    }
    let o = perf(&["-h"], Duration::from_secs(30));
    assert!(o.status.success());
    assert!(o.stdout.contains("--minbytes"));
}

/// Runs `coll` with 2 ranks (root 0) and with 3 (every root in turn), small sizes, and checks
/// the table; the 3-rank run also writes JSON, whose unrounded numbers must give nccl-tests'
/// algbw (size / time) and busbw (algbw x the collective's factor).
fn every_collective(coll: &str) {
    let factor = COLLECTIVES.iter().find(|c| c.0 == coll).unwrap().1;
    for n in [2usize, 3] {
        let path = std::env::temp_dir().join(format!(
            "oxccl-perf-test-{}-{coll}-{n}.json",
            std::process::id()
        ));
        let p = path.to_str().unwrap();
        let ns = n.to_string();
        let mut args = vec![
            coll,
            "-N",
            &ns,
            "-b",
            "8",
            "-e",
            "4K",
            "-f",
            "8",
            "-n",
            "2",
            "-w",
            "1",
            "--watchdog",
            "100",
            "--json",
            p,
        ];
        if n == 3 {
            args.extend(["-r", "-1"]);
        }
        let o = perf(&args, LIMIT);
        let json = std::fs::read_to_string(&path);
        let _ = std::fs::remove_file(&path);
        let roots: Vec<i64> = match (rooted(coll), n) {
            (false, _) => vec![-1],
            (true, 2) => vec![0],
            (true, _) => (0..n as i64).collect(),
        };
        assert_rows(
            &o,
            &Expect {
                coll,
                nranks: n,
                dtype: "float",
                elem: 4,
                op: if reduces(coll) { "sum" } else { "none" },
                roots,
                sizes: vec![8, 64, 512, 4096],
            },
        );
        let text = json.expect("json written");
        let v = serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let top = v.obj();
        assert_eq!(top["collective"].str(), coll);
        assert_eq!(top["nranks"].num(), n as f64);
        assert_eq!(top["wrong"].num(), 0.0);
        let rows = top["rows"].arr();
        assert_eq!(rows.len(), self::rows(&o.stdout).len());
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12);
        for r in rows {
            let r = r.obj();
            let size = r["size"].num();
            assert!(!r["algorithm"].str().is_empty());
            let modes: &[&str] = if coll == "sendrecv" {
                &["oop"]
            } else {
                &["oop", "ip"]
            };
            for &mode in modes {
                let m = r[mode].obj();
                let (t, alg, bus) = (m["time_us"].num(), m["algbw"].num(), m["busbw"].num());
                assert!(t > 0.0, "{coll} {mode}: time {t}");
                assert!(close(alg, size / t / 1e3), "{coll} {mode}: algbw {alg}");
                assert!(
                    close(bus, alg * factor(n as f64)),
                    "{coll} {mode}: busbw {bus}"
                );
                assert_eq!(m["wrong"].num(), 0.0);
            }
            if coll == "sendrecv" {
                assert!(r["ip"].is_null(), "{r:?}");
            }
        }
    }
}

#[test]
fn allreduce_two_and_three_ranks() {
    every_collective("allreduce");
}

#[test]
fn allgather_two_and_three_ranks() {
    every_collective("allgather");
}

#[test]
fn reducescatter_two_and_three_ranks() {
    every_collective("reducescatter");
}

#[test]
fn broadcast_two_and_three_ranks() {
    every_collective("broadcast");
}

#[test]
fn reduce_two_and_three_ranks() {
    every_collective("reduce");
}

#[test]
fn alltoall_two_and_three_ranks() {
    every_collective("alltoall");
}

#[test]
fn sendrecv_two_and_three_ranks() {
    every_collective("sendrecv");
}

#[test]
fn every_collective_every_type_and_op() {
    for (coll, _) in COLLECTIVES {
        let o = perf(
            &[
                coll, "-N", "3", "-d", "all", "-o", "all", "-b", "8", "-e", "1K", "-f", "8", "-n",
                "1", "-w", "0",
            ],
            LIMIT,
        );
        assert!(
            o.status.success(),
            "{coll}: status {:?}\nstdout:\n{}\nstderr:\n{}",
            o.status,
            o.stdout,
            o.stderr
        );
        let rows = rows(&o.stdout);
        let types: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[2].as_str()).collect();
        let ops: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[3].as_str()).collect();
        assert_eq!(types.len(), 10, "{coll}: {types:?}");
        if reduces(coll) {
            assert_eq!(ops.len(), 5, "{coll}: {ops:?}");
        } else {
            assert_eq!(ops.into_iter().collect::<Vec<_>>(), ["none"], "{coll}");
        }
        for r in &rows {
            assert_eq!(r[8], "0", "{coll}: #wrong in row {r:?}");
            let ip = if coll == "sendrecv" { "N/A" } else { "0" };
            assert_eq!(r[12], ip, "{coll}: #wrong in row {r:?}");
        }
    }
}

/// `-a NAME` reaches the library: the header names the algorithm, the rows keep nccl-tests' 13
/// columns, every result checks out, and the library's own log (OXCCL_DEBUG=INFO: "<collective>
/// of <n> bytes: algorithm <name>") shows that algorithm ran, for every algorithm of every
/// collective, all-reduce and broadcast included, over 3 ranks (not a power of two).
#[test]
fn algo_forces_every_algorithm() {
    use oxccl::Collective as C;
    let lib = [
        ("allreduce", C::AllReduce),
        ("broadcast", C::Broadcast),
        ("allgather", C::AllGather),
        ("reducescatter", C::ReduceScatter),
        ("reduce", C::Reduce),
        ("alltoall", C::AllToAll),
        ("sendrecv", C::Send),
    ];
    for (coll, c) in lib {
        assert!(!c.algorithms().is_empty());
        for a in c.algorithms() {
            let name = a.name();
            let o = perf_with(
                PERF,
                &[
                    coll, "-N", "3", "-b", "8", "-e", "64K", "-f", "8", "-n", "2", "-w", "1", "-a",
                    name,
                ],
                &[("OXCCL_DEBUG", "INFO")],
                LIMIT,
            );
            let what = format!("{coll} -a {name}");
            assert!(
                o.status.success(),
                "{what}: status {:?}\nstdout:\n{}\nstderr:\n{}",
                o.status,
                o.stdout,
                o.stderr
            );
            let header = format!("# Algorithm: {name}");
            assert!(
                o.stdout.lines().any(|l| l == header),
                "{what}: no {header:?} in\n{}",
                o.stdout
            );
            let rows = rows(&o.stdout);
            assert!(!rows.is_empty(), "{what}");
            for r in &rows {
                assert_eq!(r.len(), 13, "{what}: row {r:?}");
                assert_eq!(r[8], "0", "{what}: row {r:?}");
            }
            let ran: Vec<&str> = o
                .stderr
                .lines()
                .filter(|l| l.contains(&format!(" {} of ", c.name())) && l.contains("algorithm"))
                .collect();
            assert!(
                !ran.is_empty(),
                "{what}: no log of the algorithm:\n{}",
                o.stderr
            );
            for l in ran {
                assert!(l.ends_with(&format!("algorithm {name}")), "{what}: {l}");
            }
        }
    }
}

#[test]
fn unknown_collective_or_algorithm_fails_clearly() {
    for (args, needle) in [
        (&["gather"][..], "unknown collective 'gather'"),
        (&["all_gatherv_perf", "-N", "2"][..], "unknown collective"),
        (&["-a", "warp"][..], "unknown algorithm 'warp'"),
        (
            &["broadcast", "-a", "warp", "-N", "2"][..],
            "broadcast has chain, tree",
        ),
        (
            &["broadcast", "-a", "ring"][..],
            "'ring' does not implement broadcast",
        ),
        (
            &["alltoall", "-a", "bruck", "-N", "2"][..],
            "does not implement alltoall",
        ),
        (&["sendrecv", "-N", "1"][..], "at least 2 ranks"),
        (&["reduce", "-N", "2", "-r", "2"][..], "root 2"),
    ] {
        let o = perf(args, Duration::from_secs(30));
        assert!(!o.status.success(), "{args:?} succeeded");
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(o.stderr.contains(needle), "{args:?}: stderr {:?}", o.stderr);
        assert!(o.stdout.is_empty(), "{args:?}: stdout {:?}", o.stdout);
    }
    // -h lists every collective and its algorithms.
    let o = perf(&["-h"], Duration::from_secs(30));
    for (coll, _) in COLLECTIVES {
        assert!(o.stdout.contains(coll), "{coll} not in -h");
    }
    assert!(o.stdout.contains("ring, tree, rhd, direct"), "{}", o.stdout);
}

/// A wrong element is counted on the rank that sees it, summed into `#wrong`, reported in the
/// footer and turns into exit status 2 (the ranks spoil one element of each checked result on
/// purpose here).
#[test]
fn wrong_results_are_counted_and_fail_the_run() {
    for (coll, checkers) in [("reducescatter", "3"), ("reduce", "1"), ("sendrecv", "3")] {
        let o = perf_with(
            PERF,
            &[
                coll, "-N", "3", "-b", "8", "-e", "512", "-f", "8", "-n", "1", "-w", "0",
            ],
            &[("OXCCL_PERF_INJECT_WRONG", "1")],
            LIMIT,
        );
        assert_eq!(
            o.status.code(),
            Some(2),
            "{coll}\n{}\n{}",
            o.stdout,
            o.stderr
        );
        assert!(o.stdout.contains("FAILED"), "{}", o.stdout);
        assert!(o.stdout.contains("# Errors: "), "{}", o.stdout);
        for r in rows(&o.stdout) {
            if r[1] == "0" {
                continue;
            }
            assert_eq!(r[8], checkers, "{coll}: row {r:?}");
            let ip = if coll == "sendrecv" { "N/A" } else { checkers };
            assert_eq!(r[12], ip, "{coll}: row {r:?}");
        }
    }
}

/// nccl-tests' binary names work as the collective argument and as the program's own name (a
/// link named `reduce_scatter_perf`).
#[test]
fn nccl_tests_names_pick_the_collective() {
    let small = ["-N", "2", "-b", "64", "-e", "64", "-n", "1", "-w", "0"];
    let mut args = vec!["all_gather_perf"];
    args.extend(small);
    let o = perf(&args, LIMIT);
    assert!(o.status.success(), "{}\n{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("oxccl-perf allgather"), "{}", o.stdout);

    let dir = std::env::temp_dir().join(format!("oxccl-perf-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("reduce_scatter_perf");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(PERF, &link).unwrap();
    let o = perf_with(link.to_str().unwrap(), &small, &[], LIMIT);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(o.status.success(), "{}\n{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("oxccl-perf reducescatter"),
        "{}",
        o.stdout
    );
    assert_eq!(rows(&o.stdout)[0][3], "sum");
}

#[test]
fn watchdog_kills_and_reaps_every_rank() {
    let t0 = Instant::now();
    let o = perf(
        &[
            "-N",
            "2",
            "-b",
            "64M",
            "-e",
            "64M",
            "-n",
            "100000",
            "-w",
            "0",
            "-c",
            "0",
            "--watchdog",
            "2",
        ],
        LIMIT,
    );
    assert!(!o.status.success());
    assert!(o.stderr.contains("watchdog"), "stderr: {}", o.stderr);
    assert!(t0.elapsed() < Duration::from_secs(60));
}

/// The pids of `pid`'s children (Linux /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// The OXCCL_RANK a process was started with.
fn rank_of(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"OXCCL_RANK="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Whether `pid` is still running (gone or a zombie both count as ended).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next()),
            Some("Z" | "X")
        ),
        Err(_) => false,
    }
}

/// A child process that is killed and reaped when dropped (a failed assertion included).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // After a successful wait these do nothing (the status is known; no signal is sent).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a long `-N k` run (stdout discarded) and waits until its k ranks exist.
fn start_long_run(k: usize, stderr: Stdio) -> (Reaped, Vec<u32>) {
    let n = k.to_string();
    let spawned = Command::new(PERF)
        .args([
            "-N",
            &n,
            "-b",
            "1M",
            "-e",
            "1M",
            "-n",
            "1000000",
            "-w",
            "0",
            "-c",
            "0",
            "--watchdog",
            "100",
        ])
        .env("OXCCL_TIMEOUT_MS", "60000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn();
    let child = Reaped(spawned.expect("spawn oxccl-perf"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let kids = children_of(child.0.id());
        if kids.len() == k && kids.iter().all(|&p| rank_of(p).is_some()) {
            return (child, kids);
        }
        assert!(Instant::now() < deadline, "ranks did not start: {kids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_dead_rank_takes_the_run_down_and_is_named() {
    let (mut child, ranks) = start_long_run(3, Stdio::piped());
    let victim = *ranks
        .iter()
        .find(|&&p| rank_of(p).as_deref() == Some("1"))
        .expect("rank 1");
    std::thread::sleep(Duration::from_millis(300));
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "oxccl-perf did not end after rank 1 was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(
        err.contains("rank 1 was killed by signal 9"),
        "stderr: {err}"
    );
    for p in ranks {
        assert!(!running(p), "rank pid {p} still running");
    }
}

#[test]
fn ranks_do_not_outlive_a_killed_launcher() {
    let (mut child, ranks) = start_long_run(2, Stdio::null());
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ranks.iter().any(|&p| running(p)) {
        if Instant::now() >= deadline {
            for &p in &ranks {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
            }
            panic!("ranks {ranks:?} outlived their launcher");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn json_report_parses() {
    let path = std::env::temp_dir().join(format!("oxccl-perf-test-{}.json", std::process::id()));
    let p = path.to_str().unwrap();
    let o = perf(
        &[
            "-N", "2", "-b", "8", "-e", "1K", "-f", "4", "-n", "2", "-w", "1", "-o", "all",
            "--json", p,
        ],
        LIMIT,
    );
    assert!(
        o.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    let text = std::fs::read_to_string(&path).expect("json written");
    let _ = std::fs::remove_file(&path);
    let v = serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let top = v.obj();
    assert_eq!(top["collective"].str(), "allreduce");
    assert_eq!(top["nranks"].num(), 2.0);
    assert_eq!(top["maxbytes"].num(), 1024.0);
    assert_eq!(top["iters"].num(), 2.0);
    assert_eq!(top["wrong"].num(), 0.0);
    let rows = top["rows"].arr();
    assert_eq!(rows.len(), 5 * sizes_x4(1024).len());
    for r in rows {
        let r = r.obj();
        for k in ["size", "count", "root"] {
            r[k].num();
        }
        assert_eq!(r["type"].str(), "float");
        for mode in ["oop", "ip"] {
            let m = r[mode].obj();
            assert!(m["time_us"].num() >= 0.0);
            assert!(m["algbw"].num() >= 0.0 && m["busbw"].num() >= 0.0);
            assert_eq!(m["wrong"].num(), 0.0);
        }
    }
    // The table and the JSON tell the same story.
    assert_eq!(rows.len(), self::rows(&o.stdout).len());
}

/// Typed access to the report's JSON (serde_json's `Value`), failing the test on a wrong type.
trait Typed {
    fn obj(&self) -> &serde_json::Map<String, Value>;
    fn arr(&self) -> &[Value];
    fn num(&self) -> f64;
    fn str(&self) -> &str;
}

impl Typed for Value {
    fn obj(&self) -> &serde_json::Map<String, Value> {
        self.as_object()
            .unwrap_or_else(|| panic!("expected an object, got {self}"))
    }
    fn arr(&self) -> &[Value] {
        self.as_array()
            .unwrap_or_else(|| panic!("expected an array, got {self}"))
    }
    fn num(&self) -> f64 {
        self.as_f64()
            .unwrap_or_else(|| panic!("expected a number, got {self}"))
    }
    fn str(&self) -> &str {
        self.as_str()
            .unwrap_or_else(|| panic!("expected a string, got {self}"))
    }
}
