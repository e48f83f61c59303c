//! Little-endian primitive encoding and the bounds-checked cursor every decoder reads through,
//! with the typed errors that name what was wrong and where (docs/spec/formats.md §1).

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Why a byte string could not be decoded. Every variant says where, as a byte offset from the
/// start of the buffer the decoder was handed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Fewer bytes are left than the field needs.
    #[error("{what} at offset {offset}: needs {need} bytes, {have} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where the field starts.
        offset: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left in the buffer.
        have: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("{what} at offset {offset}: invalid value {value:#x}")]
    Invalid {
        /// The field being read.
        what: &'static str,
        /// Where the field starts.
        offset: usize,
        /// The value found.
        value: u64,
    },
    /// A stored checksum does not match the bytes it covers.
    #[error("{what} at offset {offset}: stored {stored:#018x}, computed {computed:#018x}")]
    Checksum {
        /// What the checksum covers.
        what: &'static str,
        /// Where the covered bytes start.
        offset: usize,
        /// The checksum stored.
        stored: u64,
        /// The checksum of the bytes as read.
        computed: u64,
    },
    /// Fields that are each valid but do not fit together.
    #[error("{what} at offset {offset}: {detail}")]
    Malformed {
        /// The structure being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// What does not fit.
        detail: &'static str,
    },
}

impl DecodeError {
    /// The byte offset the error names.
    pub fn offset(&self) -> usize {
        match *self {
            DecodeError::Truncated { offset, .. }
            | DecodeError::Invalid { offset, .. }
            | DecodeError::Checksum { offset, .. }
            | DecodeError::Malformed { offset, .. } => offset,
        }
    }

    /// The same error with its offset moved by `base`, for a buffer embedded in a larger one.
    pub fn shifted(mut self, base: usize) -> Self {
        match &mut self {
            DecodeError::Truncated { offset, .. }
            | DecodeError::Invalid { offset, .. }
            | DecodeError::Checksum { offset, .. }
            | DecodeError::Malformed { offset, .. } => *offset += base,
        }
        self
    }
}

/// Why a value could not be encoded in the requested protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// Protocol versions 1 to 3 carry member ids as numbers; this one is not.
    #[error("member id {0:?} is not numeric and protocol versions 1 to 3 carry numeric ids")]
    NonNumericMemberId(String),
    /// A field longer than its format allows.
    #[error("{what} is {len} bytes, more than the format allows ({max})")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length, in bytes (or entries).
        len: usize,
        /// The largest the format allows.
        max: usize,
    },
    /// A field or message type the protocol version (the second value) does not have.
    #[error("{0} cannot be expressed in protocol version {1}")]
    Unsupported(&'static str, u16),
    /// A vote's requests must each hold at least one byte.
    #[error("a request must not be empty")]
    EmptyRequest,
}

/// A cursor over a shared buffer. Slices it hands out share the buffer (no copy), and every
/// read checks the remaining length first, so no length field can drive an allocation or a
/// read past the end.
pub struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// A reader over the whole of `buf`, from offset 0.
    pub fn new(buf: &'a Bytes) -> Self {
        Reader { buf, pos: 0, end: buf.len() }
    }

    /// A reader over `buf[start..end]` whose offsets stay relative to the whole buffer.
    pub fn window(buf: &'a Bytes, start: usize, end: usize) -> Self {
        debug_assert!(start <= end && end <= buf.len());
        Reader { buf, pos: start, end }
    }

    /// A reader over the bytes from here to `end`, which must not lie beyond this one's end.
    pub fn sub(&self, end: usize) -> Reader<'a> {
        assert!(self.pos <= end && end <= self.end, "sub-reader outside its parent");
        Reader { buf: self.buf, pos: self.pos, end }
    }

    /// Moves to `pos`, which must lie between here and the end.
    pub fn skip_to(&mut self, pos: usize) {
        assert!(self.pos <= pos && pos <= self.end, "skip outside the reader");
        self.pos = pos;
    }

    /// The bytes from here to the end, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        let buf: &'a Bytes = self.buf;
        &buf[self.pos..self.end]
    }

    /// The offset of the next byte to read, from the start of the buffer.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left before the end.
    pub fn remaining(&self) -> usize {
        self.end - self.pos
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.pos == self.end
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated { what, offset: self.pos, need: n, have: self.remaining() });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..self.pos])
    }

    /// The next `N` bytes, copied; `what` names the field in an error.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N, what)?.try_into().expect("take returned N bytes"))
    }

    /// The next byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    /// The next byte as a bool (any non-zero value is true, as in C++).
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        Ok(self.u8(what)? != 0)
    }
    /// The next little-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    /// The next little-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    /// The next little-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// The next little-endian i64.
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    /// `n` bytes as a zero-copy slice of the underlying buffer.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.buf.slice(start..self.pos))
    }

    /// A u32 length followed by that many bytes.
    pub fn blob32(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(what)? as usize;
        self.bytes(len, what)
    }

    /// An [`DecodeError::Invalid`] for `value` found in `what` at `at`.
    pub fn invalid(&self, what: &'static str, at: usize, value: u64) -> DecodeError {
        DecodeError::Invalid { what, offset: at, value }
    }
}

/// Little-endian writers for the primitives, on any `BufMut`.
pub trait PutLe: BufMut {
    /// One byte, 0 or 1.
    fn put_bool(&mut self, v: bool) {
        self.put_u8(v as u8);
    }
    /// A u32 length, then `v`.
    fn put_blob32(&mut self, v: &[u8]) {
        self.put_u32_le(v.len() as u32);
        self.put_slice(v);
    }
}

impl<B: BufMut + ?Sized> PutLe for B {}

/// `x` rounded up to the 512-byte sector RSL calls a page.
pub const fn round_up_512(x: usize) -> usize {
    (x + 511) & !511
}

/// The size of a page (disk sector) in RSL's formats.
pub const PAGE: usize = 512;

/// Appends `n` zero bytes.
pub fn put_zeros(out: &mut BytesMut, n: usize) {
    out.put_bytes(0, n);
}
