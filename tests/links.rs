//! The library links only what it uses: the command-line tools' dependencies (argument parsing,
//! JSON, histograms) stay out of `librsl`, whose dependency tree is the engine's library
//! features and the C ABI's. (The simulator is a feature too; `cargo xtask install` builds the
//! library alone, so CI compiles the engine without it.)

use std::process::Command;

#[test]
fn the_library_links_none_of_the_tools_dependencies() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "-p", "rsl", "-e", "normal", "--prefix", "none", "-f", "{p}", "--offline", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(tree.lines().any(|l| l.starts_with("rsl-engine ")), "the engine is in the tree:\n{tree}");
    for tool in ["clap ", "serde_json ", "hdrhistogram ", "serde "] {
        let found: Vec<&str> = tree.lines().filter(|l| l.starts_with(tool)).collect();
        assert!(found.is_empty(), "the library links {found:?}, a dependency of the tools only");
    }
}
