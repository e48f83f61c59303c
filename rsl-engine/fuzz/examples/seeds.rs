//! Writes generated seed inputs into `corpus/<target>/` (git-ignored), to complement the golden
//! files: every message type in every version, multi-record logs, checkpoints of every version
//! with small blocks so that they fit the fuzzers' max_len. Run from `rsl-engine/fuzz`:
//! `cargo run --example seeds`.
use bytes::{Bytes, BytesMut};
use rsl_engine::format::log::encode_record;
use rsl_engine::format::message::{JoinBody, StatusBody};
use rsl_engine::format::packet::encode_into;
use rsl_engine::format::{
    Ballot, Body, CheckpointHeader, CheckpointWriter, Checksum, ConfigInfo, Header, MemberId, MemberSet, Message, Node, Version, VoteBody,
};
use std::path::Path;

fn id(s: &str) -> MemberId {
    MemberId::new(s).unwrap()
}

fn members(n: usize) -> MemberSet {
    let nodes = (1..=n)
        .map(|i| Node {
            id: id(&i.to_string()),
            ip: [127, 0, 0, i as u8].into(),
            rsl_port: 20000 + i as u16,
            learn_port: 20100 + i as u16,
            app_port: 20200 + i as u16,
            host_name: Bytes::from(format!("host{i}")),
        })
        .collect();
    MemberSet { nodes, cookie: Bytes::from_static(b"cookie") }
}

fn vote(v: Version, decree: u64, ballot: u32, requests: usize, reconfig: bool) -> Message {
    let body = VoteBody {
        cookie: if v.has_cookie() { Bytes::from_static(b"primary") } else { Bytes::new() },
        reconfig: (reconfig && v.has_config()).then(|| members(2)),
        relinquish: v.has_relinquish() && decree.is_multiple_of(2),
        requests: (0..requests).map(|i| Bytes::from(vec![b'a' + i as u8; 3 + i])).collect(),
    };
    Message::new(Header::new(v, id("1"), decree, 1, Ballot::new(ballot, id("1"))), Body::Vote(body))
}

fn messages(v: Version) -> Vec<Message> {
    let h = |decree| Header::new(v, id("2"), decree, 1, Ballot::new(3, id("2")));
    let status = StatusBody {
        query_decree: 7,
        query_ballot: Ballot::new(3, id("1")),
        last_received_ago_ms: 12,
        min_decree_in_log: 1,
        checkpointed_decree: 4,
        checkpoint_size: 1048,
        max_ballot: Ballot::new(3, id("2")),
        state: 2,
    };
    let join = JoinBody { learn_port: 20101, min_decree_in_log: 1, checkpointed_decree: 4, checkpoint_size: 1048 };
    let mut out = vec![
        vote(v, 5, 2, 0, false),
        vote(v, 6, 2, 3, false),
        vote(v, 7, 2, 0, true),
        Message::new(h(5), Body::VoteAccepted),
        Message::new(h(5), Body::Prepare(Bytes::from_static(b"primary"))),
        Message::new(h(5), Body::NotAccepted),
        Message::new(h(5), Body::StatusQuery),
        Message::new(h(5), Body::StatusResponse(status)),
        Message::new(h(5), Body::FetchVotes),
        Message::new(h(4), Body::FetchCheckpoint),
        Message::new(h(5), Body::ReconfigurationDecision),
        Message::new(h(0), Body::DefunctConfiguration),
        Message::new(h(0), Body::Join(join)),
        Message::new(h(0), Body::JoinRequest),
        Message::new(h(0), Body::Bootstrap(members(3))),
    ];
    for inner in [Version::V1, Version::V3, v] {
        out.push(Message::new(h(5), Body::PrepareAccepted(Box::new(vote(inner, 5, 2, 2, false)))));
    }
    out
}

fn checkpoint(dir: &Path, v: Version, block_size: u32, data_len: usize) -> Vec<u8> {
    let path = dir.join("seed.codex");
    let _ = std::fs::remove_file(&path);
    let header = CheckpointHeader {
        version: v,
        member: id("1"),
        last_executed: 4,
        max_ballot: Ballot::new(2, id("1")),
        config: if v.has_config() { ConfigInfo { number: 1, initial_decree: 1, members: members(3) } } else { ConfigInfo::default() },
        state_saved: true,
        size: 0,
        block_size,
        next_vote: vote(v, 5, 2, 1, false),
    };
    let mut w = CheckpointWriter::create(&path, header).unwrap();
    let data: Vec<u8> = (0..data_len).map(|i| (i * 7 + (i >> 8)) as u8).collect();
    w.write(&data).unwrap();
    w.close().unwrap();
    std::fs::read(&path).unwrap()
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let put = |target: &str, name: String, bytes: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    let tmp = std::env::temp_dir().join(format!("rsl-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for v in Version::ALL {
        let n = v.get();
        for (i, m) in messages(v).iter().enumerate() {
            let Ok(bytes) = m.encode(Checksum::Default) else { continue }; // e.g. reconfiguration before v3
            put("message", format!("v{n}-{i}"), &bytes);
            let mut packet = BytesMut::new();
            encode_into(&bytes, &mut packet);
            put("packet", format!("v{n}-{i}"), &packet);
        }
        for count in [0, 1, 3] {
            let ci = ConfigInfo { number: 2, initial_decree: 9, members: members(count) };
            put("config_info", format!("v{n}-{count}"), &ci.to_bytes(v).unwrap());
        }
        // A log: votes (one re-voted at a higher ballot), a prepare, a reconfiguration and its
        // decision; then the same with a torn last record and with trailing zero pages.
        let mut log = BytesMut::new();
        let h = Header::new(v, id("1"), 6, 1, Ballot::new(3, id("1")));
        for m in [
            vote(v, 5, 2, 2, false),
            vote(v, 6, 2, 1, false),
            Message::new(h.clone(), Body::Prepare(Bytes::from_static(b"primary"))),
            vote(v, 6, 3, 1, false),
            vote(v, 7, 3, 0, true),
            Message::new(Header { decree: 7, ..h }, Body::ReconfigurationDecision),
        ] {
            encode_record(&m, &mut log).unwrap();
        }
        put("log", format!("v{n}"), &log);
        put("log", format!("v{n}-torn"), &log[..log.len() - 300]);
        let mut zeros = log.clone();
        zeros.resize(log.len() + 1024, 0);
        put("log", format!("v{n}-zeros"), &zeros);
        // Checkpoints: small blocks so that several fit in a few KiB.
        let blocks: &[u32] = if v.has_string_ids() { &[0, 512, 1024] } else { &[0] };
        for &bs in blocks {
            for len in [0, 16, 504, 505, 1500, 3000] {
                let file = checkpoint(&tmp, v, bs, len);
                put("checkpoint_reader", format!("v{n}-b{bs}-{len}"), &file);
                if len == 0 {
                    put("checkpoint_header", format!("v{n}-b{bs}"), &file);
                }
            }
        }
    }
    std::fs::remove_dir_all(&tmp).unwrap();
    println!("seeds written under {}", corpus.display());
}
