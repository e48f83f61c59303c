//! Votes, configuration info and wire messages written by the original: decode them, check
//! the field values of docs/spec/formats.md §12–§13, and re-encode them to the identical bytes.

use bytes::{Bytes, BytesMut};
use compat_tests::{ballot, id, read, u64_at};
use rsl_engine::format::message::{verify_checksum, JoinBody, StatusBody};
use rsl_engine::format::packet::{self, Frame};
use rsl_engine::format::{log, Body, Checksum, ConfigInfo, Header, MemberId, Message, MsgKind, Version, VoteBody};
use std::net::Ipv4Addr;

/// Decodes a message file and checks that encoding the result gives the same bytes back.
fn decode_exact(bytes: &Bytes) -> Message {
    let msg = Message::decode(bytes).expect("golden message decodes");
    let again = msg.encode(Checksum::Default).expect("re-encodes");
    assert_eq!(again, *bytes, "re-encoding {:?} changed its bytes", msg.kind());
    msg
}

fn vote_a(v: Version) -> Message {
    Message::new(
        Header::new(v, id("1"), 5, 1, ballot(2, "1")),
        Body::Vote(VoteBody { requests: vec![Bytes::from_static(b"hello")], ..Default::default() }),
    )
}

#[test]
fn vote_a_in_every_version() {
    let dir = compat_tests::golden_dir();
    let expected = [
        (57, 0x98A52EFBADC620F7u64),
        (61, 0x24DB5442254C77E5),
        (66, 0xA141D46D2FFF8B6F),
        (178, 0x634e99f0c4f0c94f),
        (179, 0xfc13f2ff937d2574),
        (187, 0x51ADC2C3A4EC8675),
    ];
    for (v, (len, sum)) in Version::ALL.into_iter().zip(expected) {
        let bytes = read(&dir, &format!("vote_v{}.bin", v.get()));
        assert_eq!(bytes.len(), len, "{v}");
        assert_eq!(u64_at(&bytes, 6), sum, "{v} checksum");
        verify_checksum(&bytes).unwrap();
        let msg = decode_exact(&bytes);
        assert_eq!(msg, vote_a(v), "{v}");
        assert_eq!(msg.encode(Checksum::Default).unwrap(), vote_a(v).encode(Checksum::Default).unwrap());

        // As a log record: the same bytes zero-padded to 512.
        let padded = read(&dir, &format!("vote_v{}_padded.bin", v.get()));
        assert_eq!(padded.len(), 512);
        assert_eq!(&padded[..len], &bytes[..]);
        assert!(padded[len..].iter().all(|&b| b == 0));
        let mut record = BytesMut::new();
        log::encode_record(&msg, &mut record).unwrap();
        assert_eq!(record, padded);
        let scanned = log::LogContents::scan(&padded, log::Mode::Strict).unwrap();
        assert_eq!(scanned.records.len(), 1);
        assert_eq!(scanned.records[0].message, msg);
    }
}

#[test]
fn vote_with_cookie_relinquish_and_two_requests() {
    let dir = compat_tests::golden_dir();
    let bytes = read(&dir, "vote_v6_cookie_relinquish.bin");
    assert_eq!(bytes.len(), 196);
    verify_checksum(&bytes).unwrap();
    let msg = decode_exact(&bytes);
    assert_eq!(msg.header, Header::new(Version::V6, id("1"), 9, 3, ballot(7, "1")));
    assert_eq!(
        msg.body,
        Body::Vote(VoteBody {
            cookie: Bytes::from_static(b"CK"),
            reconfig: None,
            relinquish: true,
            requests: vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")],
        })
    );
}

fn check_two_member_set(ci: &ConfigInfo, v: Version) {
    assert_eq!((ci.number, ci.initial_decree), (1, 1));
    let set = &ci.members;
    assert_eq!(set.cookie, Bytes::from_static(b"cfg"));
    assert_eq!(set.nodes.len(), 2);
    for (i, node) in set.nodes.iter().enumerate() {
        assert_eq!(node.id, id(&(i + 1).to_string()));
        assert_eq!(node.ip, Ipv4Addr::new(127, 0, 0, i as u8 + 1));
        assert_eq!(node.rsl_port, 20000 + 10 * i as u16);
        // v3 stores the deprecated app port (0 here); v4 the learn port.
        let expected = if v.has_string_ids() { (20001 + 10 * i as u16, 0) } else { (0, 0) };
        assert_eq!((node.learn_port, node.app_port), expected);
        assert_eq!(node.host_name, Bytes::from(format!("host{}", i + 1)));
    }
}

#[test]
fn configuration_info() {
    let dir = compat_tests::golden_dir();
    for (v, len) in [(Version::V3, 67), (Version::V4, 179)] {
        let bytes = read(&dir, &format!("configinfo_v{}.bin", v.get()));
        assert_eq!(bytes.len(), len);
        let ci = ConfigInfo::from_bytes(&bytes, v).unwrap();
        check_two_member_set(&ci, v);
        assert_eq!(ci.to_bytes(v).unwrap(), bytes);
    }
}

