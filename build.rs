//! Builds what `librsl` holds besides Rust code:
//! - the C header of `rsl-ffi`, generated into `include/rsl_ffi.h` (cbindgen), with the
//!   version macros `RSL_VERSION_MAJOR/MINOR/PATCH` from the package version;
//! - the C++ `RSLib` shim (`cpp-shim/*.cpp`, compiled with the `cc` crate) linked whole into
//!   `librsl.a` and `librsl.so`, with its symbols exported from the shared library;
//! - `librsl.so`'s SONAME, `librsl.so.<major>`, and beside the built library the symlink of
//!   that name, so that programs linked in the build tree run;
//! - `target/<profile>/rsl.pc`, the pkg-config file for services built against the build tree
//!   (from `cpp-shim/rsl.pc.in`; `cargo xtask install` writes the installed one).

use std::path::{Path, PathBuf};

/// The C++ sources of the shim.
const SHIM_SOURCES: &[&str] = &["cpp-shim/rsl.cpp", "cpp-shim/rslutil.cpp"];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    generate_c_header(&root);
    compile_shim(&root);
    set_soname(&out);
    write_pkg_config(&root, &out);
}

/// The package version's three numbers.
fn version() -> [String; 3] {
    ["MAJOR", "MINOR", "PATCH"].map(|part| std::env::var(format!("CARGO_PKG_VERSION_{part}")).expect("cargo sets the version"))
}

/// `target/<profile>`: OUT_DIR is target/<profile>/build/rsl-<hash>/out.
fn profile_dir(out: &Path) -> Option<&Path> {
    out.ancestors().nth(3)
}

fn generate_c_header(root: &Path) {
    let ffi = root.join("rsl-ffi");
    println!("cargo:rerun-if-changed=rsl-ffi/src");
    println!("cargo:rerun-if-changed=rsl-ffi/cbindgen.toml");
    let mut config = cbindgen::Config::from_file(ffi.join("cbindgen.toml")).expect("rsl-ffi/cbindgen.toml is valid");
    let [major, minor, patch] = version();
    config.after_includes = Some(format!(
        "\n/* The library's version (the package version; the SONAME's number is the major). */\n\
         #define RSL_VERSION_MAJOR {major}\n#define RSL_VERSION_MINOR {minor}\n#define RSL_VERSION_PATCH {patch}"
    ));
    let header = cbindgen::Builder::new().with_crate(&ffi).with_config(config).generate().expect("cbindgen can read rsl-ffi");
    header.write_to_file(root.join("include/rsl_ffi.h"));
}

fn compile_shim(root: &Path) {
    for dep in ["cpp-shim", "include/rsl.h", "include/rslutil.h", "cpp-shim/exports.map"] {
        println!("cargo:rerun-if-changed={dep}");
    }
    // Linked whole: nothing in Rust calls the shim, and the linker must keep all of it.
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .files(SHIM_SOURCES.iter().map(|s| root.join(s)))
        .include(root.join("include"))
        .warnings(true)
        .extra_warnings(true)
        .flag("-fvisibility=hidden")
        .link_lib_modifier("+whole-archive")
        .compile("rsl_cpp_shim");
    // A cdylib exports only Rust's `#[no_mangle]` symbols (rustc's version script hides the
    // rest); a second version script adds the shim's `RSLib::` symbols. rust-lld (the default
    // linker of x86_64-unknown-linux-gnu since Rust 1.90) merges the two; GNU ld refuses two
    // anonymous scripts, so without rust-lld the shared library leaves the shim out of its
    // exports (the static library and the C ABI are unaffected).
    if uses_rust_lld() {
        println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={}", root.join("cpp-shim/exports.map").display());
    } else {
        println!("cargo:warning=librsl.so will not export the C++ shim (needs rust-lld); link C++ services with librsl.a");
    }
}

/// Whether rustc links this cdylib with rust-lld: the default for x86_64-unknown-linux-gnu
/// since 1.90, unless the flags pick another linker.
fn uses_rust_lld() -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags_choose_linker = flags.split('\x1f').any(|f| f.contains("linker") || f.contains("fuse-ld"));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let minor = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.split_whitespace().nth(1).and_then(|ver| ver.split('.').nth(1).map(str::to_owned)))
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    target == "x86_64-unknown-linux-gnu" && minor >= 90 && !flags_choose_linker
}

/// Gives `librsl.so` the SONAME `librsl.so.<major>`, so that programs record that name and an
/// incompatible major version is never loaded in its place. A program linked against the
/// build tree then looks for `librsl.so.<major>`: the symlink of that name, next to each copy
/// cargo makes (`target/<profile>` and its `deps`), points at `librsl.so`.
fn set_soname(out: &Path) {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let soname = format!("librsl.so.{}", version()[0]);
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    let Some(profile) = profile_dir(out) else { return };
    for dir in [profile.to_path_buf(), profile.join("deps")] {
        let link = dir.join(&soname);
        if std::fs::read_link(&link).ok().as_deref() != Some(Path::new("librsl.so")) {
            let _ = std::fs::create_dir_all(&dir);
            replace_with_symlink(&link);
        }
    }
}

/// Makes `link` -> `librsl.so`. These links are outside OUT_DIR, where two builds (another
/// cargo, rust-analyzer) may make them at once: each makes the link under a name of its own
/// (its process id) and renames it over `link`, which replaces whatever is there in one step,
/// so no build finds the name taken.
fn replace_with_symlink(link: &Path) {
    let name = link.file_name().expect("a link has a name").to_string_lossy();
    let tmp = link.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink("librsl.so", &tmp).unwrap_or_else(|e| panic!("cannot create {}: {e}", tmp.display()));
    std::fs::rename(&tmp, link).unwrap_or_else(|e| panic!("cannot rename {} to {}: {e}", tmp.display(), link.display()));
}

/// Writes `target/<profile>/rsl.pc` (beside `librsl.so`) from `cpp-shim/rsl.pc.in`.
fn write_pkg_config(root: &Path, out: &Path) {
    println!("cargo:rerun-if-changed=cpp-shim/rsl.pc.in");
    let Some(libdir) = profile_dir(out) else { return };
    let template = std::fs::read_to_string(root.join("cpp-shim/rsl.pc.in")).expect("cpp-shim/rsl.pc.in is readable");
    let pc = template
        .replace("@PREFIX@", &root.display().to_string())
        .replace("@LIBDIR@", &libdir.display().to_string())
        .replace("@INCLUDEDIR@", &root.join("include").display().to_string())
        .replace("@VERSION@", &std::env::var("CARGO_PKG_VERSION").unwrap_or_default());
    let path = libdir.join("rsl.pc");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(pc.as_str()) {
        // Written aside and renamed in, like the links: another build may read it meanwhile.
        let tmp = libdir.join(format!(".rsl.pc.{}.tmp", std::process::id()));
        std::fs::write(&tmp, pc).expect("target/<profile> is writable");
        std::fs::rename(&tmp, &path).expect("target/<profile>/rsl.pc is writable");
    }
}
