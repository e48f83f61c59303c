//! RSL messages: the common header and the fourteen message types with their bodies, for
//! protocol versions 1 to 6 (docs/spec/formats.md §4, §5).

use super::checksum;
use super::codec::{DecodeError, EncodeError, PutLe, Reader};
use super::types::{Ballot, MemberId, MemberSet, Version};
use bytes::{BufMut, Bytes, BytesMut};

/// `0xF00DFACE`, at offset 14 of every message.
pub const MAGIC: u32 = 0xF00D_FACE;
/// Where the message checksum sits; it covers `[CHECKSUM_END, length)`.
pub const CHECKSUM_OFFSET: usize = 6;
/// Where the checksummed part of a message begins: after version, length and checksum.
pub const CHECKSUM_END: usize = 14;
/// Offset of the message type code.
pub const MSG_ID_OFFSET: usize = 18;
/// The largest base header of any version (v6).
pub const MAX_HEADER_SIZE: usize = 172;
/// Votes are batched up to this size (`s_AvgMessageLen`).
pub const MAX_BATCH_BYTES: usize = 10 * 1024 * 1024;

/// The message type codes (`msgId`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MsgKind {
    /// A primary proposes a decree (a batch of requests, or a reconfiguration).
    Vote = 1,
    /// A replica accepted a vote.
    VoteAccepted = 2,
    /// A candidate asks the members to promise its ballot.
    Prepare = 3,
    /// A member promised; carries its max accepted vote.
    PrepareAccepted = 4,
    /// A member refuses a vote or prepare of a lower ballot.
    NotAccepted = 5,
    /// Asks a member for its state (elections, Initializing).
    StatusQuery = 6,
    /// The answer to a StatusQuery.
    StatusResponse = 7,
    /// A learn-port request for logged votes from a decree on.
    FetchVotes = 8,
    /// A learn-port request for a checkpoint.
    FetchCheckpoint = 9,
    /// The decision that a reconfiguration vote was chosen.
    ReconfigurationDecision = 10,
    /// A configuration has been replaced; the receiver should learn the newer one.
    DefunctConfiguration = 11,
    /// A replica announces itself to the members of its configuration.
    Join = 12,
    /// Asks a member to send a Join.
    JoinRequest = 13,
    /// The first configuration, sent to a replica that has none.
    Bootstrap = 14,
}

impl MsgKind {
    /// The kind of a type code; `None` for codes RSL does not define.
    pub fn from_code(code: u16) -> Option<MsgKind> {
        use MsgKind::*;
        Some(match code {
            1 => Vote,
            2 => VoteAccepted,
            3 => Prepare,
            4 => PrepareAccepted,
            5 => NotAccepted,
            6 => StatusQuery,
            7 => StatusResponse,
            8 => FetchVotes,
            9 => FetchCheckpoint,
            10 => ReconfigurationDecision,
            11 => DefunctConfiguration,
            12 => Join,
            13 => JoinRequest,
            14 => Bootstrap,
            _ => return None,
        })
    }

    /// The type code on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The kinds that appear as log records.
    pub fn is_log_record(self) -> bool {
        matches!(self, MsgKind::Vote | MsgKind::Prepare | MsgKind::ReconfigurationDecision)
    }
}

/// The header fields every message carries. `length` and `checksum` are not stored: they are
/// computed when encoding and checked against the raw bytes when decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The message's protocol version; every replica of a ring uses one.
    pub version: Version,
    /// The sender, or for a vote the member that proposed it.
    pub sender: MemberId,
    /// The decree the message is about.
    pub decree: u64,
    /// Not on the wire before v3; read as 1 there.
    pub config: u32,
    /// The ballot the message is about.
    pub ballot: Ballot,
    /// Not on the wire before v6; read as 0 there.
    pub payload: u64,
}

impl Header {
    /// The encoded size of the header ("base size") in version `v`.
    pub fn size(v: Version) -> usize {
        let id = v.member_id_size();
        20 + id + 8 + if v.has_config() { 4 } else { 0 } + 4 + id + if v.has_payload() { 8 } else { 0 }
    }

    /// A header with `payload` 0.
    pub fn new(version: Version, sender: MemberId, decree: u64, config: u32, ballot: Ballot) -> Header {
        Header { version, sender, decree, config, ballot, payload: 0 }
    }
}

