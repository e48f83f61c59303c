//! packet::decode with a small maximum and with the default one: a frame never claims more
//! than the buffer or the maximum, NeedMore always asks for more than there is, and a frame's
//! message re-framed decodes to the same frame.
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rsl_engine::format::packet::{decode, encode_into, Frame, DEFAULT_MAX_PACKET, HEADER_SIZE};
use rsl_engine::format::Message;

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    for max in [100, DEFAULT_MAX_PACKET] {
        match decode(&buf, max) {
            Ok(Frame::Packet { message, consumed }) => {
                assert!((HEADER_SIZE..=buf.len().min(max)).contains(&consumed));
                assert_eq!(message, buf.slice(HEADER_SIZE..consumed));
                let _ = Message::decode(&message);
                let mut out = BytesMut::new();
                encode_into(&message, &mut out);
                assert_eq!(decode(&out.freeze(), max), Ok(Frame::Packet { message, consumed }));
            }
            Ok(Frame::NeedMore(n)) => assert!(n > buf.len() && n <= max.max(HEADER_SIZE), "NeedMore({n}) with {} bytes", buf.len()),
            Err(_) => {}
        }
    }
});