#[test]
fn vote_accepted_and_its_packet() {
    let dir = compat_tests::golden_dir();
    let bytes = read(&dir, "wire/voteaccepted_v6.bin");
    assert_eq!(bytes.len(), 172);
    assert_eq!(u64_at(&bytes, 6), 0, "VoteAccepted carries no checksum");
    let msg = decode_exact(&bytes);
    let mut header = Header::new(Version::V6, id("2"), 5, 1, ballot(2, "1"));
    header.payload = 0x1122334455667788;
    assert_eq!(msg, Message::new(header, Body::VoteAccepted));

    let pkt = read(&dir, "wire/packet_voteaccepted_v6.bin");
    assert_eq!(pkt.len(), 192);
    assert_eq!(u64_at(&pkt, 12), 0xACE885533F29E4A4);
    assert_eq!(packet::decode(&pkt, packet::DEFAULT_MAX_PACKET).unwrap(), Frame::Packet { message: bytes.clone(), consumed: 192 });
    let mut framed = BytesMut::new();
    packet::encode_into(&bytes, &mut framed);
    assert_eq!(framed, pkt);
}

#[test]
fn not_accepted_status_query_and_prepare() {
    let dir = compat_tests::golden_dir();
    let na = decode_exact(&read(&dir, "wire/notaccepted_v4.bin"));
    assert_eq!(na, Message::new(Header::new(Version::V4, id("2"), 5, 1, ballot(3, "2")), Body::NotAccepted));

    let sq = read(&dir, "wire/statusquery_v3.bin");
    assert_eq!(sq.len(), 52);
    let sq = decode_exact(&sq);
    assert_eq!(sq, Message::new(Header::new(Version::V3, id("1"), 0, 1, ballot(0, "")), Body::StatusQuery));

    let prep = read(&dir, "wire/prepare_v6.bin");
    assert_eq!((prep.len(), u64_at(&prep, 6)), (176, 0), "sent before logging: no checksum");
    let prep = decode_exact(&prep);
    assert_eq!(prep, Message::new(Header::new(Version::V6, id("2"), 5, 1, ballot(3, "2")), Body::Prepare(Bytes::new())));
}

#[test]
fn prepare_accepted_embeds_vote_a() {
    let dir = compat_tests::golden_dir();
    let bytes = read(&dir, "wire/prepareaccepted_v6.bin");
    assert_eq!(bytes.len(), 359);
    let msg = decode_exact(&bytes);
    assert_eq!(msg.header, Header::new(Version::V6, id("3"), 5, 1, ballot(3, "2")));
    let Body::PrepareAccepted(vote) = &msg.body else { panic!("not a PrepareAccepted: {:?}", msg.kind()) };
    assert_eq!(**vote, vote_a(Version::V6));
    // The embedded vote keeps its own checksum.
    verify_checksum(&bytes[172..]).unwrap();
    assert_eq!(&bytes[172..], &read(&dir, "vote_v6.bin")[..]);
}

#[test]
fn status_response() {
    let dir = compat_tests::golden_dir();
    let bytes = read(&dir, "wire/statusresponse_v6.bin");
    assert_eq!(bytes.len(), 352);
    let msg = decode_exact(&bytes);
    assert_eq!(msg.header, Header::new(Version::V6, id("2"), 5, 1, ballot(2, "1")));
    assert_eq!(
        msg.body,
        Body::StatusResponse(StatusBody {
            query_decree: 4,
            query_ballot: ballot(1, "1"),
            last_received_ago_ms: 250,
            min_decree_in_log: 1,
            checkpointed_decree: 4,
            checkpoint_size: 4096,
            max_ballot: ballot(2, "1"),
            state: 2,
        })
    );
}

#[test]
fn join_and_bootstrap() {
    let dir = compat_tests::golden_dir();
    let join = read(&dir, "wire/join_v4.bin");
    assert_eq!(join.len(), 190);
    let join = decode_exact(&join);
    assert_eq!(join.header, Header::new(Version::V4, id("3"), 0, 2, ballot(0, "")));
    assert_eq!(join.body, Body::Join(JoinBody { learn_port: 20021, min_decree_in_log: 1, checkpointed_decree: 4, checkpoint_size: 4096 }));

    let boot = read(&dir, "wire/bootstrap_v4.bin");
    assert_eq!(boot.len(), 331);
    let boot = decode_exact(&boot);
    assert_eq!(boot.kind(), MsgKind::Bootstrap);
    assert_eq!(boot.header, Header::new(Version::V4, id("1"), 0, 0, ballot(0, "")));
    let Body::Bootstrap(set) = boot.body else { unreachable!() };
    check_two_member_set(&ConfigInfo { number: 1, initial_decree: 1, members: set }, Version::V4);
    assert_eq!(MemberId::default(), id(""));
}
