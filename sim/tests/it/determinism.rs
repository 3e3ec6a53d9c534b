//! The same seed gives the same trace, every time: run seeds twice (also on
//! another thread, as `--seeds` does) and compare the hashes.

use canopy_sim::{RunConfig, run};

fn config(seed: u64) -> RunConfig {
    RunConfig {
        steps: 20,
        ..RunConfig::new(seed)
    }
}

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "the second run is on another thread, as a sweep's are"
)]
fn same_seed_same_trace() {
    for seed in 0..4 {
        let first = run(&config(seed));
        let second = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || run(&config(seed)))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            first.trace.text(),
            second.trace.text(),
            "seed {seed} gave two different traces"
        );
        assert_eq!(first.hash, second.hash);
        assert!(first.trace.entries.len() > 20, "seed {seed} did something");
    }
}

#[test]
fn different_seeds_differ() {
    assert_ne!(run(&config(1)).hash, run(&config(2)).hash);
}

#[test]
fn the_summary_line_has_the_contract_shape() {
    let result = run(&config(3));
    let line = result.summary_line();
    let re = format!(
        "seed=3 trace={} violations={}",
        result.hash,
        result.violations.len()
    );
    assert_eq!(line, re);
    assert_eq!(result.hash.len(), 64);
    assert!(result.hash.chars().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn a_rerun_that_differs_is_reported_with_its_first_different_line() {
    use canopy_sim::cli::determinism_violation;
    let first = run(&config(5));
    let mut second = first.clone();
    assert!(determinism_violation(&first, &second).is_none());

    // Change one event in the middle, as a leak of real time would.
    let i = second.trace.entries.len() / 2;
    second.trace.entries[i].at_ms += 1;
    second.hash = second.trace.hash();
    let violation = determinism_violation(&first, &second).expect("the traces differ");
    assert_eq!(violation.invariant, "determinism");
    assert!(
        violation.message.contains(&format!("line {}", i + 1)),
        "{}",
        violation.message
    );
}
