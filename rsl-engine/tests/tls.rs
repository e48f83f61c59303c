//! Mutual TLS between real `rsl-kv replica` processes (issue 10): a TLS ring replicates and a
//! replica far behind catches up from a checkpoint over the TLS learn port; peers without an
//! admitted certificate (none at all, self-signed, another CA, the right CA but a name the
//! ring does not admit, the right CA and name but a key the ring's pins do not admit, expired) are refused at the handshake and never reach the core; a
//! member's certificate speaks for that member only;
//! certificates are rotated one replica at a time while writes go on; `rsl-kv cluster --tls`
//! runs as the README says.
//!
//! Certificates come from `rsl_engine::runtime::tls::issue` (a CA made per test).

#[path = "../src/bin/rsl-kv/client.rs"]
mod client;
#[path = "../src/bin/rsl-kv/proto.rs"]
mod proto;
mod support;

use bytes::{BufMut, Bytes, BytesMut};
use client::{Conn, ReplicaStatus};
use proto::Status;
use rsl_engine::format::message::JoinBody;
use rsl_engine::format::{Ballot, Body, Checksum, Header, MemberId, Message, Version, VoteBody};
use rsl_engine::runtime::tls::issue::{self, Ca, Issued, LeafSpec};
use rsl_engine::runtime::tls::{IdentitySource, PeerRules, SpkiPin, Tls, TlsSettings, TlsStream};
use rsl_engine::runtime::transport::frame;
use rustls_pki_types::{pem::PemObject, CertificateDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use support::{catch_up_from_a_checkpoint, load_while, primary, rt, spec, status, verify, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

const HOUR: Duration = Duration::from_secs(3600);
/// A refused connection is closed within this (the handshake bound is 10 s).
const CLOSE_BOUND: Duration = Duration::from_secs(15);

/// A certificate as files.
#[derive(Clone)]
struct Cert {
    cert: PathBuf,
    key: PathBuf,
}

/// Writes `issued` as `<dir>/<name>.crt` and `.key`.
fn save(dir: &Path, name: &str, issued: &Issued) -> Cert {
    std::fs::create_dir_all(dir).expect("pki dir");
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, &issued.cert_pem).expect("write cert");
    std::fs::write(&key, &issued.key_pem).expect("write key");
    Cert { cert, key }
}

/// A CA for one test, its bundle on disk.
struct Pki {
    ca: Ca,
    dir: PathBuf,
    bundle: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("pki dir");
        let ca = Ca::new(name);
        let bundle = dir.join("ca.crt");
        std::fs::write(&bundle, ca.cert_pem()).expect("write CA");
        Pki { ca, dir, bundle }
    }

    /// A leaf named `name` valid from an hour ago for a day.
    fn leaf(&self, name: &str) -> Cert {
        let now = SystemTime::now();
        self.leaf_valid(name, now - HOUR, now + 24 * HOUR)
    }

    fn leaf_valid(&self, name: &str, not_before: SystemTime, not_after: SystemTime) -> Cert {
        let issued = self.ca.issue(&LeafSpec { name, not_before, not_after });
        save(&self.dir, &format!("{name}-{}", issued.thumbprint), &issued)
    }
}