/// Peek at the start of a message: its version, declared length and stored checksum, each
/// validated as `Message::UnMarshal` does. Works on the first 14 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// The protocol version.
    pub version: Version,
    /// The message's declared length in bytes, header included.
    pub length: u32,
    /// The stored checksum (0: none).
    pub checksum: u64,
}

impl Prefix {
    /// Decodes and validates the prefix at the reader's position and moves past it.
    pub fn decode(r: &mut Reader<'_>) -> Result<Prefix, DecodeError> {
        let at = r.pos();
        let prefix = Prefix::parse(r.rest()).map_err(|e| e.shifted(at))?;
        r.skip_to(at + CHECKSUM_END);
        Ok(prefix)
    }

    /// The same checks on the first bytes of a slice (offsets relative to it), so that
    /// checksum verification and log scanning need no copy.
    pub fn parse(b: &[u8]) -> Result<Prefix, DecodeError> {
        let field = |what, at: usize, n: usize| {
            b.get(at..at + n).ok_or(DecodeError::Truncated { what, offset: at, need: n, have: b.len().saturating_sub(at) })
        };
        let raw_version = u16::from_le_bytes(field("version", 0, 2)?.try_into().expect("2 bytes"));
        let version = Version::new(raw_version).ok_or(DecodeError::Invalid { what: "version", offset: 0, value: raw_version as u64 })?;
        let length = u32::from_le_bytes(field("length", 2, 4)?.try_into().expect("4 bytes"));
        if (length as usize) < Header::size(version) {
            return Err(DecodeError::Invalid { what: "length", offset: 2, value: length as u64 });
        }
        let checksum = u64::from_le_bytes(field("checksum", 6, 8)?.try_into().expect("8 bytes"));
        Ok(Prefix { version, length, checksum })
    }
}

/// The body of a Vote (docs/spec/formats.md §5.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VoteBody {
    /// The primary cookie (v2+).
    pub cookie: Bytes,
    /// The new configuration of a reconfiguration vote (v3+); such a vote has no requests.
    pub reconfig: Option<MemberSet>,
    /// The primary's last vote (v5+).
    pub relinquish: bool,
    /// Client requests, each non-empty.
    pub requests: Vec<Bytes>,
}

/// The body of a StatusResponse (§5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusBody {
    /// The decree the query named.
    pub query_decree: u64,
    /// The ballot the query named.
    pub query_ballot: Ballot,
    /// Milliseconds since the responder received its max accepted vote.
    pub last_received_ago_ms: i64,
    /// The oldest decree in the responder's log.
    pub min_decree_in_log: u64,
    /// The decree of the responder's newest checkpoint.
    pub checkpointed_decree: u64,
    /// That checkpoint's size in bytes.
    pub checkpoint_size: u64,
    /// The highest ballot the responder has seen.
    pub max_ballot: Ballot,
    /// 0 inactive, 1 stable primary, 2 stable secondary, 3 preparing, 4 initializing.
    pub state: u32,
}

/// The body of a Join (§5.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinBody {
    /// The port the joining replica serves learners on.
    pub learn_port: u16,
    /// The oldest decree in its log.
    pub min_decree_in_log: u64,
    /// The decree of its newest checkpoint.
    pub checkpointed_decree: u64,
    /// That checkpoint's size in bytes.
    pub checkpoint_size: u64,
}

/// What follows the header, by message type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A vote: cookie, requests or reconfiguration.
    Vote(VoteBody),
    /// The header alone: the responder's highest accepted decree and its highest ballot.
    VoteAccepted,
    /// The primary cookie (v2+).
    Prepare(Bytes),
    /// The responder's max accepted vote, a complete message in its own version.
    PrepareAccepted(Box<Message>),
    /// The header alone: the responder's highest accepted decree and its highest ballot.
    NotAccepted,
    /// The header alone: the sender's highest accepted decree and ballot.
    StatusQuery,
    /// The responder's state.
    StatusResponse(StatusBody),
    /// The header alone: its decree is the requester's highest accepted one, the first it wants.
    FetchVotes,
    /// The header alone: its decree names the checkpoint wanted.
    FetchCheckpoint,
    /// The header alone: the decree and ballot of the reconfiguration vote chosen.
    ReconfigurationDecision,
    /// The header alone: its configuration number is the highest defunct one.
    DefunctConfiguration,
    /// The joiner's learn port and log bounds.
    Join(JoinBody),
    /// The header alone: its configuration is the one the sender wants to join.
    JoinRequest,
    /// The initial member set.
    Bootstrap(MemberSet),
}

