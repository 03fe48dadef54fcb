//! examples/train_dp.rs: data-parallel training on 1–4 ranks (threads over loopback TCP) follows
//! single-process full-batch training's loss curve to 1e-5, and actually learns.

#[allow(dead_code)]
#[path = "../examples/train_dp.rs"]
mod train_dp;

#[test]
fn data_parallel_matches_single_process() {
    let steps = 60;
    let single = train_dp::train(None, steps).expect("single-process training");
    assert!(
        single[steps - 1] < 0.5 * single[0],
        "the model does not learn: {single:?}"
    );
    for n in [1, 2, 3, 4] {
        let curves = train_dp::train_threads(n, steps).expect("data-parallel training");
        assert_eq!(curves.len(), n);
        for (rank, curve) in curves.iter().enumerate() {
            assert_eq!(curve.len(), steps);
            for (s, (a, b)) in curve.iter().zip(&single).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5,
                    "{n} ranks, rank {rank}, step {s}: loss {a} vs single-process {b}"
                );
            }
        }
    }
}
