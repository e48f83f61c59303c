//! Property tests of the formats: encode then decode is the identity for every type and
//! version; decoding arbitrary bytes never panics; flipping any byte inside a checksummed
//! range is detected.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use rsl_engine::format::checkpoint::{CheckpointError, CheckpointHeader, CheckpointReader, CheckpointWriter};
use rsl_engine::format::log::{self, LogContents, Mode};
use rsl_engine::format::message::{verify_checksum, JoinBody, StatusBody};
use rsl_engine::format::packet::{self, Frame};
use rsl_engine::format::{
    Ballot, Body, Checksum, ConfigInfo, Header, MemberId, MemberSet, Message, Node, Version, VoteBody, CONFIGURATION_LIMIT, DECREE_LIMIT,
};
use std::net::Ipv4Addr;

fn version() -> impl Strategy<Value = Version> {
    (1u16..=7).prop_map(|v| Version::new(v).unwrap())
}

fn blob(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// Ids that survive the version's encoding: numbers in decimal below v4, any string above.
fn member_id(v: Version) -> BoxedStrategy<MemberId> {
    if v.has_string_ids() {
        vec(1u8..=255, 0..=63).prop_map(|b| MemberId::from_bytes(&b).unwrap()).boxed()
    } else {
        prop_oneof![Just(0u64), any::<u64>()].prop_map(MemberId::from_numeric).boxed()
    }
}

fn ballot(v: Version) -> impl Strategy<Value = Ballot> {
    (any::<u32>(), member_id(v)).prop_map(|(id, member)| Ballot { id, member })
}

fn node(v: Version) -> impl Strategy<Value = Node> {
    (member_id(v), any::<[u8; 4]>(), any::<u16>(), any::<u16>(), blob(256)).prop_map(move |(id, ip, rsl_port, port2, host_name)| {
        let (learn_port, app_port) = if v.has_string_ids() { (port2, 0) } else { (0, port2) };
        Node { id, ip: Ipv4Addr::from(ip), rsl_port, learn_port, app_port, host_name }
    })
}

fn member_set(v: Version) -> impl Strategy<Value = MemberSet> {
    (vec(node(v), 0..5), blob(100)).prop_map(|(nodes, cookie)| MemberSet { nodes, cookie })
}

fn config_info(v: Version) -> impl Strategy<Value = ConfigInfo> {
    (any::<u32>(), any::<u64>(), member_set(v)).prop_map(|(number, initial_decree, members)| ConfigInfo { number, initial_decree, members })
}

fn header(v: Version) -> impl Strategy<Value = Header> {
    (member_id(v), any::<u64>(), any::<u32>(), ballot(v), any::<u64>()).prop_map(move |(sender, decree, config, ballot, payload)| Header {
        version: v,
        sender,
        decree,
        config: if v.has_config() { config } else { 1 },
        ballot,
        payload: if v.has_payload() { payload } else { 0 },
    })
}

fn vote_body(v: Version) -> impl Strategy<Value = VoteBody> {
    let reconfig = if v.has_config() { proptest::option::of(member_set(v)).boxed() } else { Just(None).boxed() };
    (blob(40), reconfig, any::<bool>(), vec(vec(any::<u8>(), 1..50).prop_map(Bytes::from), 0..6)).prop_map(
        move |(cookie, reconfig, relinquish, requests)| VoteBody {
            cookie: if v.has_cookie() { cookie } else { Bytes::new() },
            reconfig,
            relinquish: relinquish && v.has_relinquish(),
            requests,
        },
    )
}

fn vote(v: Version) -> impl Strategy<Value = Message> {
    (header(v), vote_body(v)).prop_map(|(h, b)| Message::new(h, Body::Vote(b)))
}

fn any_vote() -> impl Strategy<Value = Message> {
    version().prop_flat_map(vote)
}

fn status(v: Version) -> impl Strategy<Value = StatusBody> {
    (any::<u64>(), ballot(v), any::<i64>(), any::<[u64; 3]>(), ballot(v), any::<u32>()).prop_map(
        |(qd, qb, ago, [min, cpd, cps], mb, state)| StatusBody {
            query_decree: qd,
            query_ballot: qb,
            last_received_ago_ms: ago,
            min_decree_in_log: min,
            checkpointed_decree: cpd,
            checkpoint_size: cps,
            max_ballot: mb,
            state,
        },
    )
}

fn body(v: Version) -> impl Strategy<Value = Body> {
    prop_oneof![
        vote_body(v).prop_map(Body::Vote),
        Just(Body::VoteAccepted),
        blob(40).prop_map(move |c| Body::Prepare(if v.has_cookie() { c } else { Bytes::new() })),
        any_vote().prop_map(|m| Body::PrepareAccepted(Box::new(m))),
        Just(Body::NotAccepted),
        Just(Body::StatusQuery),
        status(v).prop_map(Body::StatusResponse),
        Just(Body::FetchVotes),
        Just(Body::FetchCheckpoint),
        Just(Body::ReconfigurationDecision),
        Just(Body::DefunctConfiguration),
        (any::<u16>(), any::<[u64; 3]>()).prop_map(|(learn_port, [a, b, c])| Body::Join(JoinBody {
            learn_port,
            min_decree_in_log: a,
            checkpointed_decree: b,
            checkpoint_size: c
        })),
        Just(Body::JoinRequest),
        member_set(v).prop_map(Body::Bootstrap),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    version().prop_flat_map(|v| (header(v), body(v)).prop_map(|(h, b)| Message::new(h, b)))
}

/// What the reader accepts of a configuration: numbers below the limits, member ids
/// non-empty and distinct.
fn plausible_config(mut config: ConfigInfo) -> ConfigInfo {
    config.number %= CONFIGURATION_LIMIT;
    config.initial_decree %= DECREE_LIMIT;
    let mut seen = std::collections::HashSet::new();
    config.members.nodes.retain(|n| !n.id.is_empty() && seen.insert(n.id));
    config
}

/// Headers whose fields a given version can carry (v1/v2 derive theirs from the vote), and
/// that the reader accepts (`plausible_config`; decrees below `DECREE_LIMIT`, and the next
/// vote's at least 1 before v3, where the last executed decree is one less).
fn checkpoint_header() -> impl Strategy<Value = CheckpointHeader> {
    version().prop_flat_map(|v| {
        (vote(v), member_id(v), 0..DECREE_LIMIT, ballot(v), config_info(v), any::<bool>(), any::<u64>(), 0u32..16).prop_map(
            move |(mut next_vote, member, last_executed, max_ballot, config, state_saved, size, blocks)| {
                next_vote.header.decree = (next_vote.header.decree % DECREE_LIMIT).max(1);
                let config = plausible_config(config);
                let vh = next_vote.header.clone();
                if !v.has_config() {
                    return CheckpointHeader {
                        version: v,
                        member: vh.sender,
                        last_executed: vh.decree.wrapping_sub(1),
                        max_ballot: vh.ballot,
                        config: ConfigInfo::default(),
                        state_saved: true,
                        size: 0,
                        block_size: 0,
                        next_vote,
                    };
                }
                let four = v.has_string_ids();
                CheckpointHeader {
                    version: v,
                    member,
                    last_executed,
                    max_ballot: max_ballot.max(vh.ballot),
                    config,
                    state_saved: state_saved || !four,
                    size: if four { size } else { 0 },
                    block_size: if four { blocks * 512 } else { 0 },
                    next_vote,
                }
            },
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn message_round_trip(m in message()) {
        let bytes = m.encode(Checksum::Default).unwrap();
        prop_assert_eq!(Message::decode(&bytes).unwrap(), m.clone());
        // With a checksum (as logged), the same message, and the checksum verifies.
        let logged = m.encode(Checksum::Always).unwrap();
        verify_checksum(&logged).unwrap();
        prop_assert_eq!(Message::decode(&logged).unwrap(), m);
    }

    #[test]
    fn config_info_round_trip((v, ci) in version().prop_flat_map(|v| (Just(v), config_info(v)))) {
        let bytes = ci.to_bytes(v).unwrap();
        prop_assert_eq!(bytes.len(), ci.encoded_len(v));
        prop_assert_eq!(ConfigInfo::from_bytes(&bytes, v).unwrap(), ci);
    }

    #[test]
    fn log_records_round_trip(votes in vec(any_vote(), 1..6)) {
        let mut data = BytesMut::new();
        for m in &votes {
            log::encode_record(m, &mut data).unwrap();
        }
        let log = LogContents::scan(&data.freeze(), Mode::Strict).unwrap();
        let decoded: Vec<Message> = log.records.into_iter().map(|r| r.message).collect();
        prop_assert_eq!(decoded, votes);
    }

    #[test]
    fn packet_round_trip(m in message()) {
        let bytes = m.encode(Checksum::Default).unwrap();
        let mut framed = BytesMut::new();
        packet::encode_into(&bytes, &mut framed);
        let framed = framed.freeze();
        prop_assert_eq!(packet::decode(&framed, usize::MAX).unwrap(), Frame::Packet { message: bytes, consumed: framed.len() });
    }

    #[test]
    fn checkpoint_header_round_trip(h in checkpoint_header()) {
        let region = h.encode().unwrap();
        prop_assert_eq!(region.len() % 512, 0);
        let (decoded, l) = CheckpointHeader::decode(&region).unwrap();
        prop_assert_eq!(l, region.len());
        prop_assert_eq!(decoded, h);
    }

    /// A header no ring can have written (a decree or configuration number beyond the limits)
    /// is refused with a typed error, not adopted.
    #[test]
    fn checkpoint_header_beyond_limits_refused(h in checkpoint_header(), over in 0..u64::MAX - DECREE_LIMIT, field in 0..2u8) {
        let mut h = h;
        if field == 0 || !h.version.has_config() {
            h.next_vote.header.decree = DECREE_LIMIT + over;
            h.last_executed = h.next_vote.header.decree - 1;
        } else {
            h.config.number = CONFIGURATION_LIMIT + (over % u64::from(u32::MAX - CONFIGURATION_LIMIT)) as u32;
        }
        prop_assert!(CheckpointHeader::decode(&h.encode().unwrap()).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..1200)) {
        let data = Bytes::from(data);
        let _ = Message::decode(&data);
        let _ = packet::decode(&data, 1 << 20);
        let _ = LogContents::scan(&data, Mode::Restore);
        let _ = LogContents::scan(&data, Mode::Strict);
        let _ = CheckpointHeader::decode(&data);
        for v in Version::ALL {
            let _ = ConfigInfo::from_bytes(&data, v);
        }
    }

    /// Bytes that look like a message (a valid prefix and magic) reach deeper decoder paths.
    #[test]
    fn message_like_bytes_never_panic(v in 1u16..=7, code in 0u16..=15, len in any::<u16>(), rest in vec(any::<u8>(), 0..600)) {
        let mut b = BytesMut::new();
        b.extend_from_slice(&v.to_le_bytes());
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&0xF00D_FACEu32.to_le_bytes());
        b.extend_from_slice(&code.to_le_bytes());
        b.extend_from_slice(&rest);
        let b = b.freeze();
        let _ = Message::decode(&b);
        let mut page = BytesMut::from(&b[..]);
        page.resize(b.len().div_ceil(512).max(1) * 512, 0);
        let _ = LogContents::scan(&page.freeze(), Mode::Restore);
    }

    #[test]
    fn flipped_vote_byte_is_detected(m in any_vote(), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let bytes = m.encode(Checksum::Default).unwrap();
        let i = 14 + at.index(bytes.len() - 14);
        let mut bad = bytes.to_vec();
        bad[i] ^= xor;
        prop_assert!(verify_checksum(&bad).is_err(), "flip at {} undetected", i);
        // In a log, a flipped record in the middle is an error, not a silently shorter log.
        let mut data = BytesMut::new();
        log::pad_record(&bad, &mut data);
        log::encode_record(&m, &mut data).unwrap();
        prop_assert_eq!(LogContents::scan(&data.freeze(), Mode::Restore).unwrap_err().offset, 0);
    }

    #[test]
    fn flipped_packet_byte_is_detected(m in message(), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut framed = BytesMut::new();
        packet::encode_into(&m.encode(Checksum::Default).unwrap(), &mut framed);
        let i = at.index(framed.len());
        framed[i] ^= xor;
        let got = packet::decode(&framed.freeze(), usize::MAX);
        prop_assert!(!matches!(got, Ok(Frame::Packet { .. })), "flip at {} undetected", i);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any flipped byte in a block (data or checksum) fails that block's read.
    #[test]
    fn flipped_checkpoint_byte_is_detected(data in vec(any::<u8>(), 1..3000), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let id = MemberId::new("1").unwrap();
        let b = Ballot::new(1, id);
        let header = CheckpointHeader {
            version: Version::V6,
            member: id,
            last_executed: 4,
            max_ballot: b,
            config: ConfigInfo::default(),
            state_saved: true,
            size: 0,
            block_size: 1024,
            next_vote: Message::new(Header::new(Version::V6, id, 5, 1, b), Body::Vote(VoteBody::default())),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("4.codex");
        let mut w = CheckpointWriter::create(&path, header).unwrap();
        w.write(&data).unwrap();
        let h = w.close().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let l = h.encode().unwrap().len();
        let i = l + at.index(bytes.len() - l);
        bytes[i] ^= xor;
        std::fs::write(&path, &bytes).unwrap();
        let mut r = CheckpointReader::open(&path).unwrap();
        let mut err = None;
        loop {
            match r.get_data_pointer(4096) {
                Ok(_) => {}
                Err(CheckpointError::Eof) => break,
                Err(e) => { err = Some(e); break }
            }
        }
        prop_assert!(matches!(err, Some(CheckpointError::BlockChecksum { .. })), "flip at {} undetected", i);
        prop_assert!(r.blocks().unwrap().iter().any(|b| !b.ok()));
    }
}
