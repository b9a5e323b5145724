//! The Raft core must stay deterministic: no clock reads, no unseeded randomness, no
//! threads, no async, no I/O. This scans its source for the usual ways in.

use std::fs;
use std::path::Path;

#[test]
fn raft_core_reads_no_clock_and_does_no_io() {
    let forbidden = [
        "Instant::now",
        "SystemTime",
        "thread_rng",
        "rand::rng()",
        "std::thread",
        "std::fs",
        "std::net",
        "async fn",
        ".await",
        "tokio",
        "glommio",
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/raft");
    let mut scanned = 0;
    for entry in fs::read_dir(&dir).expect("src/raft exists") {
        let path = entry.expect("readable dir entry").path();
        let source = fs::read_to_string(&path).expect("readable source");
        scanned += 1;
        for needle in forbidden {
            assert!(!source.contains(needle), "{} uses {needle}", path.display());
        }
    }
    assert!(scanned >= 10, "expected the core's modules, scanned {scanned}");
}
