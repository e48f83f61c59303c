//! Handshakes over in-memory streams: who is admitted, who is refused, and why.

use super::issue::{self, Ca, Issued, LeafSpec};
use super::*;
use std::time::SystemTime;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

const HOUR: Duration = Duration::from_secs(3600);

fn leaf(ca: &Ca, name: &str) -> Issued {
    let now = SystemTime::now();
    ca.issue(&LeafSpec { name, not_before: now - HOUR, not_after: now + HOUR })
}

/// Writes the chain (`issued` then `tail`) and key; returns where.
fn files(dir: &TempDir, issued: &Issued, tail: &str) -> IdentitySource {
    let (cert, key) = issue::write_by_thumbprint(dir.path(), issued).unwrap();
    std::fs::write(&cert, format!("{}{tail}", issued.cert_pem)).unwrap();
    IdentitySource::Files { cert, key }
}

fn ca_rules(dir: &TempDir, ca: &Ca) -> PeerRules {
    let path = dir.path().join("ca.crt");
    std::fs::write(&path, ca.cert_pem()).unwrap();
    PeerRules { ca: Some(path), require_chain: true, ..PeerRules::default() }
}

fn tls(dir: &TempDir, issued: &Issued, peers: PeerRules) -> Tls {
    Tls::load(&TlsSettings { identity: files(dir, issued, ""), peers }).unwrap()
}

/// Admits anyone presenting `peer`'s certificate (for the side not under test).
fn trusting(peer: &Issued) -> PeerRules {
    PeerRules { thumbprints: vec![peer.thumbprint], ..PeerRules::default() }
}

/// One handshake: what the server made of the client, and the client of the server.
async fn handshake(server: &Tls, client: &Tls) -> (io::Result<PeerIdentity>, io::Result<PeerIdentity>) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let (s, c) = tokio::join!(server.accept(a), client.connect(b));
    (s.map(|(_, id)| id), c.map(|(_, id)| id))
}

fn spki_pin(issued: &Issued) -> SpkiPin {
    let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    SpkiPin(ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw).as_ref().try_into().unwrap())
}

#[tokio::test]
async fn a_peer_from_the_ca_is_admitted_both_ways_with_its_names() {
    let (dir, ca) = (TempDir::new().unwrap(), Ca::new("ring ca"));
    let (a, b) = (leaf(&ca, "1"), leaf(&ca, "2"));
    let (ta, tb) = (tls(&dir, &a, ca_rules(&dir, &ca)), tls(&dir, &b, ca_rules(&dir, &ca)));
    let (at_server, at_client) = handshake(&ta, &tb).await;
    assert_eq!(at_server.unwrap(), PeerIdentity { thumbprint: b.thumbprint, names: vec!["2".into()] });
    assert_eq!(at_client.unwrap(), PeerIdentity { thumbprint: a.thumbprint, names: vec!["1".into()] });
    assert_eq!((ta.refused(), tb.refused()), (0, 0));
}

#[tokio::test]
async fn a_self_signed_peer_is_refused() {
    let (dir, ca) = (TempDir::new().unwrap(), Ca::new("ring ca"));
    let (member, outsider) = (leaf(&ca, "1"), issue::self_signed("1"));
    let server = tls(&dir, &member, ca_rules(&dir, &ca));
    let (at_server, _) = handshake(&server, &tls(&dir, &outsider, trusting(&member))).await;
    assert!(at_server.unwrap_err().to_string().contains("UnknownIssuer"));
    assert_eq!(server.refused(), 1);
    // validateCAChain off: the broken chain is only logged, and the thumbprint admits.
    let lenient = tls(&dir, &member, PeerRules { thumbprints: vec![outsider.thumbprint], require_chain: false, ..ca_rules(&dir, &ca) });
    assert!(handshake(&lenient, &tls(&dir, &outsider, trusting(&member))).await.0.is_ok());
}

#[tokio::test]
async fn the_right_ca_with_the_wrong_spki_pin_is_refused() {
    let (dir, ca) = (TempDir::new().unwrap(), Ca::new("ring ca"));
    let (a, b, c) = (leaf(&ca, "1"), leaf(&ca, "2"), leaf(&ca, "3"));
    let server = tls(&dir, &a, PeerRules { spki_pins: vec![spki_pin(&c)], ..ca_rules(&dir, &ca) });
    let (refused, _) = handshake(&server, &tls(&dir, &b, trusting(&a))).await;
    let err = refused.unwrap_err().to_string();
    assert!(err.contains("no rule admits"), "{err}");
    let (admitted, _) = handshake(&server, &tls(&dir, &c, trusting(&a))).await;
    assert_eq!(admitted.unwrap().thumbprint, c.thumbprint);
    assert_eq!(server.refused(), 1);
}

