//! The protocol core is sans-IO: no file under `src/paxos/` may name a clock, socket, file,
//! thread, environment, async runtime or ambient random source. Time and seeds are inputs.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn paxos_core_is_sans_io() {
    const FORBIDDEN: [&str; 12] = [
        "std::fs",
        "std::net",
        "std::io",
        "std::time",
        "std::thread",
        "std::env",
        "std::process",
        "tokio",
        "Instant",
        "SystemTime",
        "rand::",
        "crate::sim",
    ];
    let mut files = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/paxos"), &mut files);
    assert!(files.len() >= 6, "found only {} files", files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        // The unit tests at the end may build addresses for member sets.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for word in FORBIDDEN {
            assert!(!code.contains(word), "{} mentions {word}", path.display());
        }
    }
}
