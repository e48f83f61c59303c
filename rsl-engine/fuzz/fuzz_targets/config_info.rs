//! ConfigInfo::from_bytes in every version; a decoded value re-encodes to the same length,
//! decodes back to itself, and for v1-v3 (no indeterminate member-id tails) to the same bytes.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rsl_engine::format::{ConfigInfo, Version};

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    for v in Version::ALL {
        let Ok(ci) = ConfigInfo::from_bytes(&buf, v) else { continue };
        let bytes = ci.to_bytes(v).unwrap_or_else(|e| panic!("{v}: decoded {ci:?} does not re-encode: {e}"));
        assert_eq!(bytes.len(), buf.len(), "{v}");
        assert_eq!(ci.encoded_len(v), bytes.len(), "{v}");
        let again = ConfigInfo::from_bytes(&bytes, v).unwrap_or_else(|e| panic!("{v}: re-encoded {ci:?} does not decode: {e}"));
        assert_eq!(again, ci, "{v}");
        if !v.has_string_ids() {
            assert_eq!(bytes, buf, "{v}");
        }
    }
});