/// `rsl-kv replica` options for mutual TLS with `cert`, admitting chains to `bundles` that
/// name one of `names`.
fn tls_args(bundles: &[&Path], cert: &Cert, names: &[&str]) -> Vec<String> {
    // One bundle file holds every CA admitted.
    let bundle = if bundles.len() == 1 {
        bundles[0].to_path_buf()
    } else {
        let joined: String = bundles.iter().map(|b| std::fs::read_to_string(b).expect("bundle")).collect();
        let path = cert.cert.with_extension("bundle");
        std::fs::write(&path, joined).expect("write bundle");
        path
    };
    let mut args = vec!["--tls-ca".to_string(), path(&bundle), "--tls-cert".into(), path(&cert.cert), "--tls-key".into(), path(&cert.key)];
    for name in names {
        args.extend(["--tls-name".into(), name.to_string()]);
    }
    args
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

const MEMBERS: [&str; 3] = ["1", "2", "3"];

/// A 3-replica ring whose replica i runs with `args(i)`; replicas log to files.
fn ring(extra: &[&str], pki_name: &str, args: impl Fn(&Pki, usize) -> Vec<String>) -> (Cluster, Pki) {
    let mut c = Cluster::new(3, 0, extra);
    c.log_to_files = true;
    let pki = Pki::new(c.dir.path(), pki_name);
    for i in 0..3 {
        c.launch[i].args = args(&pki, i);
    }
    for i in 0..3 {
        c.spawn(i, true);
    }
    (c, pki)
}

/// A TLS ring: replica i presents a certificate naming `i + 1` from the ring's CA and admits
/// the members' names.
fn tls_cluster(extra: &[&str]) -> (Cluster, Pki) {
    ring(extra, "ring-ca", |pki, i| tls_args(&[&pki.bundle], &pki.leaf(MEMBERS[i]), &MEMBERS))
}

/// Every replica's status, failing if one does not answer.
async fn statuses(c: &Cluster) -> Vec<ReplicaStatus> {
    let mut out = Vec::new();
    for i in 0..3 {
        out.push(
            timeout(Duration::from_secs(5), status(c.client(i)))
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("status of replica {}", i + 1)),
        );
    }
    out
}

fn id(s: &str) -> MemberId {
    MemberId::new(s).expect("member id")
}

fn message(sender: MemberId, decree: u64, config: u32, ballot: Ballot, body: Body) -> Message {
    Message::new(Header::new(Version::V6, sender, decree, config, ballot), body)
}

/// A put of `key` as the replicated request `rsl-kv` executes.
fn put_body(key: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16_le(key.len() as u16);
    b.put_slice(key);
    b.put_slice(b"forged value");
    b.freeze()
}

/// Writes `bytes` on a plain connection to `addr` and returns everything that comes back
/// before the replica closes it (bounded: failing if it stays open).
async fn plain_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = timeout(Duration::from_secs(5), TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let read = timeout(CLOSE_BOUND, s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "{addr} kept a plain connection open for {CLOSE_BOUND:?} after {} bytes", bytes.len());
    got
}

/// Nothing but (at most) a TLS alert record came back: no RSL packet, no vote, no checkpoint.
fn nothing_but_an_alert(got: &[u8], what: &str) {
    assert!(
        got.is_empty() || (got[0] == 0x15 && got.len() <= 7),
        "{what}: {} bytes came back: {:02x?}",
        got.len(),
        &got[..got.len().min(32)]
    );
}

/// A TLS connection to `addr` presenting `cert`, trusting the ring's CA for the server's side;
/// `None` if the handshake fails here.
async fn connect_with(addr: SocketAddr, cert: &Cert, ring_ca: &Path) -> Option<TlsStream<TcpStream>> {
    let settings = TlsSettings {
        identity: IdentitySource::Files { cert: cert.cert.clone(), key: cert.key.clone() },
        peers: PeerRules { ca: Some(ring_ca.to_path_buf()), require_chain: true, ..PeerRules::default() },
    };
    let tls = Tls::load(&settings).expect("the test's own settings load");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tls.connect(tcp).await.ok().map(|(stream, _)| stream)
}

/// Handshakes with `addr` presenting `cert`, then sends `packet`; true if the replica
/// answered it with data, or kept the connection open with the packet sent.
async fn admitted_with(addr: SocketAddr, cert: &Cert, ring_ca: &Path, packet: &[u8]) -> bool {
    // With TLS 1.3 the client may finish before the server has judged its certificate: the
    // refusal then shows as the connection closing.
    let Some(mut stream) = connect_with(addr, cert, ring_ca).await else { return false };
    if stream.write_all(packet).await.is_err() || stream.flush().await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match timeout(CLOSE_BOUND, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => false,
        Ok(Ok(_)) => true,
        Err(_) => true, // still open: the replica took the connection
    }
}

