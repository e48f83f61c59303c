//! The Paxos-port packet frame: a 20-byte header with its own checksum around one message
//! (docs/spec/formats.md §7.1).

use super::checksum;
use super::codec::DecodeError;
use bytes::{BufMut, Bytes, BytesMut};

/// The packet header's size: length, protocol version, xid, checksum.
pub const HEADER_SIZE: usize = 20;
const CHECKSUM_AT: usize = 12;

/// The default largest packet: `m_maxMessageSizeMB` (100) MiB plus 1024.
pub const DEFAULT_MAX_PACKET: usize = 100 * 1024 * 1024 + 1024;

/// Appends a packet carrying `message` to `out`.
pub fn encode_into(message: &[u8], out: &mut BytesMut) {
    let start = out.len();
    let size = u32::try_from(HEADER_SIZE + message.len()).expect("a message fits a packet");
    out.reserve(HEADER_SIZE + message.len());
    out.put_u32_le(size);
    out.put_u32_le(0); // protoVersion: always 0, never checked
    out.put_u32_le(0); // xid: always 0, never checked
    out.put_u64_le(0); // checksum, computed over the packet with this field zero
    out.put_slice(message);
    let sum = checksum::checksum(&out[start..]);
    out[start + CHECKSUM_AT..start + HEADER_SIZE].copy_from_slice(&sum.to_le_bytes());
}

/// The outcome of looking for a packet at the start of a receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete, checksum-verified packet: its message and the bytes it used.
    Packet {
        /// The message's bytes, shared with the receive buffer.
        message: Bytes,
        /// Bytes the packet took: header plus message.
        consumed: usize,
    },
    /// Not enough bytes yet; at least this many are needed in all.
    NeedMore(usize),
}

/// The validated size of the packet starting at `buf[0]`, once its header has arrived (`None`
/// before). Lets a reader size its buffer for a packet, and split the packet off, before
/// decoding it.
pub fn peek_size(buf: &[u8], max_size: usize) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_SIZE {
        return Ok(None);
    }
    let size = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if size < HEADER_SIZE || size > max_size {
        return Err(DecodeError::Invalid { what: "packet size", offset: 0, value: size as u64 });
    }
    Ok(Some(size))
}

/// Finds the packet at the start of `buf`. An error means the connection must be closed:
/// a size below the header, above `max_size`, or a checksum that does not match. The size
/// is checked before anything is buffered, so a hostile size cannot make a caller allocate.
pub fn decode(buf: &Bytes, max_size: usize) -> Result<Frame, DecodeError> {
    let Some(size) = peek_size(buf, max_size)? else {
        return Ok(Frame::NeedMore(HEADER_SIZE));
    };
    if buf.len() < size {
        return Ok(Frame::NeedMore(size));
    }
    let stored = u64::from_le_bytes(buf[CHECKSUM_AT..HEADER_SIZE].try_into().expect("8 bytes"));
    let mut crc = checksum::update(checksum::INIT, &buf[..CHECKSUM_AT]);
    crc = checksum::update(crc, &[0; 8]);
    crc = checksum::update(crc, &buf[HEADER_SIZE..size]);
    if crc != stored {
        return Err(DecodeError::Checksum { what: "packet checksum", offset: CHECKSUM_AT, stored, computed: crc });
    }
    Ok(Frame::Packet { message: buf.slice(HEADER_SIZE..size), consumed: size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let mut out = BytesMut::new();
        encode_into(b"some message", &mut out);
        let buf = out.freeze();
        assert_eq!(decode(&buf, DEFAULT_MAX_PACKET).unwrap(), Frame::Packet { message: Bytes::from_static(b"some message"), consumed: 32 });
        assert_eq!(decode(&buf.slice(..25), DEFAULT_MAX_PACKET).unwrap(), Frame::NeedMore(32));
        for i in 0..buf.len() {
            let mut bad = buf.to_vec();
            bad[i] ^= 0x10;
            assert!(decode(&Bytes::from(bad), DEFAULT_MAX_PACKET).is_err() || i < 4, "flip at {i} undetected");
        }
    }

    #[test]
    fn oversize_packets_are_rejected_before_buffering() {
        let mut hdr = vec![0u8; 20];
        hdr[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(&Bytes::from(hdr), DEFAULT_MAX_PACKET).unwrap_err();
        assert_eq!(err, DecodeError::Invalid { what: "packet size", offset: 0, value: u32::MAX as u64 });
    }
}
