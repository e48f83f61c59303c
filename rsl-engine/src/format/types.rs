//! The structures shared by messages, log records and checkpoints: protocol versions, member
//! ids, ballots, nodes, member sets and configuration info (docs/spec/formats.md §3).

use super::codec::{DecodeError, EncodeError, PutLe, Reader};
use bytes::{BufMut, Bytes, BytesMut};
use std::cmp::Ordering;
use std::fmt;
use std::net::Ipv4Addr;

/// Decrees at or above this are refused wherever one arrives from a socket or a file: no ring
/// gets there (at a million decrees a second, 2^62 takes 146,000 years), and the room above it
/// keeps every `+ 1` and window sum on a decree from overflowing.
pub const DECREE_LIMIT: u64 = 1 << 62;
/// Configuration numbers at or above this are refused likewise (one per reconfiguration).
pub const CONFIGURATION_LIMIT: u32 = 1 << 31;

/// A protocol version the formats know, 1 to 6. What each adds is in docs/spec/formats.md §6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(u16);

impl Version {
    /// The first protocol version: numeric member ids, no cookie.
    pub const V1: Version = Version(1);
    /// Adds the primary cookie to Vote and Prepare.
    pub const V2: Version = Version(2);
    /// Adds configuration numbers and reconfiguration.
    pub const V3: Version = Version(3);
    /// String member ids (64 bytes on the wire), learn port in the member set.
    pub const V4: Version = Version(4);
    /// Adds the relinquish flag of a primary's last vote.
    pub const V5: Version = Version(5);
    /// Adds the header's payload (`SetVotePayload`); the original's newest.
    pub const V6: Version = Version(6);
    /// Ours, not the original's: the v6 layout, with the header's `payload` carrying what
    /// pipelining needs (docs/core.md). The original rejects it.
    pub const V7: Version = Version(7);
    /// The original's versions.
    pub const ALL: [Version; 6] = [Self::V1, Self::V2, Self::V3, Self::V4, Self::V5, Self::V6];

    /// The version `v`, or `None` outside 1 to 7.
    pub fn new(v: u16) -> Option<Version> {
        (1..=7).contains(&v).then_some(Version(v))
    }
    /// Several decrees in flight, with an explicit chosen watermark (v7).
    pub fn is_pipelined(self) -> bool {
        self.0 >= 7
    }
    /// The version's number.
    pub fn get(self) -> u16 {
        self.0
    }
    /// Vote and Prepare carry a primary cookie.
    pub fn has_cookie(self) -> bool {
        self.0 >= 2
    }
    /// Headers carry a configuration number; votes may reconfigure.
    pub fn has_config(self) -> bool {
        self.0 >= 3
    }
    /// Member ids are 64-byte strings rather than u64 numbers.
    pub fn has_string_ids(self) -> bool {
        self.0 >= 4
    }
    /// Votes carry the relinquish-primary byte.
    pub fn has_relinquish(self) -> bool {
        self.0 >= 5
    }
    /// Headers carry the u64 vote payload.
    pub fn has_payload(self) -> bool {
        self.0 >= 6
    }
    /// Encoded size of a member id.
    pub fn member_id_size(self) -> usize {
        if self.has_string_ids() {
            MemberId::WIRE_SIZE
        } else {
            8
        }
    }
    /// Encoded size of a ballot.
    pub fn ballot_size(self) -> usize {
        4 + self.member_id_size()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A replica's identity: up to 63 non-NUL bytes, ordered shorter-first then bytewise, so that
/// `"9" < "10"` as in the original's ballot comparison.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberId {
    len: u8,
    buf: [u8; MemberId::MAX_LEN],
}

impl MemberId {
    /// The longest id, in bytes (the 64-byte wire field less its NUL).
    pub const MAX_LEN: usize = 63;
    /// The v4+ field: the id, a NUL, and (in the original's files) indeterminate bytes.
    pub const WIRE_SIZE: usize = 64;
    /// The empty id: no member (the empty ballot's).
    pub const EMPTY: MemberId = MemberId { len: 0, buf: [0; Self::MAX_LEN] };

    /// An id from its bytes; `None` if longer than 63 bytes or containing a NUL.
    pub fn from_bytes(b: &[u8]) -> Option<MemberId> {
        if b.len() > Self::MAX_LEN || b.contains(&0) {
            return None;
        }
        let mut id = MemberId::EMPTY;
        id.buf[..b.len()].copy_from_slice(b);
        id.len = b.len() as u8;
        Some(id)
    }

    /// The id `s`; `None` if longer than 63 bytes or containing a NUL.
    pub fn new(s: &str) -> Option<MemberId> {
        Self::from_bytes(s.as_bytes())
    }