/// Waits (bounded) until every replica holds `keys` keys, failing if one holds more.
async fn holding(c: &Cluster, keys: u64) -> Vec<ReplicaStatus> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let now = statuses(c).await;
        assert!(now.iter().all(|s| s.keys <= keys), "more than {keys} keys: a forged write was executed: {now:?}");
        if now.iter().all(|s| s.keys == keys) {
            return now;
        }
        assert!(Instant::now() < until, "the replicas never held {keys} keys: {now:?}{}", c.diagnosis());
        sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until replica `i` reports at least `at_least` refused handshakes.
async fn refused_reaches(c: &Cluster, i: usize, at_least: u64) -> ReplicaStatus {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(c.client(i)).await.expect("status");
        if s.tls_refused >= at_least {
            return s;
        }
        assert!(
            Instant::now() < until,
            "replica {} counted {} refused handshakes, expected {at_least}{}",
            i + 1,
            s.tls_refused,
            c.diagnosis()
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// One write through the primary, within 20 s.
async fn write_one(c: &Cluster, key: &[u8]) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let p = primary(c).await;
        if let Ok(Ok(mut conn)) = timeout(Duration::from_secs(2), Conn::connect(c.client(p))).await {
            if matches!(timeout(Duration::from_secs(5), conn.put(key, b"v")).await, Ok(Ok((Status::Ok, _)))) {
                return;
            }
        }
        assert!(Instant::now() < until, "no write within 20 s{}", c.diagnosis());
        sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_tls_ring_replicates_and_a_replica_far_behind_catches_up_from_a_checkpoint() {
    rt().block_on(async {
        let (mut c, _pki) = tls_cluster(&["--max-log-mb", "1"]);
        // The stopped replica can only catch up by fetching a checkpoint over the TLS learn port.
        catch_up_from_a_checkpoint(&mut c, 1500).await;
        c.assert_no_panic();
    });
}

#[test]
fn peers_without_an_admitted_certificate_never_reach_the_core() {
    rt().block_on(async {
        let (mut c, pki) = tls_cluster(&[]);
        let p = primary(&c).await;
        write_one(&c, b"before").await;
        let target = (p + 1) % 3;
        // Settled: a primary answers a write before it publishes its key count.
        let before = holding(&c, 1).await;
        let decree = before[p].seq + 1;
        let claimed = id(&(p + 1).to_string());

        // Plain TCP with valid RSL packets: a Prepare outbidding everything, a Vote for the next
        // decree as if from the primary (executed, it would add a key), a Join.
        let vote = VoteBody { requests: vec![put_body(b"forged")], ..Default::default() };
        let join = JoinBody { learn_port: 1, min_decree_in_log: 0, checkpointed_decree: 0, checkpoint_size: 0 };
        let forged = [
            message(claimed, decree, 1, Ballot::new(u32::MAX, claimed), Body::Prepare(Bytes::new())),
            message(claimed, decree, 1, Ballot::new(1000, claimed), Body::Vote(vote)),
            message(id("666"), 0, 2, Ballot::EMPTY, Body::Join(join)),
        ];
        for msg in &forged {
            for i in 0..3 {
                let got = plain_exchange(c.paxos(i), &frame(msg, &mut BytesMut::new())).await;
                nothing_but_an_alert(&got, &format!("plain {:?} to replica {}", msg.kind(), i + 1));
            }
        }
        // Plain FetchCheckpoint and FetchVotes on the learn port get nothing.
        let learn_request = |body| message(claimed, 1, 1, Ballot::EMPTY, body).encode(Checksum::Default).expect("encode");
        for body in [Body::FetchCheckpoint, Body::FetchVotes] {
            let request = learn_request(body);
            for i in 0..3 {
                let got = plain_exchange(c.learn(i), &request).await;
                nothing_but_an_alert(&got, &format!("plain learn request to replica {}", i + 1));
            }
        }

        // TLS with certificates the ring must refuse, each sending a valid packet.
        let now = SystemTime::now();
        let outsiders = Pki::new(c.dir.path(), "other-ca");
        let bad = [
            ("self-signed", save(&pki.dir, "self-signed", &issue::self_signed(&(target + 1).to_string()))),
            ("from another CA", outsiders.leaf(&(target + 1).to_string())),
            ("from the ring's CA naming a non-member", pki.leaf("666")),
            ("expired", pki.leaf_valid(&(p + 1).to_string(), now - 48 * HOUR, now - 24 * HOUR)),
        ];
        let status_query = frame(&message(claimed, decree, 1, Ballot::EMPTY, Body::StatusQuery), &mut BytesMut::new());
        let fetch_votes = learn_request(Body::FetchVotes);
        for (what, cert) in &bad {
            for (port, request) in [(c.paxos(target), &status_query[..]), (c.learn(target), &fetch_votes[..])] {
                assert!(!admitted_with(port, cert, &pki.bundle, request).await, "a certificate {what} was admitted on {port}");
            }
        }
        // The control: the same FetchVotes with a member's certificate gets votes.
        let member = pki.leaf(&claimed.to_string());
        assert!(admitted_with(c.learn(target), &member, &pki.bundle, &fetch_votes).await, "a member's certificate was refused");
        // On `target`: three plain packets, two plain learn requests, each bad certificate on
        // both ports.
        let refused = 3 + 2 + 2 * bad.len() as u64;
        refused_reaches(&c, target, before[target].tls_refused + refused).await;

        // Nothing reached the core: no message dropped there, the forged Vote not executed,
        // the primary unmoved; the ring still takes writes.
        write_one(&c, b"after").await;
        let after = holding(&c, before[p].keys + 1).await;
        for i in 0..3 {
            assert_eq!(after[i].messages_rejected, before[i].messages_rejected, "replica {}: a message reached the core", i + 1);
            assert!(after[i].tls_refused > before[i].tls_refused, "replica {} counted no refused handshake", i + 1);
        }

        // Identity binding: a connection with the certificate of member `other` speaks for it
        // only; the same Vote claiming the primary's id is dropped and counted.
        let other = 3 - p - target;
        let cert = pki.leaf(&(other + 1).to_string());
        let vote = VoteBody { requests: vec![put_body(b"forged by a member")], ..Default::default() };
        let forged_vote = frame(&message(claimed, decree + 1, 1, Ballot::new(1000, claimed), Body::Vote(vote)), &mut BytesMut::new());
        let mut conn = connect_with(c.paxos(target), &cert, &pki.bundle).await.expect("a member's certificate is admitted");
        conn.write_all(&forged_vote).await.expect("send");
        conn.flush().await.expect("flush");
        let until = Instant::now() + Duration::from_secs(10);
        while status(c.client(target)).await.expect("status").messages_rejected <= after[target].messages_rejected {
            assert!(Instant::now() < until, "a Vote claiming member {claimed} over member {}'s certificate was not rejected", other + 1);
            sleep(Duration::from_millis(50)).await;
        }
        drop(conn);
        write_one(&c, b"bound").await;
        holding(&c, before[p].keys + 2).await;
        assert_eq!(primary(&c).await, p, "the forged Prepare unseated the primary");
        c.assert_alive();
        c.assert_no_panic();
    });
}

/// The pin of the key in a PEM certificate file, as `--tls-pin` takes it.
fn pin_of(cert: &Cert) -> String {
    let der = CertificateDer::from_pem_file(&cert.cert).expect("a PEM certificate");
    SpkiPin::of(&der).expect("a certificate").to_string()
}

#[test]
fn a_ring_admitting_by_spki_pins_refuses_the_right_ca_and_name_with_another_key() {
    rt().block_on(async {
        let mut c = Cluster::new(3, 0, &[]);
        c.log_to_files = true;
        let pki = Pki::new(c.dir.path(), "pinned-ca");
        let leaves: Vec<Cert> = MEMBERS.iter().map(|m| pki.leaf(m)).collect();
        let pins: Vec<String> = leaves.iter().map(pin_of).collect();
        for (i, leaf) in leaves.iter().enumerate() {
            let mut args = tls_args(&[&pki.bundle], leaf, &[]);
            for pin in &pins {
                args.extend(["--tls-pin".into(), pin.clone()]);
            }
            c.launch[i].args = args;
        }
        for i in 0..3 {
            c.spawn(i, true);
        }
        let p = primary(&c).await;
        write_one(&c, b"pinned").await;
        let target = (p + 1) % 3;
        let before = holding(&c, 1).await;
        let fetch_votes = message(id(MEMBERS[p]), 1, 1, Ballot::EMPTY, Body::FetchVotes).encode(Checksum::Default).expect("encode");
        // The primary's own name from the ring's CA, but a new key: no pin admits it.
        let rekeyed = pki.leaf(MEMBERS[p]);
        assert!(!admitted_with(c.learn(target), &rekeyed, &pki.bundle, &fetch_votes).await, "a key no pin names was admitted");
        refused_reaches(&c, target, before[target].tls_refused + 1).await;
        assert!(admitted_with(c.learn(target), &leaves[p], &pki.bundle, &fetch_votes).await, "the pinned key was refused");
        write_one(&c, b"still pinned").await;
        holding(&c, before[p].keys + 1).await;
        c.assert_no_panic();
    });
}

#[test]
fn certificates_rotate_one_replica_at_a_time_while_writes_go_on() {
    rt().block_on(async {
        // The procedure's first step is done: every replica admits the old CA and the new one
        // (the bundle holds both) and presents its old certificate.
        let dir = tempfile::tempdir().expect("tempdir");
        let new = Pki::new(dir.path(), "new-ca");
        let new_certs: Vec<Cert> = MEMBERS.iter().map(|m| new.leaf(m)).collect();
        let (mut c, old) = ring(&[], "old-ca", |old, i| tls_args(&[&old.bundle, &new.bundle], &old.leaf(MEMBERS[i]), &MEMBERS));
        primary(&c).await;
        // Under load, each replica in turn restarts onto its new certificate: old and new
        // certificates meet during the overlap.
        let spec = spec(1500);
        let acked = load_while(&mut c, &spec, async |c, _| {
            for (i, cert) in new_certs.iter().enumerate() {
                c.kill9(i);
                c.launch[i].args = tls_args(&[&old.bundle, &new.bundle], cert, &MEMBERS);
                c.spawn(i, true);
                primary(c).await;
            }
        })
        .await;
        verify(&c, &[0, 1, 2], &acked, &spec).await;
        // Last step, one at a time again: the old CA is dropped; after it, a certificate from
        // the old CA is refused everywhere while the ring keeps its primary and takes writes.
        for (i, cert) in new_certs.iter().enumerate() {
            c.kill9(i);
            c.launch[i].args = tls_args(&[&new.bundle], cert, &MEMBERS);
            c.spawn(i, true);
        }
        write_one(&c, b"after rotation").await;
        let old_cert = old.leaf("1");
        let probe = frame(&message(id("1"), 1, 1, Ballot::EMPTY, Body::StatusQuery), &mut BytesMut::new());
        for i in 0..3 {
            assert!(!admitted_with(c.paxos(i), &old_cert, &new.bundle, &probe).await, "replica {} still admits the old CA", i + 1);
        }
        c.assert_no_panic();
    });
}

#[test]
fn rsl_kv_cluster_with_tls_runs_as_the_readme_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Its ports are the OS's free ones, as the README runs it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rsl-kv"))
        .args(["cluster", "--tls", "--duration", "2", "--outstanding", "16", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .expect("rsl-kv cluster runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "rsl-kv cluster --tls: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"tls\":true") && stdout.contains("\"replicas_agree\":true"), "{stdout}");
    assert!(!stdout.contains("\"requests\":0,"), "no request went through: {stdout}");
    for file in ["ca.crt", "1.crt", "1.key", "3.crt"] {
        assert!(dir.path().join("tls").join(file).is_file(), "tls/{file} is missing");
    }
}
