//! examples/elastic.rs: 4 worker processes train; one dies; the survivors shrink and go on; a
//! replacement joins and the job grows back to 4; the final weights equal single-process
//! training (to 1e-9: only the summation order differs).

#[allow(dead_code)]
#[path = "../examples/elastic.rs"]
mod elastic;

use std::process::Command;

/// A worker process of `elastic_training_heals_back_to_full_size` (ignored: run only when that
/// test spawns it with `--include-ignored`).
#[test]
#[ignore = "a worker process, spawned by elastic_training_heals_back_to_full_size"]
fn elastic_worker() {
    if let Err(e) = elastic::worker() {
        panic!("worker: {e}");
    }
}

#[test]
fn elastic_training_heals_back_to_full_size() {
    let exe = std::env::current_exe().expect("current_exe");
    let o = elastic::drive(&|| {
        let mut c = Command::new(&exe);
        // -q: no "test ... " prefix before the worker's first line of output.
        c.args([
            "--exact",
            "elastic_worker",
            "--include-ignored",
            "--nocapture",
            "-q",
        ])
        .env("OXCCL_TIMEOUT_MS", "5000");
        c
    })
    .expect("elastic training");
    eprintln!(
        "max difference from single-process training {:.1e}; replacement start to its first collective {:?}",
        o.max_diff, o.replacement_to_first_collective
    );
    assert_eq!(o.weights.len(), elastic::DIM);
    assert!(o.max_diff <= 1e-9, "weights differ by {}", o.max_diff);
    // The model learnt something (the teacher's weights are not all small).
    assert!(o.weights.iter().any(|w| w.abs() > 0.1), "{:?}", o.weights);
}
