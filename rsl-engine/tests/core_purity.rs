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
        // Unit tests may build addresses for member sets; everything else is checked, code
        // after a test module included.
        let code = without_test_items(&text);
        for word in FORBIDDEN.iter().chain(more) {
            assert!(!code.contains(word), "{} mentions {word}", path.display());
        }
    }
}

/// `text` without the items marked `#[cfg(test)]`: each ends at its first `;` outside braces
/// or at the brace closing its body.
fn without_test_items(text: &str) -> String {
    let mut kept = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        let item = &rest[at..];
        let mut depth = 0usize;
        let end = item
            .char_indices()
            .find(|&(_, c)| match c {
                '{' => {
                    depth += 1;
                    false
                }
                '}' => {
                    depth -= 1;
                    depth == 0
                }
                ';' => depth == 0,
                _ => false,
            })
            .map_or(item.len(), |(i, _)| i + 1);
        rest = &item[end..];
    }
    kept.push_str(rest);
    kept
}

#[test]
fn test_items_are_cut_and_what_follows_them_is_kept() {
    let text = "use a;\n#[cfg(test)]\nuse std::net::X;\nfn f() {}\n#[cfg(test)]\nmod tests {\n    fn g() { std::fs::read(); }\n}\nfn h() { std::time::x(); }\n";
    let code = without_test_items(text);
    assert!(!code.contains("std::net") && !code.contains("std::fs"), "{code}");
    assert!(code.contains("fn f() {}") && code.contains("std::time"), "{code}");
}

#[test]
fn paxos_core_is_sans_io() {
    check("paxos", &["std::net"], 6);
}

#[test]
fn the_driver_is_sans_io() {
    check("driver", &[], 1);
}
