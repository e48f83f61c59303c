//! The protocol core is sans-IO: no file of `src/paxos/` may name a clock, socket, file,
//! thread, environment, async runtime or ambient random source. Time and seeds are inputs.

#[test]
fn paxos_core_is_sans_io() {
    const FORBIDDEN: [&str; 12] =
        ["std::fs", "std::net", "std::io", "std::time", "std::thread", "std::env", "std::process", "tokio", "Instant", "SystemTime", "rand::", "crate::sim"];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/paxos");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for word in FORBIDDEN {
            assert!(!text.contains(word), "{} mentions {word}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 3, "found only {checked} files in {}", dir.display());
}
