//! `cargo xtask test-install`: proves that a service builds and runs against an installed
//! copy alone. It installs into a temporary prefix, checks the layout (headers with the
//! version macros, the SONAME, the symlinks, the libraries copies), then outside the checkout
//! - builds `examples/cpp` with CMake (`find_package(rsl)`, `rsl::rsl`) and runs it;
//! - builds `examples/c/ring.c` with `pkg-config --cflags --libs rsl` and runs it.
//!
//! Each example starts a 3-replica ring and must print the same replicated state for every
//! replica.
//!
//! Nothing may come from the checkout, and the build tree is never disturbed (another cargo or
//! rust-analyzer may be using it; an earlier version renamed `target/` away meanwhile, which
//! such a build undid). Two things show it instead:
//! - Where the system lets this user make a private mount namespace (`unshare --mount
//!   --map-root-user`), the tools and the examples run in one in which empty directories
//!   cover the checkout and its target directory: for them the build tree is not there.
//! - Always, whether or not they could be hidden: the tools and the examples run with a
//!   scrubbed environment (a `PATH` without the checkout, nothing else), from the temporary
//!   directory; CMake took `rsl_DIR` from the prefix and pkg-config's `-I`/`-L` flags are in
//!   it; no file of the builds (CMake's cache and flag files, the executables with their
//!   run paths) names the checkout or the target directory; each executable needs
//!   `librsl.so.<major>`; the loader's trace of each run (`LD_DEBUG=libs`) shows it load
//!   that library from the prefix and never look in the checkout; and the installed library
//!   is a file of its own (no link into `target/`).

use crate::install::{self, HEADERS, MAJOR, MINOR, PATCH, VERSION};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::MetadataExt;
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
    report_moved_away(&target);
    let checkout = Checkout::new(&install::workspace_root(), &target);
    let tmp = tempfile::Builder::new().prefix("rsl-install-test").tempdir().map_err(|e| format!("temp dir: {e}"))?;
    ensure(!checkout.holds(tmp.path()), || format!("the temporary directory {} is in the checkout: set TMPDIR", tmp.path().display()))?;
    let prefix = install::run(&tmp.path().join("prefix"), profile)?;
    check_layout(&prefix)?;
    check_installed_alone(&prefix, &checkout)?;
    let sources = tmp.path().join("examples");
    copy_examples(&sources)?;

    let sandbox = Sandbox::new(&checkout, &tmp.path().join("empty"))?;
    let tools = Tools { sandbox: &sandbox, checkout: &checkout, prefix: &prefix, work: tmp.path() };
    let cpp = tools.build_cpp(&sources.join("cpp"), &tmp.path().join("build-cpp"))?;
    tools.run_example(&cpp, &tmp.path().join("data-cpp"))?;
    let c = tools.build_c(&sources.join("c/ring.c"), &tmp.path().join("build-c"))?;
    tools.run_example(&c, &tmp.path().join("data-c"))?;
    println!("test-install: the C++ (CMake) and C (pkg-config) examples built and ran against {}", prefix.display());
    println!("test-install: {}", sandbox.describe());
    println!("test-install: 2 passed, 0 failed");
    Ok(())
}

/// Versions of this task before it left the build tree alone renamed `target/` to
/// `target.xtask-away` while it ran, and one killed midway left the build there. It is
/// reported and left alone: whether it or the `target/` built since is the one to keep is
/// for its owner to say.
fn report_moved_away(target: &Path) {
    if let Some(warning) = moved_away(target) {
        eprintln!("test-install: warning: {warning}");
    }
}

fn moved_away(target: &Path) -> Option<String> {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".xtask-away");
    let moved = target.with_file_name(name);
    moved.exists().then(|| {
        format!(
            "{} is a build directory an interrupted test-install of an earlier version moved \
             away from {}; this task no longer moves it and leaves it alone: delete it, or put it back in place of {}",
            moved.display(),
            target.display(),
            target.display()
        )
    })
}

/// The directories nothing may come from: the checkout and its target directory.
struct Checkout {
    dirs: Vec<PathBuf>,
}

impl Checkout {
    fn new(root: &Path, target: &Path) -> Checkout {
        let real = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let (root, target) = (real(root), real(target));
        let dirs = if target.starts_with(&root) { vec![root] } else { vec![root, target] };
        Checkout { dirs }
    }

    /// Whether `path` is inside the checkout or the target directory.
    fn holds(&self, path: &Path) -> bool {
        let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.dirs.iter().any(|d| path.starts_with(d))
    }

