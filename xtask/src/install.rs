//! `cargo xtask install`: builds `librsl` and lays it out under a prefix the way C and C++
//! build systems look for a library:
//!
//! ```text
//! include/rsl.h, rslutil.h, rsl_ffi.h
//! lib/librsl.so.X.Y.Z              SONAME librsl.so.X
//! lib/librsl.so.X -> librsl.so.X.Y.Z
//! lib/librsl.so   -> librsl.so.X
//! lib/librsl.a
//! lib/pkgconfig/rsl.pc             prefix=<the prefix>
//! lib/cmake/rsl/rslConfig.cmake, rslConfigVersion.cmake   (rsl::rsl, rsl::rsl_static)
//! ```
//!
//! Each file is written beside its destination and renamed over it, so a program running
//! from an earlier install keeps its mapped copy of the library.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The headers a service includes.
pub const HEADERS: &[&str] = &["rsl.h", "rslutil.h", "rsl_ffi.h"];
/// The workspace version, which `librsl` and these tasks share.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const MAJOR: &str = env!("CARGO_PKG_VERSION_MAJOR");
pub const MINOR: &str = env!("CARGO_PKG_VERSION_MINOR");
pub const PATCH: &str = env!("CARGO_PKG_VERSION_PATCH");

/// The repository root (this crate is `xtask/` in it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_path_buf()
}

/// The cargo that runs this task (`cargo xtask` sets `CARGO`), else the one on the path.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The workspace's target directory, as cargo resolves it (`CARGO_TARGET_DIR`, configuration).
pub fn target_dir() -> Result<PathBuf, String> {
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    meta["target_directory"].as_str().map(PathBuf::from).ok_or_else(|| "cargo metadata names no target directory".into())
}

/// The directory under `target/` that cargo builds `profile` into.
fn profile_dir_name(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    }
}

/// Builds `librsl.so` and `librsl.a` with `profile`; returns the directory that holds them.
pub fn build(profile: &str) -> Result<PathBuf, String> {
    println!("building librsl (profile {profile})");
    let status = cargo()
        .args(["build", "--lib", "-p", "rsl", "--profile", profile])
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    if !status.success() {
        return Err("cargo build -p rsl failed".into());
    }
    Ok(target_dir()?.join(profile_dir_name(profile)))
}

/// `cargo xtask install`: builds with `profile`, then installs under `prefix`, which is
/// returned absolute.
pub fn run(prefix: &Path, profile: &str) -> Result<PathBuf, String> {
    let built = build(profile)?;
    let prefix = std::path::absolute(prefix).map_err(|e| format!("{}: {e}", prefix.display()))?;
    install(&workspace_root().join("include"), &built, &prefix)?;
    println!("installed rsl {VERSION} under {}", prefix.display());
    Ok(prefix)
}

/// Installs the headers of `include` and the libraries of `built` under `prefix`.
fn install(include: &Path, built: &Path, prefix: &Path) -> Result<(), String> {
    let lib = prefix.join("lib");
    for header in HEADERS {
        copy(&include.join(header), &prefix.join("include").join(header), 0o644)?;
    }
    let real = format!("librsl.so.{VERSION}");
    let soname = format!("librsl.so.{MAJOR}");
    copy(&built.join("librsl.so"), &lib.join(&real), 0o755)?;
    symlink(&real, &lib.join(&soname))?;
    symlink(&soname, &lib.join("librsl.so"))?;
    copy(&built.join("librsl.a"), &lib.join("librsl.a"), 0o644)?;
    let fill = |template: &str| {
        template.replace("@PREFIX@", &prefix.display().to_string()).replace("@VERSION@", VERSION).replace("@MAJOR@", MAJOR)
    };
    write(&lib.join("pkgconfig/rsl.pc"), &fill(include_str!("../templates/rsl.pc.in")))?;
    write(&lib.join("cmake/rsl/rslConfig.cmake"), &fill(include_str!("../templates/rslConfig.cmake.in")))?;
    write(&lib.join("cmake/rsl/rslConfigVersion.cmake"), &fill(include_str!("../templates/rslConfigVersion.cmake.in")))?;
    Ok(())
}

