//! `cargo xtask test-install`: proves that a service builds and runs against an installed
//! copy alone. It installs into a temporary prefix, checks the layout (headers with the
//! version macros, the SONAME, the symlinks), then moves the checkout's `target/` away, so
//! that nothing can come from the build tree, and outside the checkout
//! - builds `examples/cpp` with CMake (`find_package(rsl)`, `rsl::rsl`) and runs it;
//! - builds `examples/c/ring.c` with `pkg-config --cflags --libs rsl` and runs it;
//!
//! then puts `target/` back, whatever happened. Each example starts a 3-replica ring and
//! must print the same replicated state for every replica.
//!
//! `target/` is renamed within its parent (`target.xtask-away`), which is instant and keeps
//! the build. If this task is killed before it can rename it back, the next run puts it back
//! when it can, or stops and says how.

use crate::install::{self, HEADERS, MAJOR, MINOR, PATCH, VERSION};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What every replica of an example prints once it holds the replicated requests.
const STATE: &str = "state [hello, replicated, world]";

pub fn run(profile: &str) -> Result<(), String> {
    for tool in ["cmake", "pkg-config", "cc", "readelf"] {
        if !on_path(tool) {
            return Err(format!("`{tool}` is not installed (Debian: apt-get install cmake pkg-config build-essential)"));
        }
    }
    let target = install::target_dir()?;
    restore_moved(&target)?;
    let tmp = tempfile::Builder::new().prefix("rsl-install-test").tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let prefix = install::run(&tmp.path().join("prefix"), profile)?;
    check_layout(&prefix)?;
    let sources = tmp.path().join("examples");
    copy_examples(&sources)?;

    let away = Away::move_target(&target)?;
    let result = build_and_run(&prefix, &sources, tmp.path());
    away.restore()?;
    result?;
    println!("test-install: the C++ (CMake) and C (pkg-config) examples built and ran against {}", prefix.display());
    println!("test-install: 2 passed, 0 failed");
    Ok(())
}

