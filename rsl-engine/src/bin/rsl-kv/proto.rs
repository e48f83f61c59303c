//! The key-value service's client protocol: length-prefixed frames over TCP.
//!
//! Request: `u32 len | u8 op | u64 id | body`; response: `u32 len | u64 id | u8 status | body`.
//! Put body: `u16 key_len | key | value` (also the replicated request); get body:
//! `u64 max_seen_seq | key`; status body: empty, answered with `u64 seq | u64 keys |
//! u64 digest | u64 duplicates | u8 primary`.
#![allow(dead_code)]

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const OP_PUT: u8 = 1;
pub const OP_GET: u8 = 2;
pub const OP_STATUS: u8 = 3;
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
}

impl Status {
    pub fn from_u8(b: u8) -> Status {
        match b {
            0 => Status::Ok,
            1 => Status::Stale,
            2 => Status::NotPrimary,
            3 => Status::ShuttingDown,
            _ => Status::Invalid,
        }
    }
}

pub fn response(id: u64, status: Status, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(13 + body.len());
    out.put_u32_le((9 + body.len()) as u32);
    out.put_u64_le(id);
    out.put_u8(status as u8);
    out.put_slice(body);
    out.freeze()
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

/// Takes one whole frame's payload off the front of `buf`, if it holds one.
pub fn take_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if !(9..=MAX_FRAME).contains(&len) {
        return Err(format!("bad frame length {len}"));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// A request frame's op, id and body.
pub fn parse_request(mut frame: Bytes) -> (u8, u64, Bytes) {
    let op = frame.get_u8();
    let id = frame.get_u64_le();
    (op, id, frame)
}

/// A response frame's id, status and body.
pub fn parse_response(mut frame: Bytes) -> (u64, Status, Bytes) {
    let id = frame.get_u64_le();
    let status = Status::from_u8(frame.get_u8());
    (id, status, frame)
}
