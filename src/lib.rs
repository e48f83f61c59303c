//! `librsl`: the one library a C or C++ service links. It bundles the engine, the C ABI
//! (`rsl-ffi`) and, later, the C++ `RSLib` shim.

pub use rsl_engine as engine;
pub use rsl_ffi as ffi;