    /// The id's bytes, without a NUL.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// Whether this is the empty id.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number a v1–v3 message carries: the id parsed like C's `strtoull(s, &end, 0)` with
    /// the whole string consumed (`0x` prefix hex, leading `0` octal); empty is 0.
    pub fn to_numeric(&self) -> Option<u64> {
        let s = std::str::from_utf8(self.as_bytes()).ok()?;
        if s.is_empty() {
            return Some(0);
        }
        let (digits, radix) = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            (hex, 16)
        } else if s.len() > 1 && s.starts_with('0') {
            (&s[1..], 8)
        } else {
            (s, 10)
        };
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        u64::from_str_radix(digits, radix).ok()
    }

    /// The id a v1–v3 number stands for: 0 is the empty id, any other its decimal rendering.
    pub fn from_numeric(n: u64) -> MemberId {
        if n == 0 {
            MemberId::EMPTY
        } else {
            MemberId::new(&n.to_string()).expect("a u64 has at most 20 digits")
        }
    }

    /// Reads an id in version `v`: a decimal u64 before v4, a 64-byte NUL-padded field from v4.
    pub fn decode(r: &mut Reader<'_>, v: Version) -> Result<MemberId, DecodeError> {
        if !v.has_string_ids() {
            return Ok(MemberId::from_numeric(r.u64("member id")?));
        }
        let at = r.pos();
        let field: [u8; Self::WIRE_SIZE] = r.array("member id")?;
        // Bytes after the first NUL are indeterminate in the original's files and ignored.
        let len = field.iter().position(|&b| b == 0).ok_or(DecodeError::Malformed {
            what: "member id",
            offset: at,
            detail: "no NUL within its 64 bytes",
        })?;
        Ok(MemberId::from_bytes(&field[..len]).expect("len < 64 and no NUL before it"))
    }

    /// Writes the id in version `v`; before v4 it must be a decimal number.
    pub fn encode(&self, out: &mut impl BufMut, v: Version) -> Result<(), EncodeError> {
        if v.has_string_ids() {
            out.put_slice(self.as_bytes());
            // We always write zeros after the NUL, never the original's stack garbage.
            out.put_bytes(0, Self::WIRE_SIZE - self.as_bytes().len());
        } else {
            let n = self.to_numeric().ok_or_else(|| EncodeError::NonNumericMemberId(self.to_string()))?;
            out.put_u64_le(n);
        }
        Ok(())
    }
}

impl Default for MemberId {
    fn default() -> Self {
        MemberId::EMPTY
    }
}

impl Ord for MemberId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.len.cmp(&other.len).then_with(|| self.as_bytes().cmp(other.as_bytes()))
    }
}

impl PartialOrd for MemberId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A Paxos ballot. Ordered by number, then by member id (the derive follows field order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    /// The ballot number; a new election takes one above every one seen.
    pub id: u32,
    /// The member that proposed the ballot: ties between equal numbers are broken by it.
    pub member: MemberId,
}

impl Ballot {
    /// The ballot below every other: nothing promised yet.
    pub const EMPTY: Ballot = Ballot { id: 0, member: MemberId::EMPTY };

    /// Ballot `id` of `member`.
    pub fn new(id: u32, member: MemberId) -> Ballot {
        Ballot { id, member }
    }

    /// Whether this is [`Ballot::EMPTY`].
    pub fn is_empty(&self) -> bool {
        *self == Ballot::EMPTY
    }

    /// Reads a ballot in version `v`.
    pub fn decode(r: &mut Reader<'_>, v: Version) -> Result<Ballot, DecodeError> {
        Ok(Ballot { id: r.u32("ballot id")?, member: MemberId::decode(r, v)? })
    }

    /// Writes the ballot in version `v`.
    pub fn encode(&self, out: &mut impl BufMut, v: Version) -> Result<(), EncodeError> {
        out.put_u32_le(self.id);
        self.member.encode(out, v)
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({},{})", self.id, self.member)
    }
}

/// One replica in a member set (`RSLNode` as marshalled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The member id.
    pub id: MemberId,
    /// The replica's IPv4 address.
    pub ip: Ipv4Addr,
    /// The Paxos port.
    pub rsl_port: u16,
    /// Persisted from v4 on; 0 means "rsl_port + 1".
    pub learn_port: u16,
    /// Persisted in v1–v3 only (deprecated).
    pub app_port: u16,
    /// At most 255 bytes, not NUL-terminated on the wire.
    pub host_name: Bytes,
}

impl Node {
    /// The longest host name, in bytes.
    pub const MAX_HOST_NAME: usize = 255;

    /// The smallest encoding of a node: id, ip, two ports and an empty host name.
    fn min_size(v: Version) -> usize {
        v.member_id_size() + 10
    }