impl Body {
    /// The message type this body belongs to.
    pub fn kind(&self) -> MsgKind {
        match self {
            Body::Vote(_) => MsgKind::Vote,
            Body::VoteAccepted => MsgKind::VoteAccepted,
            Body::Prepare(_) => MsgKind::Prepare,
            Body::PrepareAccepted(_) => MsgKind::PrepareAccepted,
            Body::NotAccepted => MsgKind::NotAccepted,
            Body::StatusQuery => MsgKind::StatusQuery,
            Body::StatusResponse(_) => MsgKind::StatusResponse,
            Body::FetchVotes => MsgKind::FetchVotes,
            Body::FetchCheckpoint => MsgKind::FetchCheckpoint,
            Body::ReconfigurationDecision => MsgKind::ReconfigurationDecision,
            Body::DefunctConfiguration => MsgKind::DefunctConfiguration,
            Body::Join(_) => MsgKind::Join,
            Body::JoinRequest => MsgKind::JoinRequest,
            Body::Bootstrap(_) => MsgKind::Bootstrap,
        }
    }
}

/// A decoded RSL message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The fields every message has.
    pub header: Header,
    /// The type and its body.
    pub body: Body,
}

/// Whether `encode` fills in the message checksum. Votes always carry one; Prepare and
/// ReconfigurationDecision get one when they are logged; everything else is sent with 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// A checksum for votes, 0 for every other type (what goes on the Paxos port).
    Default,
    /// A checksum whatever the type (what goes in a log record).
    Always,
}

impl Message {
    /// A message of `header` and `body`.
    pub fn new(header: Header, body: Body) -> Message {
        Message { header, body }
    }

    /// Its type.
    pub fn kind(&self) -> MsgKind {
        self.body.kind()
    }

    /// The vote's body, if it is a vote.
    pub fn as_vote(&self) -> Option<&VoteBody> {
        match &self.body {
            Body::Vote(v) => Some(v),
            _ => None,
        }
    }

    /// Appends the encoded message to `out` and returns its length.
    pub fn encode_into(&self, out: &mut BytesMut, checksum: Checksum) -> Result<usize, EncodeError> {
        let v = self.header.version;
        let start = out.len();
        out.reserve(Header::size(v) + self.body_size_hint());
        out.put_u16_le(v.get());
        out.put_u32_le(0); // length, patched below
        out.put_u64_le(0); // checksum, patched below
        out.put_u32_le(MAGIC);
        out.put_u16_le(self.kind().code());
        let h = &self.header;
        h.sender.encode(out, v)?;
        out.put_u64_le(h.decree);
        if v.has_config() {
            out.put_u32_le(h.config);
        }
        h.ballot.encode(out, v)?;
        if v.has_payload() {
            out.put_u64_le(h.payload);
        }
        debug_assert_eq!(out.len() - start, Header::size(v));
        self.encode_body(out)?;
        let len = out.len() - start;
        let len32 = u32::try_from(len).map_err(|_| EncodeError::TooLong { what: "message", len, max: u32::MAX as usize })?;
        out[start + 2..start + 6].copy_from_slice(&len32.to_le_bytes());
        if checksum == Checksum::Always || self.kind() == MsgKind::Vote {
            let sum = checksum::checksum(&out[start + CHECKSUM_END..]);
            out[start + CHECKSUM_OFFSET..start + CHECKSUM_END].copy_from_slice(&sum.to_le_bytes());
        }
        Ok(len)
    }

