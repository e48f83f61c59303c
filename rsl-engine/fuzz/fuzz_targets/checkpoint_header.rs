//! CheckpointHeader::decode on arbitrary bytes; a decoded header encodes to a region of
//! exactly its data offset that decodes to the same header.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rsl_engine::format::CheckpointHeader;

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let Ok((header, l)) = CheckpointHeader::decode(&buf) else { return };
    assert!(l <= buf.len() && l % 512 == 0, "data offset {l} of {} bytes", buf.len());
    let region = header.encode().unwrap_or_else(|e| panic!("decoded {header:?} does not re-encode: {e}"));
    assert_eq!(region.len(), l);
    let (again, l2) = CheckpointHeader::decode(&region).unwrap_or_else(|e| panic!("re-encoded {header:?} does not decode: {e}"));
    assert_eq!(again, header);
    assert_eq!(l2, l);
});