    fn decode(r: &mut Reader<'_>, v: Version) -> Result<Node, DecodeError> {
        let id = MemberId::decode(r, v)?;
        let ip = Ipv4Addr::from(r.array::<4>("node ip")?);
        let rsl_port = r.u16("rsl port")?;
        let port2 = r.u16("learn/app port")?;
        let at = r.pos();
        let host_len = r.u16("host name length")?;
        if host_len as usize > Self::MAX_HOST_NAME {
            // The original asserts here; we reject.
            return Err(r.invalid("host name length", at, host_len as u64));
        }
        let host_name = r.bytes(host_len as usize, "host name")?;
        let (learn_port, app_port) = if v.has_string_ids() { (port2, 0) } else { (0, port2) };
        Ok(Node { id, ip, rsl_port, learn_port, app_port, host_name })
    }

    fn encode(&self, out: &mut BytesMut, v: Version) -> Result<(), EncodeError> {
        if self.host_name.len() > Self::MAX_HOST_NAME {
            return Err(EncodeError::TooLong { what: "host name", len: self.host_name.len(), max: Self::MAX_HOST_NAME });
        }
        self.id.encode(out, v)?;
        out.put_slice(&self.ip.octets());
        out.put_u16_le(self.rsl_port);
        out.put_u16_le(if v.has_string_ids() { self.learn_port } else { self.app_port });
        out.put_u16_le(self.host_name.len() as u16);
        out.put_slice(&self.host_name);
        Ok(())
    }
}

/// The replicas of a configuration and its opaque configuration cookie (`RSLMemberSet`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberSet {
    /// The replicas, in the order the configuration lists them.
    pub nodes: Vec<Node>,
    /// The configuration cookie (`RSLMemberSet::GetConfigurationCookie`), up to 8 KiB.
    pub cookie: Bytes,
}

impl MemberSet {
    /// The longest configuration cookie, in bytes.
    pub const MAX_COOKIE: usize = 8192;

    /// Reads a member set in version `v`, refusing counts and lengths the format does not allow.
    pub fn decode(r: &mut Reader<'_>, v: Version) -> Result<MemberSet, DecodeError> {
        let count = r.u16("member count")? as usize;
        // Capacity is bounded by what the remaining bytes could possibly hold.
        let mut nodes = Vec::with_capacity(count.min(r.remaining() / Node::min_size(v)));
        for _ in 0..count {
            nodes.push(Node::decode(r, v)?);
        }
        let at = r.pos();
        let cookie_len = r.u32("member set cookie length")?;
        if cookie_len as usize > Self::MAX_COOKIE {
            return Err(r.invalid("member set cookie length", at, cookie_len as u64));
        }
        let cookie = r.bytes(cookie_len as usize, "member set cookie")?;
        Ok(MemberSet { nodes, cookie })
    }

    /// Writes the member set in version `v`.
    pub fn encode(&self, out: &mut BytesMut, v: Version) -> Result<(), EncodeError> {
        if self.nodes.len() > u16::MAX as usize {
            return Err(EncodeError::TooLong { what: "member set", len: self.nodes.len(), max: u16::MAX as usize });
        }
        if self.cookie.len() > Self::MAX_COOKIE {
            return Err(EncodeError::TooLong { what: "member set cookie", len: self.cookie.len(), max: Self::MAX_COOKIE });
        }
        out.put_u16_le(self.nodes.len() as u16);
        for node in &self.nodes {
            node.encode(out, v)?;
        }
        out.put_blob32(&self.cookie);
        Ok(())
    }

    /// What makes the set unusable as a configuration, if anything: an empty member id (the
    /// original's `MemberSet::Verify` misses it) or an id named twice. An empty set passes
    /// (a checkpoint before v3 has none).
    pub fn flaw(&self) -> Option<&'static str> {
        let mut ids: Vec<&MemberId> = self.nodes.iter().map(|n| &n.id).collect();
        ids.sort_unstable();
        if ids.first().is_some_and(|id| id.is_empty()) {
            Some("an empty member id")
        } else if ids.windows(2).any(|w| w[0] == w[1]) {
            Some("a member id named twice")
        } else {
            None
        }
    }

    /// Encoded size in version `v`.
    pub fn encoded_len(&self, v: Version) -> usize {
        2 + self.nodes.iter().map(|n| Node::min_size(v) + n.host_name.len()).sum::<usize>() + 4 + self.cookie.len()
    }
}

/// A configuration: its number, the first decree it governs, and its members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigInfo {
    /// The configuration number, from 1; each reconfiguration adds one.
    pub number: u32,
    /// The first decree the configuration governs.
    pub initial_decree: u64,
    /// Its replicas.
    pub members: MemberSet,
}

