//! The client port of one `rsl-kv` replica process, against what a careless or hostile client
//! sends: a put that does not parse, a configuration change without `--allow-admin`, more
//! connections than the process has descriptors for.

#[path = "../src/bin/rsl-kv/client.rs"]
mod client;
#[path = "../src/bin/rsl-kv/proto.rs"]
mod proto;

use bytes::{BufMut, BytesMut};
use client::Conn;
use proto::Status;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// A one-member ring (it elects itself) in a process of its own, killed when dropped.
struct Replica {
    child: Child,
    client: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Started through `sh -c "ulimit -n <fds>; exec …"` when `fds` is given.
    async fn start(fds: Option<u32>) -> Replica {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_ports();
        let exe = env!("CARGO_BIN_EXE_rsl-kv");
        let (paxos, client) = (port.to_string(), (port + 2).to_string());
        let args = ["replica", "--id", "1", "--port", &paxos, "--client-port", &client, "--members", &format!("1={paxos}"), "--dir"];
        let mut cmd = match fds {
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), exe]);
                sh
            }
            None => Command::new(exe),
        };
        cmd.args(args).arg(dir.path()).stdin(Stdio::null());
        let replica =
            Replica { child: cmd.spawn().expect("spawn rsl-kv"), client: SocketAddr::from((Ipv4Addr::LOCALHOST, port + 2)), _dir: dir };
        client::wait_for_primary(&[replica.client], Duration::from_secs(60)).await.expect("the replica elects itself");
        replica
    }

    async fn conn(&self) -> Conn {
        Conn::connect(self.client).await.expect("connect")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three consecutive free ports (Paxos, learn, client).
fn free_ports() -> u16 {
    loop {
        let base = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        if base < u16::MAX - 3 && (0..3).all(|k| TcpListener::bind((Ipv4Addr::LOCALHOST, base + k)).is_ok()) {
            return base;
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Sends one raw request frame (`op`, id 77, `body`) and waits for its answer.
async fn raw_call(addr: SocketAddr, op: u8, body: &[u8]) -> Status {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let mut out = BytesMut::new();
    out.put_u32_le(9 + body.len() as u32);
    out.put_u8(op);
    out.put_u64_le(77);
    out.put_slice(body);
    conn.write_all(&out).await.expect("send");
    let mut buf = BytesMut::new();
    let answered = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(frame) = proto::take_frame(&mut buf).expect("a response frame") {
                return proto::parse_response(frame);
            }
            assert!(conn.read_buf(&mut buf).await.expect("read") > 0, "closed unanswered");
        }
    });
    let (id, status, _) = answered.await.expect("answered in time");
    assert_eq!(id, 77);
    status
}

#[test]
fn a_put_whose_key_overruns_its_body_is_refused_before_it_is_replicated() {
    rt().block_on(async {
        let r = Replica::start(None).await;
        // Key length 0xFFFF with 5 bytes behind it.
        let body = [&u16::MAX.to_le_bytes()[..], b"hello"].concat();
        assert_eq!(raw_call(r.client, proto::OP_PUT, &body).await, Status::Invalid);
        let mut conn = r.conn().await;
        assert_eq!(conn.put(b"k", b"v").await.expect("put").0, Status::Ok);
        // The summary is published after the batch's answers: wait for it (bounded).
        let until = std::time::Instant::now() + WAIT;
        let mut keys = conn.status().await.expect("status").keys;
        while keys == 0 && std::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            keys = conn.status().await.expect("status").keys;
        }
        assert_eq!(keys, 1, "the bad put changed nothing");
    });
}

#[test]
fn a_configuration_change_needs_allow_admin() {
    rt().block_on(async {
        let r = Replica::start(None).await;
        let mut conn = r.conn().await;
        // A configuration without the only member: it would remove the ring's last replica.
        assert_eq!(conn.change_configuration("2=1").await.expect("change"), Status::Refused);
        let status = conn.status().await.expect("status");
        assert!(status.primary && status.primary_id == "1", "{status:?}");
        assert_eq!(conn.put(b"k", b"v").await.expect("put").0, Status::Ok);
    });
}

#[test]
fn the_client_port_outlives_running_out_of_descriptors() {
    rt().block_on(async {
        let r = Replica::start(Some(64)).await;
        // More connections than the process has descriptors left: the last ones wait unaccepted
        // while accept fails with EMFILE.
        let mut held = Vec::new();
        for _ in 0..80 {
            held.push(TcpStream::connect(r.client).await.expect("connect"));
        }
        let mut waiting = held.pop().expect("one");
        let mut status = BytesMut::new();
        proto::status_request(&mut status, 1);
        waiting.write_all(&status).await.expect("send");
        let mut reply = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut reply)).await {
            Err(_) => {} // it waits, as it should
            Ok(Ok(n)) if n > 0 => panic!("answered: the process was not out of descriptors"),
            Ok(closed) => panic!("the port gave up at EMFILE: {closed:?}"),
        }
        drop(held);
        // Descriptors free again: the port is still there and serves the one that waited.
        let until = Instant::now() + WAIT;
        assert!(tokio::time::timeout_at(until.into(), waiting.read(&mut reply)).await.expect("answered in time").expect("read") > 0);
        let mut conn = r.conn().await;
        assert!(conn.status().await.expect("status").primary);
    });
}
