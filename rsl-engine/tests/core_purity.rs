//! The protocol core is sans-IO: no file under `src/paxos/` may name a clock, socket, file,
//! thread, environment, async runtime or ambient random source. Time and seeds are inputs.
//! Nor may the driver (`src/driver/`) that carries out the core's actions for both the runtime
//! and the simulator: its host does the I/O. It may name addresses (values, not sockets), and
//! neither it nor the core may reach into the runtime or the simulator.

use std::path::{Path, PathBuf};

const FORBIDDEN: [&str; 13] = [
    "std::fs",
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
    "crate::runtime",
    "TcpStream",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(path);
        }
    }
}

/// The files under `src/<dir>`, checked against `FORBIDDEN` and `more`.
fn check(dir: &str, more: &[&str], at_least: usize) {
    let mut files = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir), &mut files);
    assert!(files.len() >= at_least, "found only {} files", files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        // The unit tests at the end may build addresses for member sets.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for word in FORBIDDEN.iter().chain(more) {
            assert!(!code.contains(word), "{} mentions {word}", path.display());
        }
    }
}

#[test]
fn paxos_core_is_sans_io() {
    check("paxos", &["std::net"], 6);
}

#[test]
fn the_driver_is_sans_io() {
    check("driver", &[], 1);
}