    /// Whether `bytes` name the checkout or the target directory.
    fn named_in(&self, bytes: &[u8]) -> bool {
        self.dirs.iter().any(|d| {
            let needle = d.as_os_str().as_encoded_bytes();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }

    /// The files under `dir` (symlinks aside) whose contents name the checkout.
    fn named_under(&self, dir: &Path) -> Result<Vec<PathBuf>, String> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
                let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
                let kind = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?.file_type();
                if kind.is_dir() {
                    pending.push(path);
                } else if kind.is_file() && self.named_in(&fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?) {
                    found.push(path);
                }
            }
        }
        Ok(found)
    }

    /// A search path (`PATH`) without its directories in the checkout.
    fn outside(&self, path: &OsStr) -> OsString {
        let kept: Vec<PathBuf> = std::env::split_paths(path).filter(|p| !self.holds(p)).collect();
        std::env::join_paths(kept).unwrap_or_default()
    }
}

/// Runs commands in a private mount namespace in which an empty directory covers each
/// directory of the checkout, when the system allows one (not in a container without
/// `CAP_SYS_ADMIN`, nor where unprivileged user namespaces are restricted).
struct Sandbox {
    /// Why the checkout stays visible, or `None` when it is hidden.
    visible_because: Option<String>,
    empty: PathBuf,
    hidden: Vec<PathBuf>,
}

/// Covers each directory before `--` with the first one, then runs what follows `--`.
const HIDE: &str = r#"e=$1; shift; while [ "$1" != -- ]; do mount --bind "$e" "$1" || exit 125; shift; done; shift; exec "$@""#;

impl Sandbox {
    fn new(checkout: &Checkout, empty: &Path) -> Result<Sandbox, String> {
        fs::create_dir_all(empty).map_err(|e| format!("{}: {e}", empty.display()))?;
        let mut sandbox = Sandbox { visible_because: None, empty: empty.to_path_buf(), hidden: checkout.dirs.clone() };
        // The probe lists what it can see of the checkout: nothing, once hidden.
        let probe = sandbox.command("find").args(&checkout.dirs).args(["-mindepth", "1", "-print", "-quit"]).output();
        sandbox.visible_because = match probe {
            Ok(out) if out.status.success() && out.stdout.is_empty() => None,
            Ok(out) if out.status.success() => Some("the mounts did not cover it".into()),
            Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            Err(e) => Some(format!("cannot run unshare: {e}")),
        };
        if let Some(why) = &sandbox.visible_because {
            println!("test-install: cannot hide the checkout in a mount namespace ({why}); the checks alone show isolation");
        }
        Ok(sandbox)
    }