fn build_and_run(prefix: &Path, sources: &Path, work: &Path) -> Result<(), String> {
    let cpp = build_cpp(prefix, &sources.join("cpp"), &work.join("build-cpp"))?;
    check_binary(&cpp, prefix)?;
    run_example(&cpp, &work.join("data-cpp"))?;
    let c = build_c(prefix, &sources.join("c/ring.c"), &work.join("ring-c"))?;
    check_binary(&c, prefix)?;
    run_example(&c, &work.join("data-c"))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Runs `cmd` to completion; its output, or an error with everything it printed.
fn output(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

fn stdout(cmd: &mut Command) -> Result<String, String> {
    output(cmd).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// The headers define the version; the library is named and linked by its SONAME.
fn check_layout(prefix: &Path) -> Result<(), String> {
    for header in ["rsl.h", "rsl_ffi.h"] {
        let text = fs::read_to_string(prefix.join("include").join(header)).map_err(|e| format!("{header}: {e}"))?;
        for (name, value) in [("MAJOR", MAJOR), ("MINOR", MINOR), ("PATCH", PATCH)] {
            let line = format!("#define RSL_VERSION_{name} {value}\n");
            ensure(text.contains(&line), || format!("the installed {header} lacks `{}`", line.trim()))?;
        }
    }
    ensure(HEADERS.iter().all(|h| prefix.join("include").join(h).is_file()), || "a header is missing".into())?;
    let lib = prefix.join("lib");
    let dynamic = stdout(Command::new("readelf").arg("-d").arg(lib.join(format!("librsl.so.{VERSION}"))))?;
    let soname = format!("Library soname: [librsl.so.{MAJOR}]");
    ensure(dynamic.contains(&soname), || format!("librsl.so.{VERSION} lacks `{soname}`:\n{dynamic}"))?;
    ensure(fs::canonicalize(lib.join("librsl.so")).ok() == Some(lib.join(format!("librsl.so.{VERSION}"))), || {
        "lib/librsl.so does not lead to the versioned library".into()
    })
}

/// The examples, copied out of the checkout (so no include can find a file next to them).
fn copy_examples(dest: &Path) -> Result<(), String> {
    let root = install::workspace_root().join("examples");
    for file in ["cpp/ring.cpp", "cpp/CMakeLists.txt", "c/ring.c"] {
        let to = dest.join(file);
        fs::create_dir_all(to.parent().expect("a directory")).map_err(|e| format!("{}: {e}", dest.display()))?;
        fs::copy(root.join(file), &to).map_err(|e| format!("cannot copy examples/{file}: {e}"))?;
    }
    Ok(())
}

/// The build environment: the prefix is the only place to find rsl, and nothing from cargo's
/// environment (its `LD_LIBRARY_PATH` names `target/`) reaches the tools or the examples.
fn isolated(program: impl AsRef<std::ffi::OsStr>, prefix: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in ["LD_LIBRARY_PATH", "LIBRARY_PATH", "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "CMAKE_PREFIX_PATH"] {
        cmd.env_remove(var);
    }
    cmd.env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"));
    cmd
}

fn build_cpp(prefix: &Path, source: &Path, build: &Path) -> Result<PathBuf, String> {
    println!("test-install: cmake, find_package(rsl) from {}", prefix.display());
    output(isolated("cmake", prefix).arg("-S").arg(source).arg("-B").arg(build).arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())))?;
    let cache = fs::read_to_string(build.join("CMakeCache.txt")).map_err(|e| format!("CMakeCache.txt: {e}"))?;
    let found = format!("rsl_DIR:PATH={}", prefix.join("lib/cmake/rsl").display());
    ensure(cache.lines().any(|l| l == found), || format!("CMake did not take rsl from the prefix (expected `{found}`)"))?;
    output(isolated("cmake", prefix).arg("--build").arg(build))?;
    Ok(build.join("ring"))
}

fn build_c(prefix: &Path, source: &Path, exe: &Path) -> Result<PathBuf, String> {
    println!("test-install: cc with pkg-config --cflags --libs rsl");
    let flags = stdout(isolated("pkg-config", prefix).args(["--cflags", "--libs", "rsl"]))?;
    let libdir = stdout(isolated("pkg-config", prefix).args(["--variable=libdir", "rsl"]))?;
    ensure(libdir.trim() == prefix.join("lib").display().to_string(), || format!("rsl.pc's libdir is {libdir}"))?;
    let mut cc = isolated("cc", prefix);
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror"]).arg(source).args(flags.split_whitespace());
    cc.arg(format!("-Wl,-rpath,{}", libdir.trim())).arg("-o").arg(exe);
    output(&mut cc)?;
    Ok(exe.to_path_buf())
}

/// `exe` needs `librsl.so.<major>` and finds it in the prefix.
fn check_binary(exe: &Path, prefix: &Path) -> Result<(), String> {
    let dynamic = stdout(Command::new("readelf").arg("-d").arg(exe))?;
    let needed = format!("Shared library: [librsl.so.{MAJOR}]");
    ensure(dynamic.contains(&needed), || format!("{} lacks `{needed}`:\n{dynamic}", exe.display()))?;
    let lib = prefix.join("lib").display().to_string();
    ensure(dynamic.lines().any(|l| (l.contains("(RUNPATH)") || l.contains("(RPATH)")) && l.contains(&lib)), || {
        format!("{} has no run path to {lib}:\n{dynamic}", exe.display())
    })
}

/// Runs an example (its ring's files in `data`); every replica must print the state.
fn run_example(exe: &Path, data: &Path) -> Result<(), String> {
    fs::create_dir_all(data).map_err(|e| format!("{}: {e}", data.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg(data).env_remove("LD_LIBRARY_PATH");
    let out = stdout(&mut cmd)?;
    print!("{out}");
    let replicas = out.lines().filter(|l| l.ends_with(STATE)).count();
    ensure(replicas == 3, || format!("{} printed `{STATE}` for {replicas} replicas, not 3", exe.display()))
}

/// The checkout's `target/`, moved aside while the examples build and run.
struct Away {
    target: PathBuf,
    moved: PathBuf,
    restored: bool,
}

fn moved_name(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".xtask-away");
    target.with_file_name(name)
}

/// Puts back a `target/` that a killed run left moved.
fn restore_moved(target: &Path) -> Result<(), String> {
    let moved = moved_name(target);
    if !moved.exists() {
        return Ok(());
    }
    ensure(!target.exists(), || {
        let (t, m) = (target.display(), moved.display());
        format!("an interrupted test-install left the build in {m}: put it back with `rm -rf {t} && mv {m} {t}`")
    })?;
    println!("test-install: putting back {} left by an interrupted run", target.display());
    fs::rename(&moved, target).map_err(|e| format!("cannot rename {} back: {e}", moved.display()))
}

impl Away {
    fn move_target(target: &Path) -> Result<Away, String> {
        let moved = moved_name(target);
        fs::rename(target, &moved).map_err(|e| format!("cannot move {} away: {e}", target.display()))?;
        println!("test-install: moved {} to {}", target.display(), moved.display());
        Ok(Away { target: target.to_path_buf(), moved, restored: false })
    }

    fn restore(mut self) -> Result<(), String> {
        self.restored = true;
        fs::rename(&self.moved, &self.target).map_err(|e| format!("cannot put {} back: {e}", self.target.display()))
    }
}

impl Drop for Away {
    /// A panic still puts `target/` back.
    fn drop(&mut self) {
        if !self.restored {
            let _ = fs::rename(&self.moved, &self.target);
        }
    }
}