#[tokio::test]
async fn validity_is_checked_even_when_a_thumbprint_admits() {
    let (dir, ca) = (TempDir::new().unwrap(), Ca::new("ring ca"));
    let now = SystemTime::now();
    let expired = ca.issue(&LeafSpec { name: "2", not_before: now - 2 * HOUR, not_after: now - HOUR });
    let early = ca.issue(&LeafSpec { name: "3", not_before: now + HOUR, not_after: now + 2 * HOUR });
    let a = leaf(&ca, "1");
    for (peer, why) in [(&expired, "Expired"), (&early, "NotValidYet")] {
        let server = tls(&dir, &a, PeerRules { thumbprints: vec![peer.thumbprint], ..PeerRules::default() });
        let (at_server, _) = handshake(&server, &tls(&dir, peer, trusting(&a))).await;
        assert!(at_server.unwrap_err().to_string().contains(why));
        assert_eq!(server.refused(), 1);
    }
}

#[tokio::test]
async fn a_thumbprint_admits_without_a_ca() {
    let dir = TempDir::new().unwrap();
    let (a, b) = (issue::self_signed("1"), issue::self_signed("2"));
    let (at_server, at_client) = handshake(&tls(&dir, &a, trusting(&b)), &tls(&dir, &b, trusting(&a))).await;
    assert_eq!(at_server.unwrap().thumbprint, b.thumbprint);
    assert_eq!(at_client.unwrap().thumbprint, a.thumbprint);
}

#[tokio::test]
async fn subject_and_issuer_thumbprint_admit_and_a_wrong_issuer_is_refused() {
    let dir = TempDir::new().unwrap();
    let (ca, impostor) = (Ca::new("ring ca"), Ca::new("ring ca"));
    let a = leaf(&ca, "1");
    let rule = |issuer: &Ca| PeerRules {
        subjects: vec![SubjectRule { subject: "CN=2".into(), issuers: vec![issuer.thumbprint()] }],
        ..PeerRules::default()
    };
    let server = tls(&dir, &a, rule(&ca));
    // No CA bundle: the issuer comes from the chain the peer sends.
    let (b, forged) = (leaf(&ca, "2"), leaf(&impostor, "2"));
    let client = |issued: &Issued| Tls::load(&TlsSettings { identity: files(&dir, issued, &ca.cert_pem()), peers: trusting(&a) }).unwrap();
    assert_eq!(handshake(&server, &client(&b)).await.0.unwrap().thumbprint, b.thumbprint);
    // Same issuer name, the real issuer's certificate alongside: its key did not sign this leaf.
    assert!(handshake(&server, &client(&forged)).await.0.is_err());
    assert!(handshake(&tls(&dir, &a, rule(&impostor)), &client(&b)).await.0.is_err());
    assert!(handshake(&server, &client(&leaf(&ca, "3"))).await.0.is_err());
    assert_eq!(server.refused(), 2);
}

/// `considerIdentitiesWhitelist=false` is expressed by leaving `thumbprints` empty: leaf
/// thumbprints admit no one, the subject rule still does.
#[tokio::test]
async fn without_the_identities_whitelist_only_subject_rules_admit() {
    let (dir, ca) = (TempDir::new().unwrap(), Ca::new("ring ca"));
    let (a, b, listed) = (leaf(&ca, "1"), leaf(&ca, "2"), leaf(&ca, "3"));
    let subjects = vec![SubjectRule { subject: "2".into(), issuers: vec![ca.thumbprint()] }];
    let server = tls(&dir, &a, PeerRules { subjects, ..ca_rules(&dir, &ca) });
    assert!(handshake(&server, &tls(&dir, &b, trusting(&a))).await.0.is_ok());
    assert!(handshake(&server, &tls(&dir, &listed, trusting(&a))).await.0.is_err());
}