    /// The encoded message on its own.
    pub fn encode(&self, checksum: Checksum) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::new();
        self.encode_into(&mut out, checksum)?;
        Ok(out.freeze())
    }

    fn body_size_hint(&self) -> usize {
        match &self.body {
            Body::Vote(b) => 16 + b.cookie.len() + b.requests.iter().map(|r| 4 + r.len()).sum::<usize>(),
            Body::PrepareAccepted(m) => Header::size(m.header.version) + m.body_size_hint(),
            _ => 64,
        }
    }

    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let v = self.header.version;
        match &self.body {
            Body::Vote(b) => encode_vote_body(b, out, v)?,
            Body::Prepare(cookie) => {
                if v.has_cookie() {
                    out.put_blob32(cookie);
                }
            }
            Body::PrepareAccepted(vote) => {
                if vote.kind() != MsgKind::Vote {
                    return Err(EncodeError::Unsupported("a PrepareAccepted embedding a non-vote", v.get()));
                }
                vote.encode_into(out, Checksum::Default)?;
            }
            Body::StatusResponse(s) => {
                out.put_u64_le(s.query_decree);
                s.query_ballot.encode(out, v)?;
                out.put_i64_le(s.last_received_ago_ms);
                out.put_u64_le(s.min_decree_in_log);
                out.put_u64_le(s.checkpointed_decree);
                out.put_u64_le(s.checkpoint_size);
                s.max_ballot.encode(out, v)?;
                out.put_u32_le(s.state);
            }
            Body::Join(j) => {
                out.put_u16_le(j.learn_port);
                out.put_u64_le(j.min_decree_in_log);
                out.put_u64_le(j.checkpointed_decree);
                out.put_u64_le(j.checkpoint_size);
            }
            Body::Bootstrap(set) => set.encode(out, v)?,
            Body::VoteAccepted
            | Body::NotAccepted
            | Body::StatusQuery
            | Body::FetchVotes
            | Body::FetchCheckpoint
            | Body::ReconfigurationDecision
            | Body::DefunctConfiguration
            | Body::JoinRequest => {}
        }
        Ok(())
    }

    /// Decodes exactly one message occupying all of `buf`. The stored checksum is not checked
    /// (the Paxos port relies on the packet checksum); use [`verify_checksum`] where it matters.
    pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
        let mut r = Reader::new(buf);
        let msg = Message::decode_from(&mut r)?;
        if !r.is_empty() {
            return Err(DecodeError::Malformed { what: "message", offset: r.pos(), detail: "bytes after the declared length" });
        }
        Ok(msg)
    }

    /// Decodes one message at the reader's position; it ends where its length field says.
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
        let (kind, header, end) = Header::decode(r)?;
        // The body may not read past the declared length.
        let mut body = r.sub(end);
        let b = decode_body(kind, &mut body, header.version)?;
        if !body.is_empty() && kind != MsgKind::Vote {
            return Err(DecodeError::Malformed { what: "message body", offset: body.pos(), detail: "bytes after the body" });
        }
        r.skip_to(end);
        Ok(Message { header, body: b })
    }
}

impl Header {
    /// Decodes the header of the message at the reader's position (everything
    /// [`Message::decode_from`] checks before the body) and leaves the reader at the body.
    /// Returns the message type, the header, and where the message ends by its length field,
    /// which is checked to lie within the reader. For tools that show what they can of a
    /// message whose body is damaged.
    pub fn decode(r: &mut Reader<'_>) -> Result<(MsgKind, Header, usize), DecodeError> {
        let start = r.pos();
        let prefix = Prefix::decode(r)?;
        let v = prefix.version;
        let end = start + prefix.length as usize;
        if prefix.length as usize > r.remaining() + CHECKSUM_END {
            return Err(DecodeError::Truncated {
                what: "message",
                offset: start,
                need: prefix.length as usize,
                have: r.remaining() + CHECKSUM_END,
            });
        }
        let at = r.pos();
        let magic = r.u32("magic")?;
        if magic != MAGIC {
            return Err(r.invalid("magic", at, magic as u64));
        }
        let at = r.pos();
        let code = r.u16("message type")?;
        let kind = MsgKind::from_code(code).ok_or(r.invalid("message type", at, code as u64))?;
        let header = Header {
            version: v,
            sender: MemberId::decode(r, v)?,
            decree: r.u64("decree")?,
            config: if v.has_config() { r.u32("configuration number")? } else { 1 },
            ballot: Ballot::decode(r, v)?,
            payload: if v.has_payload() { r.u64("payload")? } else { 0 },
        };
        Ok((kind, header, end))
    }
}

fn encode_vote_body(b: &VoteBody, out: &mut BytesMut, v: Version) -> Result<(), EncodeError> {
    if v.has_cookie() {
        out.put_blob32(&b.cookie);
    }
    if v.has_config() {
        out.put_bool(b.reconfig.is_some());
        if let Some(set) = &b.reconfig {
            set.encode(out, v)?;
        }
    } else if b.reconfig.is_some() {
        return Err(EncodeError::Unsupported("a reconfiguration vote", v.get()));
    }
    if v.has_relinquish() {
        out.put_bool(b.relinquish);
    }
    for req in &b.requests {
        if req.is_empty() {
            return Err(EncodeError::EmptyRequest);
        }
        out.put_blob32(req);
    }
    Ok(())
}

