//! `librsl`: the one library a C or C++ service links. It bundles the engine, the C ABI
//! (`rsl-ffi`) and, later, the C++ `RSLib` shim.

#![deny(missing_docs)]

pub use rsl_engine as engine;
pub use rsl_ffi as ffi;

/// The README's Rust quick start, compiled as a doc test so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeQuickStart;