impl ConfigInfo {
    /// Reads a ConfigurationInfo in version `v`.
    pub fn decode(r: &mut Reader<'_>, v: Version) -> Result<ConfigInfo, DecodeError> {
        Ok(ConfigInfo {
            number: r.u32("configuration number")?,
            initial_decree: r.u64("initial decree")?,
            members: MemberSet::decode(r, v)?,
        })
    }

    /// Writes it in version `v`.
    pub fn encode(&self, out: &mut BytesMut, v: Version) -> Result<(), EncodeError> {
        out.put_u32_le(self.number);
        out.put_u64_le(self.initial_decree);
        self.members.encode(out, v)
    }

    /// Its encoded size in version `v`.
    pub fn encoded_len(&self, v: Version) -> usize {
        12 + self.members.encoded_len(v)
    }

    /// Decodes a whole buffer holding exactly one ConfigurationInfo.
    pub fn from_bytes(buf: &Bytes, v: Version) -> Result<ConfigInfo, DecodeError> {
        let mut r = Reader::new(buf);
        let ci = ConfigInfo::decode(&mut r, v)?;
        if !r.is_empty() {
            return Err(DecodeError::Malformed { what: "configuration info", offset: r.pos(), detail: "trailing bytes" });
        }
        Ok(ci)
    }

    /// Encodes it in version `v` into a new buffer.
    pub fn to_bytes(&self, v: Version) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::with_capacity(self.encoded_len(v));
        self.encode(&mut out, v)?;
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MemberId {
        MemberId::new(s).unwrap()
    }

    #[test]
    fn member_ids_order_length_first() {
        assert!(id("9") < id("10"));
        assert!(id("") < id("0"));
        assert!(id("ab") < id("ac"));
        assert!(Ballot::new(1, id("99")) < Ballot::new(2, id("1")));
        assert!(Ballot::new(2, id("9")) < Ballot::new(2, id("10")));
    }

    #[test]
    fn numeric_ids_follow_strtoull_base_detection() {
        assert_eq!(id("").to_numeric(), Some(0));
        assert_eq!(id("12").to_numeric(), Some(12));
        assert_eq!(id("010").to_numeric(), Some(8));
        assert_eq!(id("0x1F").to_numeric(), Some(31));
        assert_eq!(id("0").to_numeric(), Some(0));
        assert_eq!(id("09").to_numeric(), None);
        assert_eq!(id("abc").to_numeric(), None);
        assert_eq!(id("0x").to_numeric(), None);
        assert_eq!(id("99999999999999999999999").to_numeric(), None);
        assert_eq!(MemberId::from_numeric(8), id("8"));
        assert_eq!(MemberId::from_numeric(0), MemberId::EMPTY);
    }

    #[test]
    fn member_id_rejects_missing_nul_and_ignores_tail() {
        let mut raw = vec![b'x'; 64];
        let buf = Bytes::from(raw.clone());
        let err = MemberId::decode(&mut Reader::new(&buf), Version::V4).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { offset: 0, .. }));
        raw[1] = 0; // "x", NUL, then garbage
        let buf = Bytes::from(raw);
        assert_eq!(MemberId::decode(&mut Reader::new(&buf), Version::V4).unwrap(), id("x"));
    }

    #[test]
    fn member_id_construction_limits() {
        assert!(MemberId::new(&"a".repeat(63)).is_some());
        assert!(MemberId::new(&"a".repeat(64)).is_none());
        assert!(MemberId::from_bytes(b"a\0b").is_none());
    }

    #[test]
    fn oversized_host_name_and_cookie_are_rejected() {
        let mut bad = BytesMut::new();
        bad.put_u16_le(1);
        MemberId::EMPTY.encode(&mut bad, Version::V4).unwrap();
        bad.put_slice(&[127, 0, 0, 1, 0, 0, 0, 0]);
        bad.put_u16_le(256);
        let bad = bad.freeze();
        let err = MemberSet::decode(&mut Reader::new(&bad), Version::V4).unwrap_err();
        assert_eq!(err, DecodeError::Invalid { what: "host name length", offset: 74, value: 256 });

        let mut bad = BytesMut::new();
        bad.put_u16_le(0);
        bad.put_u32_le(8193);
        let bad = bad.freeze();
        let err = MemberSet::decode(&mut Reader::new(&bad), Version::V4).unwrap_err();
        assert_eq!(err, DecodeError::Invalid { what: "member set cookie length", offset: 2, value: 8193 });
    }

    #[test]
    fn huge_member_count_does_not_preallocate() {
        let buf = Bytes::from_static(&[0xff, 0xff, 0, 0]);
        let err = MemberSet::decode(&mut Reader::new(&buf), Version::V4).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated { what: "member id", .. }));
    }
}
