//! `canopy-sim`: many Canopy nodes in one deterministic simulation.
//!
//! The harness (turmoil network behind the node's net seam, simulated clock,
//! seeded RNG, fault and workload generators, invariant checkers) is built in
//! the simulation issue; until then this binary only reports what it is.

fn main() {
    println!(
        "canopy-sim {}: the deterministic simulator is not part of this build",
        canopy_node::version()
    );
    std::process::exit(2);
}