#[tokio::test]
async fn plain_bytes_into_accept_are_refused_and_counted() {
    let (dir, ca) = (TempDir::new().unwrap(), Ca::new("ring ca"));
    let server = tls(&dir, &leaf(&ca, "1"), ca_rules(&dir, &ca));
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let mut packet = bytes::BytesMut::new();
    crate::format::packet::encode_into(b"not a TLS record", &mut packet);
    b.write_all(&packet).await.unwrap();
    assert!(server.accept(a).await.is_err());
    assert_eq!(server.refused(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_finishes_the_handshake_is_cut_off() {
    let (dir, ca) = (TempDir::new().unwrap(), Ca::new("ring ca"));
    let server = tls(&dir, &leaf(&ca, "1"), ca_rules(&dir, &ca));
    let (a, _silent) = tokio::io::duplex(1 << 16);
    assert_eq!(server.accept(a).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
    assert_eq!(server.refused(), 1);
}

#[test]
fn load_names_a_missing_file_a_mismatched_key_and_refuses_rules_that_admit_anyone() {
    let (dir, ca) = (TempDir::new().unwrap(), Ca::new("ring ca"));
    let missing = dir.path().join("nope.crt");
    let identity = IdentitySource::Files { cert: missing.clone(), key: missing.clone() };
    let err = Tls::load(&TlsSettings { identity, peers: ca_rules(&dir, &ca) }).err().unwrap();
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    let identity = files(&dir, &leaf(&ca, "1"), "");
    let peers = PeerRules { require_chain: false, ..ca_rules(&dir, &ca) };
    assert!(matches!(Tls::load(&TlsSettings { identity: identity.clone(), peers }), Err(TlsError::Setting(_))));
    // Names admit only behind a required chain: a self-signed certificate can claim any name.
    for ca in [None, Some(dir.path().join("ca.crt"))] {
        let peers = PeerRules { names: vec!["2".into()], ca, require_chain: false, ..PeerRules::default() };
        assert!(matches!(Tls::load(&TlsSettings { identity: identity.clone(), peers }), Err(TlsError::Setting(_))));
    }
    let (IdentitySource::Files { cert, .. }, IdentitySource::Files { key, .. }) =
        (files(&dir, &leaf(&ca, "1"), ""), files(&dir, &leaf(&ca, "2"), ""))
    else {
        unreachable!()
    };
    let mismatched = TlsSettings { identity: IdentitySource::Files { cert: cert.clone(), key }, peers: ca_rules(&dir, &ca) };
    assert!(matches!(Tls::load(&mismatched), Err(TlsError::Invalid { path, .. }) if path == cert));
}

#[tokio::test]
async fn a_thumbprint_identity_falls_back_from_a_to_b() {
    let (dir, ca) = (TempDir::new().unwrap(), Ca::new("ring ca"));
    let (a, b, peer) = (leaf(&ca, "1"), leaf(&ca, "1"), leaf(&ca, "2"));
    issue::write_by_thumbprint(dir.path(), &b).unwrap();
    let identity = |a| IdentitySource::Thumbprints { dir: dir.path().to_owned(), a, b: Some(b.thumbprint) };
    let server = Tls::load(&TlsSettings { identity: identity(Some(a.thumbprint)), peers: ca_rules(&dir, &ca) }).unwrap();
    let (_, at_client) = handshake(&server, &tls(&dir, &peer, ca_rules(&dir, &ca))).await;
    assert_eq!(at_client.unwrap().thumbprint, b.thumbprint);
    let nothing = IdentitySource::Thumbprints { dir: dir.path().to_owned(), a: Some(a.thumbprint), b: None };
    assert!(matches!(Tls::load(&TlsSettings { identity: nothing, peers: ca_rules(&dir, &ca) }), Err(TlsError::NoIdentity(..))));
}

#[test]
fn thumbprints_parse_as_windows_shows_them() {
    let t = Thumbprint([0xAB; 20]);
    assert_eq!(Thumbprint::parse(&t.to_string().to_lowercase()).unwrap(), t);
    assert_eq!(Thumbprint::parse(&"ab:".repeat(20)).unwrap(), t);
    assert_eq!(Thumbprint::parse(&"ab ".repeat(20)).unwrap(), t);
    for bad in ["ab", &"+a".repeat(20), &"zz".repeat(20)] {
        assert!(Thumbprint::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn spki_pins_parse_and_print_as_hex() {
    let pin = SpkiPin([0xab; 32]);
    assert_eq!(SpkiPin::parse(&"aB".repeat(32)).unwrap(), pin);
    assert_eq!(SpkiPin::parse(&"ab:".repeat(32)).unwrap(), pin);
    assert_eq!(SpkiPin::parse(&pin.to_string()).unwrap(), pin);
    for bad in ["ab", &"+1".repeat(32), &"ab".repeat(20)] {
        assert!(SpkiPin::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_certificate_moved_between_the_own_chain_and_the_ca_changes_the_trust() {
    let (ca, other) = (Ca::new("ring ca"), Ca::new("other ca"));
    let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (leaf, root, extra) = (der(&leaf(&ca, "1").cert_pem), der(&ca.cert_pem()), der(&other.cert_pem()));
    let settings = TlsSettings { identity: IdentitySource::Files { cert: "c".into(), key: "k".into() }, peers: PeerRules::default() };
    let (presented, trusted) = ([leaf.clone(), extra.clone()], [extra, root.clone()]);
    let (leaf, root) = ([leaf], [root]);
    let presented_with_it = trust_digest(&settings, &presented, &root);
    let trusting_it = trust_digest(&settings, &leaf, &trusted);
    assert_ne!(presented_with_it, trusting_it, "the same certificates in other roles are other trust");
    assert_eq!(trust_digest(&settings, &leaf, &root), trust_digest(&settings, &leaf, &root));
}
