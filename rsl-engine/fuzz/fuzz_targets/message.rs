//! Message::decode on arbitrary bytes. A decoded message must re-encode (no EncodeError can
//! arise from a decoded value), decode back to the same value, and the re-encoding must be a
//! fixed point (bytes need not equal the input: checksums of non-votes, member-id tails after
//! the NUL and non-zero bools are normalized).
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rsl_engine::format::message::verify_checksum;
use rsl_engine::format::{Checksum, Message, MsgKind};

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let Ok(msg) = Message::decode(&buf) else { return };
    let bytes = msg.encode(Checksum::Default).unwrap_or_else(|e| panic!("decoded {msg:?} does not re-encode: {e}"));
    assert_eq!(bytes.len(), buf.len(), "re-encoding changed the length");
    let again = Message::decode(&bytes).unwrap_or_else(|e| panic!("re-encoded {msg:?} does not decode: {e}"));
    assert_eq!(again, msg);
    assert_eq!(again.encode(Checksum::Default).unwrap(), bytes, "encoding is not a fixed point");
    if msg.kind() == MsgKind::Vote {
        verify_checksum(&bytes).expect("an encoded vote carries a valid checksum");
    }
});
