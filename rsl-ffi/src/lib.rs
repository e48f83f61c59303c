//! The C ABI over the engine. Every entry point checks its arguments and catches panics.

use std::panic::catch_unwind;

/// `RSLUtils::CalculateChecksum`: the RSL checksum of `size` bytes at `blob`.
/// Returns 0 if `blob` is NULL while `size` is not 0.
///
/// # Safety
/// `blob` must point to `size` readable bytes (or be NULL when `size` is 0).
#[no_mangle]
pub unsafe extern "C" fn rsl_calculate_checksum(blob: *const u8, size: usize) -> u64 {
    if blob.is_null() {
        return if size == 0 { rsl_engine::format::checksum::INIT } else { 0 };
    }
    // SAFETY: the caller guarantees `blob` points to `size` readable bytes; it is non-null.
    let data = unsafe { std::slice::from_raw_parts(blob, size) };
    catch_unwind(|| rsl_engine::format::checksum::checksum(data)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_through_the_c_abi() {
        let data = b"123456789";
        // SAFETY: a valid slice.
        assert_eq!(unsafe { rsl_calculate_checksum(data.as_ptr(), data.len()) }, 0x69bc7a5d9767af72);
        // SAFETY: NULL is checked.
        assert_eq!(unsafe { rsl_calculate_checksum(std::ptr::null(), 0) }, 0xa795d0f29b4dcdf8);
        assert_eq!(unsafe { rsl_calculate_checksum(std::ptr::null(), 5) }, 0);
    }
}