fn decode_body(kind: MsgKind, r: &mut Reader<'_>, v: Version) -> Result<Body, DecodeError> {
    Ok(match kind {
        MsgKind::Vote => Body::Vote(decode_vote_body(r, v)?),
        MsgKind::VoteAccepted => Body::VoteAccepted,
        MsgKind::Prepare => Body::Prepare(if v.has_cookie() { r.blob32("primary cookie")? } else { Bytes::new() }),
        MsgKind::PrepareAccepted => {
            // Check the embedded type before decoding its body: a PrepareAccepted embedding
            // another would otherwise recurse once per 48 bytes and overflow the stack.
            let at = r.pos();
            let (kind, header, end) = Header::decode(r)?;
            if kind != MsgKind::Vote {
                return Err(r.invalid("embedded vote type", at + MSG_ID_OFFSET, kind.code() as u64));
            }
            let vote = decode_vote_body(&mut r.sub(end), header.version)?;
            r.skip_to(end);
            Body::PrepareAccepted(Box::new(Message { header, body: Body::Vote(vote) }))
        }
        MsgKind::NotAccepted => Body::NotAccepted,
        MsgKind::StatusQuery => Body::StatusQuery,
        MsgKind::StatusResponse => Body::StatusResponse(StatusBody {
            query_decree: r.u64("query decree")?,
            query_ballot: Ballot::decode(r, v)?,
            last_received_ago_ms: r.i64("last received ago")?,
            min_decree_in_log: r.u64("min decree in log")?,
            checkpointed_decree: r.u64("checkpointed decree")?,
            checkpoint_size: r.u64("checkpoint size")?,
            max_ballot: Ballot::decode(r, v)?,
            state: r.u32("state")?,
        }),
        MsgKind::FetchVotes => Body::FetchVotes,
        MsgKind::FetchCheckpoint => Body::FetchCheckpoint,
        MsgKind::ReconfigurationDecision => Body::ReconfigurationDecision,
        MsgKind::DefunctConfiguration => Body::DefunctConfiguration,
        MsgKind::Join => Body::Join(JoinBody {
            learn_port: r.u16("learn port")?,
            min_decree_in_log: r.u64("min decree in log")?,
            checkpointed_decree: r.u64("checkpointed decree")?,
            checkpoint_size: r.u64("checkpoint size")?,
        }),
        MsgKind::JoinRequest => Body::JoinRequest,
        MsgKind::Bootstrap => Body::Bootstrap(MemberSet::decode(r, v)?),
    })
}

fn decode_vote_body(r: &mut Reader<'_>, v: Version) -> Result<VoteBody, DecodeError> {
    let cookie = if v.has_cookie() { r.blob32("primary cookie")? } else { Bytes::new() };
    let reconfig = if v.has_config() && r.bool("reconfiguration flag")? { Some(MemberSet::decode(r, v)?) } else { None };
    let relinquish = v.has_relinquish() && r.bool("relinquish flag")?;
    let mut requests = Vec::new();
    while !r.is_empty() {
        let at = r.pos();
        let len = r.u32("request length")?;
        if len == 0 {
            return Err(r.invalid("request length", at, 0));
        }
        requests.push(r.bytes(len as usize, "request")?);
    }
    Ok(VoteBody { cookie, reconfig, relinquish, requests })
}

