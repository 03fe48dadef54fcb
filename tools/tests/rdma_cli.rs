//! `oxccl-perf` built with the RDMA feature (`cargo test -p oxccl-tools --features rdma`): it runs
//! over shm/TCP where RDMA is unavailable (one INFO line per rank), and `OXCCL_TRANSPORT=rdma` /
//! `--transport rdma` fail with a one-line explanation (no device here; and a missing library,
//! simulated).
#![cfg(feature = "rdma")]

mod common;

use std::time::Duration;

/// How long one oxccl-perf run may take: one still going then is killed and reaped, and the test
/// fails with what it printed.
const LIMIT: Duration = Duration::from_secs(120);

fn perf(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_oxccl-perf"));
    cmd.args(args);
    for v in [
        "OXCCL_TRANSPORT",
        "OXCCL_DEBUG",
        "OXCCL_IBVERBS_LIB",
        "OXCCL_IB_HCA",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = common::run(cmd, &format!("oxccl-perf {args:?} {env:?}"), LIMIT);
    (out.status.success(), out.stdout, out.stderr)
}

/// Where RDMA is available (a machine with a device), these checks do not apply.
fn rdma_unavailable_here() -> bool {
    let (_, _, err) = perf(
        &["-N", "1", "-b", "8", "-e", "8"],
        &[("OXCCL_DEBUG", "INFO")],
    );
    err.contains("rdma is unavailable")
}

#[test]
fn perf_tool_falls_back_without_rdma_and_refuses_a_forced_rdma_in_one_line() {
    let no_lib = [("OXCCL_IBVERBS_LIB", "/nonexistent/libibverbs.so.1")];
    // No library at all: runs over shm/tcp, saying so once per rank at INFO.
    let (ok, out, err) = perf(
        &["-N", "2", "-b", "8", "-e", "64K"],
        &[no_lib[0], ("OXCCL_DEBUG", "INFO")],
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("Avg bus bandwidth"), "{out}");
    // (Ranks write stderr concurrently, so lines may interleave: count occurrences.)
    assert_eq!(
        err.matches("rdma is unavailable").count(),
        2,
        "one INFO line per rank:\n{err}"
    );
    assert_eq!(err.matches("could not be loaded").count(), 2, "{err}");
    // Forced: a clear error, one line per rank (plus the launcher's summary), by env or flag.
    for (args, env) in [
        (
            vec!["-N", "2"],
            vec![no_lib[0], ("OXCCL_TRANSPORT", "rdma")],
        ),
        (vec!["-N", "2", "--transport", "rdma"], vec![no_lib[0]]),
    ] {
        let (ok, out, err) = perf(&args, &env);
        assert!(!ok, "{out}\n{err}");
        assert_eq!(
            err.matches("OXCCL_TRANSPORT=rdma, but RDMA is unavailable here")
                .count(),
            2,
            "{err}"
        );
        assert_eq!(
            err.matches("libibverbs.so.1 could not be loaded").count(),
            2,
            "{err}"
        );
    }
    // With the system's libibverbs (no device or no kernel support here), the same.
    if rdma_unavailable_here() {
        let (ok, _, err) = perf(
            &["-N", "2", "-b", "8", "-e", "8"],
            &[("OXCCL_TRANSPORT", "rdma")],
        );
        assert!(!ok);
        assert!(err.contains("RDMA is unavailable here"), "{err}");
        let (ok, out, err) = perf(&["-N", "2", "-b", "8", "-e", "1K"], &[]);
        assert!(ok, "{out}\n{err}");
    }
}
