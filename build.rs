//! Generates the C header for `rsl-ffi` into `include/rsl_ffi.h`.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let ffi = root.join("rsl-ffi");
    println!("cargo:rerun-if-changed=rsl-ffi/src");
    println!("cargo:rerun-if-changed=rsl-ffi/cbindgen.toml");
    let config = cbindgen::Config::from_file(ffi.join("cbindgen.toml")).expect("rsl-ffi/cbindgen.toml is valid");
    let header = cbindgen::Builder::new().with_crate(&ffi).with_config(config).generate().expect("cbindgen can read rsl-ffi");
    header.write_to_file(root.join("include/rsl_ffi.h"));
}