    /// `program`, run where the checkout is hidden if it can be.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        if self.visible_because.is_some() {
            return Command::new(program);
        }
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--map-root-user", "--", "sh", "-c", HIDE, "sh"]).arg(&self.empty).args(&self.hidden);
        cmd.arg("--").arg(program);
        cmd
    }

    fn describe(&self) -> String {
        match &self.visible_because {
            None => format!("the checkout ({}) was hidden from the builds and the runs", self.hidden_list()),
            Some(why) => format!("the checkout ({}) could not be hidden ({why}); the checks show nothing came from it", self.hidden_list()),
        }
    }

    fn hidden_list(&self) -> String {
        self.hidden.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    }
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
    let real = fs::canonicalize(lib.join(format!("librsl.so.{VERSION}"))).ok();
    ensure(real.is_some() && fs::canonicalize(lib.join("librsl.so")).ok() == real, || {
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

/// The installed files stand alone: the libraries are files of their own, not links or hard
/// links into the build tree, and no installed text (headers, pkg-config and CMake files)
/// names the checkout.
fn check_installed_alone(prefix: &Path, checkout: &Checkout) -> Result<(), String> {
    for lib in [format!("librsl.so.{VERSION}"), "librsl.a".into()] {
        let path = prefix.join("lib").join(&lib);
        let meta = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        ensure(meta.file_type().is_file() && meta.nlink() == 1, || format!("the installed {lib} is not a copy of its own"))?;
    }
    for dir in [prefix.join("include"), prefix.join("lib/pkgconfig"), prefix.join("lib/cmake")] {
        let named = checkout.named_under(&dir)?;
        ensure(named.is_empty(), || format!("installed files name the checkout: {named:?}"))?;
    }
    Ok(())
}

/// The tools and the examples, run in the sandbox with a scrubbed environment from the
/// temporary directory.
struct Tools<'a> {
    sandbox: &'a Sandbox,
    checkout: &'a Checkout,
    prefix: &'a Path,
    work: &'a Path,
}

impl Tools<'_> {
    /// `program` with nothing of this process's environment but `PATH` (cargo's names
    /// `target/` in `LD_LIBRARY_PATH`; `HOME` would let CMake read its package registry),
    /// and the prefix as the only place pkg-config looks first.
    fn tool(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = self.sandbox.command(program);
        cmd.env_clear().env("PATH", self.checkout.outside(&std::env::var_os("PATH").unwrap_or_default())).current_dir(self.work);
        cmd.env("PKG_CONFIG_PATH", self.prefix.join("lib/pkgconfig"));
        cmd
    }

    /// No file of a build names the checkout.
    fn check_build(&self, build: &Path) -> Result<(), String> {
        let named = self.checkout.named_under(build)?;
        ensure(named.is_empty(), || format!("the build names the checkout in {named:?}"))
    }

    fn build_cpp(&self, source: &Path, build: &Path) -> Result<PathBuf, String> {
        println!("test-install: cmake, find_package(rsl) from {}", self.prefix.display());
        let mut configure = self.tool("cmake");
        configure.arg("-S").arg(source).arg("-B").arg(build).arg(format!("-DCMAKE_PREFIX_PATH={}", self.prefix.display()));
        output(configure.arg("-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"))?;
        let cache = fs::read_to_string(build.join("CMakeCache.txt")).map_err(|e| format!("CMakeCache.txt: {e}"))?;
        let found = format!("rsl_DIR:PATH={}", self.prefix.join("lib/cmake/rsl").display());
        ensure(cache.lines().any(|l| l == found), || format!("CMake did not take rsl from the prefix (expected `{found}`)"))?;
        let commands = fs::read_to_string(build.join("compile_commands.json")).map_err(|e| format!("compile_commands.json: {e}"))?;
        let include = self.prefix.join("include").display().to_string();
        ensure(commands.contains(&include), || format!("the compile command does not include {include}:\n{commands}"))?;
        output(self.tool("cmake").arg("--build").arg(build))?;
        self.check_build(build)?;
        Ok(build.join("ring"))
    }

    fn build_c(&self, source: &Path, build: &Path) -> Result<PathBuf, String> {
        println!("test-install: cc with pkg-config --cflags --libs rsl");
        let flags = stdout(self.tool("pkg-config").args(["--cflags", "--libs", "rsl"]))?;
        let libdir = stdout(self.tool("pkg-config").args(["--variable=libdir", "rsl"]))?;
        ensure(libdir.trim() == self.prefix.join("lib").display().to_string(), || format!("rsl.pc's libdir is {libdir}"))?;
        let outside = flags.split_whitespace().filter(|f| {
            let dir = f.strip_prefix("-I").or_else(|| f.strip_prefix("-L"));
            dir.is_some_and(|d| !Path::new(d).starts_with(self.prefix))
        });
        let outside: Vec<_> = outside.collect();
        ensure(outside.is_empty(), || format!("pkg-config gives directories outside the prefix: {outside:?}"))?;
        fs::create_dir_all(build).map_err(|e| format!("{}: {e}", build.display()))?;
        let exe = build.join("ring");
        let mut cc = self.tool("cc");
        cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror"]).arg(source).args(flags.split_whitespace());
        cc.arg(format!("-Wl,-rpath,{}", libdir.trim())).arg("-o").arg(&exe);
        output(&mut cc)?;
        self.check_build(build)?;
        Ok(exe)
    }

    /// Runs an example (its ring's files in `data`): it needs `librsl.so.<major>`, the
    /// loader takes it from the prefix, and every replica prints the state.
    fn run_example(&self, exe: &Path, data: &Path) -> Result<(), String> {
        let dynamic = stdout(Command::new("readelf").arg("-d").arg(exe))?;
        let needed = format!("Shared library: [librsl.so.{MAJOR}]");
        ensure(dynamic.contains(&needed), || format!("{} lacks `{needed}`:\n{dynamic}", exe.display()))?;
        fs::create_dir_all(data).map_err(|e| format!("{}: {e}", data.display()))?;
        // `env` sets the trace for the example alone, not for the sandbox's commands.
        let out = output(self.tool("env").arg("LD_DEBUG=libs").arg(exe).arg(data))?;
        let (text, trace) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        print!("{text}");
        let installed = self.prefix.join("lib").join(format!("librsl.so.{VERSION}"));
        let installed = fs::canonicalize(&installed).map_err(|e| format!("{}: {e}", installed.display()))?;
        check_loaded(exe, &trace, &installed, self.checkout)?;
        let replicas = text.lines().filter(|l| l.ends_with(STATE)).count();
        ensure(replicas == 3, || format!("{} printed `{STATE}` for {replicas} replicas, not 3", exe.display()))
    }
}