/// Checks the stored message checksum of the message that starts at `buf[0]` against the raw
/// bytes `[14, length)` as they are, never re-encoded (the original leaves indeterminate bytes
/// inside that range).
pub fn verify_checksum(buf: &[u8]) -> Result<(), DecodeError> {
    let prefix = Prefix::parse(buf)?;
    let len = prefix.length as usize;
    if len > buf.len() {
        return Err(DecodeError::Truncated { what: "message", offset: 0, need: len, have: buf.len() });
    }
    let computed = checksum::checksum(&buf[CHECKSUM_END..len]);
    if computed != prefix.checksum {
        return Err(DecodeError::Checksum { what: "message checksum", offset: CHECKSUM_OFFSET, stored: prefix.checksum, computed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MemberId {
        MemberId::new(s).unwrap()
    }

    fn vote_a(v: Version) -> Message {
        Message::new(
            Header::new(v, id("1"), 5, 1, Ballot::new(2, id("1"))),
            Body::Vote(VoteBody { requests: vec![Bytes::from_static(b"hello")], ..Default::default() }),
        )
    }

    #[test]
    fn header_sizes() {
        let sizes: Vec<usize> = Version::ALL.iter().map(|&v| Header::size(v)).collect();
        assert_eq!(sizes, [48, 48, 52, 164, 164, 172]);
    }

    #[test]
    fn vote_a_checksums_match_the_spec() {
        let expect =
            [(Version::V1, 57, 0x98A52EFBADC620F7u64), (Version::V3, 66, 0xA141D46D2FFF8B6F), (Version::V6, 187, 0x51ADC2C3A4EC8675)];
        for (v, len, sum) in expect {
            let bytes = vote_a(v).encode(Checksum::Default).unwrap();
            assert_eq!(bytes.len(), len);
            assert_eq!(u64::from_le_bytes(bytes[6..14].try_into().unwrap()), sum);
            verify_checksum(&bytes).unwrap();
            assert_eq!(Message::decode(&bytes).unwrap(), vote_a(v));
        }
    }

    #[test]
    fn vote_request_errors_name_their_offset() {
        let mut bytes = BytesMut::from(&vote_a(Version::V6).encode(Checksum::Default).unwrap()[..]);
        // Claim the request is 6 bytes: it overruns the message.
        bytes[178] = 6;
        let err = Message::decode(&bytes.clone().freeze()).unwrap_err();
        assert_eq!(err, DecodeError::Truncated { what: "request", offset: 182, need: 6, have: 5 });
        bytes[178] = 0;
        let err = Message::decode(&bytes.freeze()).unwrap_err();
        assert_eq!(err, DecodeError::Invalid { what: "request length", offset: 178, value: 0 });
    }

    #[test]
    fn huge_length_field_is_rejected_without_allocating() {
        let mut bytes = BytesMut::from(&vote_a(Version::V6).encode(Checksum::Default).unwrap()[..]);
        bytes[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = Message::decode(&bytes.freeze()).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated { what: "message", offset: 0, .. }));
    }

    #[test]
    fn checksum_mismatch_is_reported() {
        let mut bytes = BytesMut::from(&vote_a(Version::V4).encode(Checksum::Default).unwrap()[..]);
        bytes[100] ^= 1;
        assert!(matches!(verify_checksum(&bytes), Err(DecodeError::Checksum { offset: 6, .. })));
    }

    /// `levels` v1 PrepareAccepted headers, each embedding the next, around an empty v1 vote.
    fn nested_prepare_accepted(levels: usize) -> Bytes {
        let mut buf = BytesMut::with_capacity(48 * (levels + 1));
        for i in 0..=levels {
            let len = (48 * (levels + 1 - i)) as u32;
            // version 1, length, checksum 0, magic, type (4 PrepareAccepted, 1 Vote at the
            // bottom), then member id, decree, ballot id and ballot member, all 0.
            buf.put_slice(&[1, 0]);
            buf.put_slice(&len.to_le_bytes());
            buf.put_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0xCE, 0xFA, 0x0D, 0xF0, if i == levels { 1 } else { 4 }, 0]);
            buf.put_bytes(0, 28);
        }
        buf.freeze()
    }

    #[test]
    fn nested_prepare_accepted_is_rejected_without_recursing() {
        // Found while writing the `message` fuzz target: a PrepareAccepted's embedded message
        // was decoded in full (recursing into its own PrepareAccepted body) before its type was
        // checked, so 100,000 nested levels (4.8 MB, within the 100 MiB packet limit) overflowed
        // the stack. The type is now checked before the embedded body is decoded.
        let err = Message::decode(&nested_prepare_accepted(100_000)).unwrap_err();
        assert_eq!(err, DecodeError::Invalid { what: "embedded vote type", offset: 48 + MSG_ID_OFFSET, value: 4 });
        let one = Message::decode(&nested_prepare_accepted(1)).unwrap();
        assert!(matches!(&one.body, Body::PrepareAccepted(vote) if vote.kind() == MsgKind::Vote && vote.header.decree == 0));
    }

    #[test]
    fn reconfiguration_cannot_be_written_before_v3() {
        let mut m = vote_a(Version::V2);
        if let Body::Vote(b) = &mut m.body {
            b.reconfig = Some(MemberSet::default());
        }
        assert!(matches!(m.encode(Checksum::Default), Err(EncodeError::Unsupported(..))));
    }
}