/// `dest`'s temporary sibling, renamed over it once complete; its directory is created.
fn staging(dest: &Path) -> Result<PathBuf, String> {
    let dir = dest.parent().expect("an installed file has a directory");
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = dest.file_name().expect("an installed file has a name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.xtask-tmp"));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("cannot remove {}: {e}", tmp.display())),
        _ => Ok(tmp),
    }
}

fn commit(tmp: &Path, dest: &Path) -> Result<(), String> {
    fs::rename(tmp, dest).map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), dest.display()))?;
    println!("  {}", dest.display());
    Ok(())
}

fn copy(from: &Path, dest: &Path, mode: u32) -> Result<(), String> {
    let tmp = staging(dest)?;
    fs::copy(from, &tmp).map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", tmp.display()))?;
    commit(&tmp, dest)
}

fn write(dest: &Path, text: &str) -> Result<(), String> {
    let tmp = staging(dest)?;
    fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(|e| format!("{}: {e}", tmp.display()))?;
    commit(&tmp, dest)
}

/// `dest` -> `target` (a name in the same directory).
fn symlink(target: &str, dest: &Path) -> Result<(), String> {
    let tmp = staging(dest)?;
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    commit(&tmp, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_every_file_and_replaces_an_older_install() {
        let tmp = tempfile::tempdir().unwrap();
        let (include, built, prefix) = (tmp.path().join("inc"), tmp.path().join("built"), tmp.path().join("p"));
        fs::create_dir_all(&include).unwrap();
        fs::create_dir_all(&built).unwrap();
        HEADERS.iter().for_each(|h| fs::write(include.join(h), h).unwrap());
        fs::write(built.join("librsl.so"), "so").unwrap();
        fs::write(built.join("librsl.a"), "a").unwrap();
        install(&include, &built, &prefix).unwrap();
        fs::write(built.join("librsl.so"), "so 2").unwrap();
        install(&include, &built, &prefix).unwrap();

        let lib = prefix.join("lib");
        assert_eq!(fs::read_to_string(lib.join("librsl.so")).unwrap(), "so 2");
        assert_eq!(fs::read_link(lib.join("librsl.so")).unwrap(), Path::new(&format!("librsl.so.{MAJOR}")));
        assert_eq!(fs::read_link(lib.join(format!("librsl.so.{MAJOR}"))).unwrap(), Path::new(&format!("librsl.so.{VERSION}")));
        assert_eq!(fs::metadata(lib.join(format!("librsl.so.{VERSION}"))).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(fs::read_to_string(prefix.join("include/rsl_ffi.h")).unwrap(), "rsl_ffi.h");
        let pc = fs::read_to_string(lib.join("pkgconfig/rsl.pc")).unwrap();
        assert!(pc.contains(&format!("prefix={}\n", prefix.display())) && pc.contains(&format!("Version: {VERSION}\n")), "{pc}");
        let config = fs::read_to_string(lib.join("cmake/rsl/rslConfig.cmake")).unwrap();
        assert!(config.contains(&format!("librsl.so.{VERSION}\"")) && !config.contains('@'), "{config}");
        let version = fs::read_to_string(lib.join("cmake/rsl/rslConfigVersion.cmake")).unwrap();
        assert!(version.contains(&format!("set(PACKAGE_VERSION \"{VERSION}\")")) && !version.contains('@'), "{version}");
        let left: Vec<_> =
            fs::read_dir(&lib).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().ends_with("xtask-tmp")).collect();
        assert!(left.is_empty(), "staging files left: {left:?}");
    }

    #[test]
    fn profiles_map_to_their_directories() {
        assert_eq!(profile_dir_name("dev"), "debug");
        assert_eq!(profile_dir_name("release"), "release");
        assert_eq!(profile_dir_name("soak"), "soak");
    }
}