/// The loader's trace of `exe` (`LD_DEBUG=libs`) shows `librsl` loaded from `installed` (the
/// installed library's real path) and no look into the checkout.
fn check_loaded(exe: &Path, trace: &str, installed: &Path, checkout: &Checkout) -> Result<(), String> {
    let loaded: Vec<&str> =
        trace.lines().filter_map(|l| l.split_once("calling init: ").map(|(_, p)| p.trim())).filter(|p| p.contains("librsl")).collect();
    let from_prefix = |p: &&str| fs::canonicalize(p).is_ok_and(|p| p == installed);
    ensure(!loaded.is_empty() && loaded.iter().all(from_prefix), || {
        format!("{} loaded librsl from {loaded:?}, not {}:\n{trace}", exe.display(), installed.display())
    })?;
    ensure(!checkout.named_in(trace.as_bytes()), || format!("the loader looked in the checkout for {}:\n{trace}", exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout_in(dir: &Path) -> (PathBuf, Checkout) {
        let root = fs::canonicalize(dir).unwrap().join("checkout");
        fs::create_dir_all(root.join("target/debug")).unwrap();
        fs::write(root.join("Cargo.toml"), "").unwrap();
        let checkout = Checkout::new(&root, &root.join("target"));
        (root, checkout)
    }

    #[test]
    fn the_checkout_is_found_in_paths_files_and_path() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, checkout) = checkout_in(tmp.path());
        assert_eq!(checkout.dirs, std::slice::from_ref(&root), "a target directory inside the checkout is covered with it");
        assert!(checkout.holds(&root.join("target/debug")) && !checkout.holds(tmp.path()));
        let build = tmp.path().join("build");
        fs::create_dir_all(build.join("sub")).unwrap();
        fs::write(build.join("clean"), "-I/usr/include").unwrap();
        fs::write(build.join("sub/link.txt"), format!("-Wl,-rpath,{}/target/debug", root.display())).unwrap();
        std::os::unix::fs::symlink(&root, build.join("link")).unwrap();
        assert_eq!(checkout.named_under(&build).unwrap(), [build.join("sub/link.txt")]);
        let path = std::env::join_paths([root.join("target/debug"), PathBuf::from("/usr/bin")]).unwrap();
        assert_eq!(checkout.outside(&path), "/usr/bin");

        let elsewhere = Checkout::new(&root, &tmp.path().join("shared-target"));
        assert_eq!(elsewhere.dirs.len(), 2, "a target directory outside the checkout is covered too");
    }

    #[test]
    fn the_loader_trace_must_show_the_installed_library() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, checkout) = checkout_in(tmp.path());
        let lib = fs::canonicalize(tmp.path()).unwrap().join("prefix/lib");
        fs::create_dir_all(&lib).unwrap();
        fs::write(lib.join("librsl.so.0.1.0"), "").unwrap();
        std::os::unix::fs::symlink("librsl.so.0.1.0", lib.join("librsl.so.0")).unwrap();
        let installed = lib.join("librsl.so.0.1.0");
        let exe = Path::new("ring");
        let init =
            |path: &Path| format!("     7:\tcalling init: /lib/x86_64-linux-gnu/libc.so.6\n     7:\tcalling init: {}\n", path.display());

        assert!(check_loaded(exe, &init(&lib.join("librsl.so.0")), &installed, &checkout).is_ok());
        let looked = format!("     7:\t  trying file={}/target/debug/librsl.so.0\n{}", root.display(), init(&lib.join("librsl.so.0")));
        assert!(check_loaded(exe, &looked, &installed, &checkout).is_err_and(|e| e.contains("looked in the checkout")));
        fs::write(root.join("target/debug/librsl.so.0"), "").unwrap();
        let from_build = init(&root.join("target/debug/librsl.so.0"));
        assert!(check_loaded(exe, &from_build, &installed, &checkout).is_err_and(|e| e.contains("loaded librsl from")));
        assert!(check_loaded(exe, "     7:\tcalling init: /lib/libc.so.6\n", &installed, &checkout).is_err(), "no librsl loaded");
    }

    #[test]
    fn a_build_moved_away_by_an_earlier_version_is_reported_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        assert_eq!(moved_away(&target), None);
        fs::create_dir_all(tmp.path().join("target.xtask-away/debug")).unwrap();
        assert!(moved_away(&target).is_some_and(|w| w.contains("target.xtask-away")));
        assert!(tmp.path().join("target.xtask-away/debug").is_dir() && !target.exists());
    }

    #[test]
    fn the_sandbox_hides_the_checkout_from_its_commands_only() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, checkout) = checkout_in(tmp.path());
        let sandbox = Sandbox::new(&checkout, &tmp.path().join("empty")).unwrap();
        let seen = sandbox.command("ls").arg("-A").arg(&root).output().unwrap();
        assert!(seen.status.success(), "{seen:?}");
        match &sandbox.visible_because {
            None => assert_eq!(String::from_utf8_lossy(&seen.stdout), "", "the checkout is hidden"),
            Some(why) => assert!(!why.is_empty() && String::from_utf8_lossy(&seen.stdout).contains("Cargo.toml")),
        }
        assert!(root.join("Cargo.toml").is_file(), "the checkout is untouched outside the sandbox");
    }
}
