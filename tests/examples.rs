//! Runs the three examples of `examples/` against this build: the Rust one with
//! `cargo run --example ring`, the C one compiled against `include/rsl_ffi.h` and the C++ one
//! against `include/rsl.h`, both linked with this build's `librsl.so`. Each starts a 3-replica
//! ring on 127.0.0.1 and must print the same state for every replica. (`cargo xtask
//! test-install` builds the C and C++ ones against an installed copy instead.) Also checks
//! that the headers carry the package version.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What every replica of an example prints once it holds the replicated requests.
const STATE: &str = "state [hello, replicated, world]";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo profile this test was built with, and its directory (this binary is
/// `target/<dir>/deps/examples-*`).
fn profile() -> (String, PathBuf) {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile dir>/deps").to_path_buf();
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    (profile, dir)
}

/// Builds `librsl.so` in this test's profile (`target/<profile dir>`, beside the
/// `librsl.so.<major>` link that programs look for); returns that directory.
fn library() -> PathBuf {
    let (profile, dir) = profile();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--lib", "-p", "rsl", "--profile", &profile])
        .current_dir(root())
        .status()
        .expect("run cargo build -p rsl");
    assert!(status.success(), "cargo build -p rsl failed");
    let soname = format!("librsl.so.{}", env!("CARGO_PKG_VERSION_MAJOR"));
    assert!(dir.join(&soname).is_file(), "{} has no {soname}", dir.display());
    dir
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}{}", out.status, text(&out.stdout), text(&out.stderr));
    out
}

/// The example's output names one primary and the same state on each of the three replicas.
fn check_ring(out: &Output) {
    let text = String::from_utf8_lossy(&out.stdout);
    let states = text.lines().filter(|l| l.ends_with(STATE)).count();
    assert_eq!(states, 3, "every replica prints `{STATE}`:\n{text}");
    assert_eq!(text.lines().filter(|l| l.ends_with("is primary")).count(), 1, "one primary:\n{text}");
}

/// Compiles `source` with `compiler` and `flags` against `include/` and this build's library.
fn compile(compiler: &str, flags: &[&str], source: &str, exe: &Path) {
    let lib = library();
    let mut cmd = Command::new(compiler);
    cmd.args(flags).args(["-Wall", "-Wextra", "-Werror"]).arg("-I").arg(root().join("include")).arg(root().join(source));
    cmd.arg("-L").arg(&lib).arg("-lrsl").arg(format!("-Wl,-rpath,{}", lib.display())).arg("-o").arg(exe);
    run(&mut cmd);
}

#[test]
fn rust_example_starts_a_ring() {
    let (profile, _) = profile();
    check_ring(&run(Command::new(env!("CARGO")).args(["run", "--quiet", "--example", "ring", "--profile", &profile]).current_dir(root())));
}

#[test]
fn c_example_starts_a_ring() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = tmp.path().join("ring");
    compile(&std::env::var("CC").unwrap_or_else(|_| "cc".into()), &["-std=c11"], "examples/c/ring.c", &exe);
    check_ring(&run(Command::new(&exe).arg(tmp.path())));
}

#[test]
fn cpp_example_starts_a_ring() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = tmp.path().join("ring");
    compile(&std::env::var("CXX").unwrap_or_else(|_| "g++".into()), &["-std=c++17"], "examples/cpp/ring.cpp", &exe);
    check_ring(&run(Command::new(&exe).arg(tmp.path())));
}

/// `RSL_VERSION_MAJOR/MINOR/PATCH` in `rsl_ffi.h` (generated) and `rsl.h` (written by hand)
/// are the package version: bumping the version means editing `rsl.h` too.
#[test]
fn headers_carry_the_package_version() {
    let version = [env!("CARGO_PKG_VERSION_MAJOR"), env!("CARGO_PKG_VERSION_MINOR"), env!("CARGO_PKG_VERSION_PATCH")];
    for header in ["rsl.h", "rsl_ffi.h"] {
        let text = std::fs::read_to_string(root().join("include").join(header)).expect("the header");
        for (part, value) in ["MAJOR", "MINOR", "PATCH"].iter().zip(version) {
            let line = format!("#define RSL_VERSION_{part} {value}\n");
            assert!(text.contains(&line), "include/{header} lacks `{}`", line.trim());
        }
    }
}
