//! The key-value service's client protocol: length-prefixed frames over TCP.
//!
//! Request: `u32 len | u8 op | u64 id | body`; response: `u32 len | u64 id | u8 status | body`.
//! Put body: `u16 key_len | key | value` (also the replicated request); get body:
//! `u64 max_seen_seq | key`; status body: empty, answered with `u64 seq | u64 keys |
//! u64 digest | u64 duplicates | u8 primary | u64 messages_rejected | u64 tls_refused |
//! primary id` (the counters since the replica started); change body (op 4, with `--allow-admin` only):
//! the new members as `id=port,...`. A request that does not parse is answered `Invalid`; one
//! whose frame does not (a length outside `9..=MAX_FRAME`) closes the connection.
#![allow(dead_code)]

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const OP_PUT: u8 = 1;
pub const OP_GET: u8 = 2;
pub const OP_STATUS: u8 = 3;
pub const OP_CHANGE: u8 = 4;
/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    Stale = 1,
    NotPrimary = 2,
    ShuttingDown = 3,
    Invalid = 4,
    /// Not allowed on this port (an administrative request without `--allow-admin`).
    Refused = 5,
}

impl Status {
    pub fn from_u8(b: u8) -> Status {
        match b {
            0 => Status::Ok,
            1 => Status::Stale,
            2 => Status::NotPrimary,
            3 => Status::ShuttingDown,
            5 => Status::Refused,
            _ => Status::Invalid,
        }
    }
}

/// Appends a response: the frame header, the status and the body.
pub fn put_response(out: &mut BytesMut, id: u64, status: Status, body: &[u8]) {
    put_response_head(out, id, status, body.len());
    out.put_slice(body);
}

/// A response's bytes before its body: frame length, request id, status.
pub const RESPONSE_HEAD_LEN: usize = 4 + 8 + 1;

/// Appends the frame header and status of a response whose body is `body_len` bytes.
pub fn put_response_head(out: &mut BytesMut, id: u64, status: Status, body_len: usize) {
    debug_assert!(9 + body_len <= MAX_FRAME, "a response fits a frame");
    out.put_u32_le((9 + body_len) as u32);
    out.put_u64_le(id);
    out.put_u8(status as u8);
}

pub fn put_request(out: &mut BytesMut, id: u64, key: &[u8], value: &[u8]) {
    out.put_u32_le((9 + 2 + key.len() + value.len()) as u32);
    out.put_u8(OP_PUT);
    out.put_u64_le(id);
    out.put_u16_le(key.len() as u16);
    out.put_slice(key);
    out.put_slice(value);
}

pub fn get_request(out: &mut BytesMut, id: u64, max_seen: u64, key: &[u8]) {
    out.put_u32_le((9 + 8 + key.len()) as u32);
    out.put_u8(OP_GET);
    out.put_u64_le(id);
    out.put_u64_le(max_seen);
    out.put_slice(key);
}

pub fn status_request(out: &mut BytesMut, id: u64) {
    out.put_u32_le(9);
    out.put_u8(OP_STATUS);
    out.put_u64_le(id);
}

/// The key and value of a put body (the replicated request).
pub fn parse_put(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let klen = u16::from_le_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let rest = body.get(2..)?;
    (rest.len() >= klen).then(|| rest.split_at(klen))
}

/// The bytes the frame at the front of `buf` takes in all, length prefix included: 4 while
/// its length is not known yet. An error if the length is outside `9..=MAX_FRAME`.
pub fn frame_need(buf: &[u8]) -> Result<usize, String> {
    let Some(prefix) = buf.get(..4) else { return Ok(4) };
    let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if !(9..=MAX_FRAME).contains(&len) {
        return Err(format!("bad frame length {len}"));
    }
    Ok(4 + len)
}

/// Takes one whole frame's payload off the front of `buf`, if it holds one. It makes no room
/// for the rest: the reader decides how far to believe the length.
pub fn take_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    let need = frame_need(buf)?;
    if buf.len() < need || need == 4 {
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(need - 4).freeze()))
}

/// A request as the server takes it: every field checked before anything is replicated.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// The body is the replicated request, `u16 key_len | key | value`.
    Put {
        body: Bytes,
    },
    Get {
        max_seen: u64,
        key: Bytes,
    },
    Status,
    Change {
        members: Bytes,
    },
}

/// A request frame's id and request; `Err(id)` if the request does not parse (answered
/// `Invalid`). The frame is at least 9 bytes, as [`take_frame`] ensures.
pub fn parse_request(mut frame: Bytes) -> Result<(u64, Request), u64> {
    assert!(frame.len() >= 9, "take_frame checked the length");
    let op = frame.get_u8();
    let id = frame.get_u64_le();
    let request = match op {
        OP_PUT if parse_put(&frame).is_some() => Request::Put { body: frame },
        OP_GET if frame.len() >= 8 => Request::Get { max_seen: frame.get_u64_le(), key: frame },
        OP_STATUS => Request::Status,
        OP_CHANGE => Request::Change { members: frame },
        _ => return Err(id),
    };
    Ok((id, request))
}

/// A response frame's id, status and body.
pub fn parse_response(mut frame: Bytes) -> (u64, Status, Bytes) {
    let id = frame.get_u64_le();
    let status = Status::from_u8(frame.get_u8());
    (id, status, frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(out: &BytesMut) -> Bytes {
        let mut buf = out.clone();
        take_frame(&mut buf).unwrap().unwrap()
    }

    #[test]
    fn a_put_whose_key_overruns_its_body_does_not_parse() {
        let mut out = BytesMut::new();
        put_request(&mut out, 7, b"key", b"value");
        assert_eq!(parse_request(frame(&out)), Ok((7, Request::Put { body: Bytes::from_static(b"\x03\x00keyvalue") })));
        // Key length 0xFFFF with 8 bytes behind it: once replicated and never answered.
        out[4 + 9..4 + 11].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(parse_request(frame(&out)), Err(7));
        for body in [&[][..], &[1]] {
            let mut out = BytesMut::new();
            out.put_u32_le(9 + body.len() as u32);
            out.put_u8(OP_PUT);
            out.put_u64_le(8);
            out.put_slice(body);
            assert_eq!(parse_request(frame(&out)), Err(8), "body {body:?}");
        }
    }

    #[test]
    fn other_malformed_requests_do_not_parse() {
        let mut out = BytesMut::new();
        get_request(&mut out, 1, 5, b"k");
        assert_eq!(parse_request(frame(&out)), Ok((1, Request::Get { max_seen: 5, key: Bytes::from_static(b"k") })));
        for (op, body) in [(OP_GET, &b"short"[..]), (0, b""), (99, b"")] {
            let mut out = BytesMut::new();
            out.put_u32_le(9 + body.len() as u32);
            out.put_u8(op);
            out.put_u64_le(3);
            out.put_slice(body);
            assert_eq!(parse_request(frame(&out)), Err(3), "op {op}");
        }
    }

    #[test]
    fn frames_are_believed_only_as_far_as_they_arrive() {
        let mut buf = BytesMut::from(&(MAX_FRAME as u32).to_le_bytes()[..]);
        assert_eq!(take_frame(&mut buf), Ok(None));
        assert_eq!(buf.capacity(), 4, "no room made for the claimed length");
        assert_eq!(frame_need(&buf), Ok(4 + MAX_FRAME));
        for len in [0u32, 8, MAX_FRAME as u32 + 1, u32::MAX] {
            assert!(take_frame(&mut BytesMut::from(&len.to_le_bytes()[..])).is_err(), "length {len}");
        }
    }
}
