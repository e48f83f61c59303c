//! Mutual TLS for the Paxos and learn ports: the certificate a replica presents, the rules a
//! peer's certificate must meet, and the handshakes on both sides (rustls, no OpenSSL).
//!
//! Two ways to say whom to accept, which may be combined (a peer is admitted when any rule
//! admits it):
//! - the original's: leaf SHA-1 thumbprints (`SetThumbprintsForSsl`) and subject names with
//!   their issuers' thumbprints (`SetSubjectNamesForSsl`); the local certificate is found by
//!   thumbprint as `<dir>/<THUMBPRINT>.crt` and `.key` (PEM, upper-case hex);
//! - a modern one: a CA bundle the chain must lead to, narrowed by SHA-256 pins of the
//!   subject public key and/or names the certificate must carry (CN or DNS SAN).
//!
//! How the original's settings map onto `PeerRules` (for the C ABI and the shim):
//! - `considerIdentitiesWhitelist=false` is `thumbprints` left empty: leaf thumbprints then
//!   admit no one, while subject rules still do (the original denied everyone: a bug);
//! - `validateCAChain` is `require_chain`, with `<dir>/ca.crt` as `ca`; with a `ca` but no
//!   `require_chain` a broken chain is logged once per peer and the rules alone decide;
//! - `checkRevocation` has no counterpart (no CRL/OCSP): the caller logs that it is ignored.
//!
//! `Tls::load` refuses rules that would admit anyone (no list and no required chain) and a
//! required chain without a CA bundle. The validity period is checked for every peer. When a
//! chain or an issuer is checked, a certificate carrying extended key usages must allow the
//! side it plays (clientAuth when it connects, serverAuth when it accepts): a ring member's
//! certificate needs both, as `issue` makes them. No host name is checked on either side.
//!
//! The bytes inside TLS are the plain protocol's (docs/spec/formats.md §7.3).

pub mod issue;
#[cfg(test)]
mod tests;
mod verify;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::future::Future;
use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use verify::Verifier;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A handshake not finished within this long is abandoned (the original's v1.2.30 fix: a
/// peer that opens a connection and never completes the handshake cannot hold it).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The SHA-1 of a certificate's DER encoding, as Windows shows it (the original's pin).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Thumbprint(pub [u8; 20]);

/// The SHA-256 of a certificate's SubjectPublicKeyInfo (DER): survives re-issuing a
/// certificate for the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpkiPin(pub [u8; 32]);

/// Where the replica's own certificate chain and private key come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// `<dir>/<A>.crt` and `<dir>/<A>.key`, else the same for B (the original takes A from
    /// the store, falling back to B).
    Thumbprints {
        /// The directory holding the `<thumbprint>.crt`/`.key` files.
        dir: PathBuf,
        /// Thumbprint A, tried first.
        a: Option<Thumbprint>,
        /// Thumbprint B, the fallback.
        b: Option<Thumbprint>,
    },
    /// PEM files: the chain (leaf first) and its key.
    Files {
        /// The certificate chain, PEM, leaf first.
        cert: PathBuf,
        /// Its private key, PEM.
        key: PathBuf,
    },
}

/// `SetSubjectNamesForSsl`'s rule: a peer whose subject is `subject` and whose issuer's
/// thumbprint is one of `issuers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectRule {
    /// As the certificate's subject CN (`CN=` prefix, if given, is ignored).
    pub subject: String,
    /// Thumbprints of the issuers admitted for `subject`.
    pub issuers: Vec<Thumbprint>,
}

/// Whom a replica accepts. A peer is admitted when its certificate is in its validity period,
/// its chain passes (`ca` with `require_chain`), and one of the lists admits it; with every
/// list empty, the chain alone admits (which needs a `ca` and `require_chain`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerRules {
    /// Leaf thumbprints admitted (the original's A and B).
    pub thumbprints: Vec<Thumbprint>,
    /// `SetSubjectNamesForSsl`: subject and issuer rules admitted.
    pub subjects: Vec<SubjectRule>,
    /// SHA-256 pins of the subject public keys admitted.
    pub spki_pins: Vec<SpkiPin>,
    /// Names one of which the certificate must carry (subject CN or DNS SAN).
    pub names: Vec<String>,
    /// A PEM bundle of the CAs a peer's chain must lead to.
    pub ca: Option<PathBuf>,
    /// `validateCAChain`: a chain that does not lead to `ca` refuses the peer; when false it
    /// is logged only (needs `ca` to be checked at all).
    pub require_chain: bool,
}

/// What a replica is configured with (`RslConfig::tls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// Where this replica's certificate and key come from.
    pub identity: IdentitySource,
    /// Which peers it admits.
    pub peers: PeerRules,
}

/// Who is at the other end of an authenticated connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The SHA-1 thumbprint of the peer's leaf certificate.
    pub thumbprint: Thumbprint,
    /// The subject CN and the DNS SANs: when one of them is a member id of the ring, the
    /// connection speaks for that member only.
    pub names: Vec<String>,
}

/// Why TLS could not be set up (at `Initialize`): names the file or setting.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A certificate, key or CA file could not be read.
    #[error("TLS: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A certificate, key or CA file does not parse or is unusable.
    #[error("TLS: {path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Neither thumbprint (A, B) has its certificate and key in the directory (the third value).
    #[error("TLS: no certificate for thumbprint {0} or {1} in {2}")]
    NoIdentity(String, String, PathBuf),
    /// A setting is unusable or the settings contradict each other (what is wrong).
    #[error("TLS: {0}")]
    Setting(String),
}

/// A loaded configuration: the rustls server and client sides, sharing one peer check.
pub struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    /// Handshakes that failed or whose peer no rule admitted.
    refused: AtomicU64,
    /// A digest of everything the configuration trusts and presents: the settings, the own
    /// chain and the CA certificates read. Equal digests check peers alike.
    trust: [u8; 32],
}

/// A connection after its handshake, either side.
pub type TlsStream<S> = tokio_rustls::TlsStream<S>;

/// SHA-256 over the settings, the own chain and the CA certificates: each group counted and
/// each certificate length-prefixed, so that a certificate moved from one file to the other
/// (from presented to trusted) changes the digest.
fn trust_digest(settings: &TlsSettings, chain: &[CertificateDer<'static>], ca: &[CertificateDer<'static>]) -> [u8; 32] {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(format!("{settings:?}").as_bytes());
    for group in [chain, ca] {
        digest.update(&(group.len() as u64).to_le_bytes());
        for cert in group {
            digest.update(&(cert.len() as u64).to_le_bytes());
            digest.update(cert.as_ref());
        }
    }
    digest.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

impl Tls {
    /// Reads the certificate, key and CA files and builds both sides.
    pub fn load(settings: &TlsSettings) -> Result<Tls, TlsError> {
        let (chain, key, cert_path) = load_identity(&settings.identity)?;
        let ca = settings.peers.ca.as_deref().map(read_certs).transpose()?.unwrap_or_default();
        let trust = trust_digest(settings, &chain, &ca);
        let provider = Arc::new(provider());
        let verifier = Arc::new(Verifier::new(settings.peers.clone(), ca, provider.signature_verification_algorithms)?);
        let invalid = |e: rustls::Error| TlsError::Invalid { path: cert_path.clone(), detail: e.to_string() };
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(invalid)?;
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(invalid)?;
        // No resumption: a resumed session skips the peer check, which must see every
        // connection (a certificate may have expired since); connections are long-lived anyway.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Tls { server: Arc::new(server), client: Arc::new(client), refused: AtomicU64::new(0), trust })
    }

    /// Whether `other` was loaded from the same settings and files, so that it admits exactly
    /// the peers this admits (rings that may share a connection, `transport/mux.rs`).
    pub fn same_trust(&self, other: &Tls) -> bool {
        self.trust == other.trust
    }

    /// The server side of a handshake on an accepted connection, bounded by
    /// `HANDSHAKE_TIMEOUT`; a failure is counted in `refused`.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> io::Result<(TlsStream<S>, PeerIdentity)> {
        let handshake = async {
            let tls = tokio_rustls::TlsAcceptor::from(self.server.clone()).accept(stream).await?;
            let peer = identity(tls.get_ref().1.peer_certificates())?;
            Ok((TlsStream::Server(tls), peer))
        };
        self.bounded(handshake).await
    }

    /// The client side of a handshake on a connection we opened, with the same bound and
    /// the same rules for the server's certificate. In TLS 1.3 the client finishes before
    /// the server has judged its certificate: a refusal then shows as the connection closing.
    pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> io::Result<(TlsStream<S>, PeerIdentity)> {
        // The verifier checks no host name, so any name does; an address sends no SNI.
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let handshake = async {
            let tls = tokio_rustls::TlsConnector::from(self.client.clone()).connect(name, stream).await?;
            let peer = identity(tls.get_ref().1.peer_certificates())?;
            Ok((TlsStream::Client(tls), peer))
        };
        self.bounded(handshake).await
    }

    /// Handshakes refused so far (both sides).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Runs a handshake under `HANDSHAKE_TIMEOUT`, counting any failure.
    async fn bounded<T>(&self, handshake: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}"))),
        };
        if result.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// rustls's ring provider, which rustls 0.23.48 deprecates for lacking post-quantum key
/// exchange; aws-lc-rs (which has it) needs a C toolchain this project does without.
#[allow(deprecated)]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Who the peer is, from the leaf the verifier admitted.
fn identity(certs: Option<&[CertificateDer<'_>]>) -> io::Result<PeerIdentity> {
    let leaf =
        certs.and_then(<[_]>::first).ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "TLS peer sent no certificate"))?;
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS peer certificate: {e}")))?;
    Ok(PeerIdentity { thumbprint: Thumbprint::of(leaf), names: verify::names(&cert) })
}

/// The chain and key `source` names, and the certificate file (for errors found later).
fn load_identity(source: &IdentitySource) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, PathBuf), TlsError> {
    match source {
        IdentitySource::Files { cert, key } => Ok((read_certs(cert)?, read_key(key)?, cert.clone())),
        IdentitySource::Thumbprints { dir, a, b } => {
            for thumb in [a, b].into_iter().flatten() {
                let cert = dir.join(format!("{thumb}.crt"));
                if !cert.exists() {
                    continue;
                }
                let chain = read_certs(&cert)?;
                if Thumbprint::of(&chain[0]) != *thumb {
                    return Err(TlsError::Invalid {
                        path: cert,
                        detail: format!("its first certificate is {}, not {thumb}", Thumbprint::of(&chain[0])),
                    });
                }
                return Ok((chain, read_key(&dir.join(format!("{thumb}.key")))?, cert));
            }
            let show = |t: &Option<Thumbprint>| t.map_or_else(|| "(none)".to_owned(), |t| t.to_string());
            Err(TlsError::NoIdentity(show(a), show(b), dir.clone()))
        }
    }
}

/// A PEM file's certificates, at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |detail: String| TlsError::Invalid { path: path.to_owned(), detail };
    let certs = CertificateDer::pem_slice_iter(&read_pem(path)?).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read_pem(path)?).map_err(|e| TlsError::Invalid { path: path.to_owned(), detail: e.to_string() })
}

/// A PEM file's bytes, refusing anything larger than a certificate bundle plausibly is.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    const LIMIT: u64 = 1 << 20;
    let read = |source| TlsError::Read { path: path.to_owned(), source };
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(LIMIT + 1).read_to_end(&mut bytes)).map_err(read)?;
    if bytes.len() as u64 > LIMIT {
        return Err(TlsError::Invalid { path: path.to_owned(), detail: format!("larger than {LIMIT} bytes") });
    }
    Ok(bytes)
}

impl Thumbprint {
    /// Of a DER certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Thumbprint {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.as_ref());
        Thumbprint(digest.as_ref().try_into().expect("SHA-1 is 20 bytes"))
    }

    /// Hex (either case; spaces and colons ignored, as Windows copies them), 40 digits.
    pub fn parse(text: &str) -> Result<Thumbprint, TlsError> {
        hex(text, "thumbprint").map(Thumbprint)
    }
}

impl SpkiPin {
    /// Of a DER certificate's subject public key (the bytes `Verifier` hashes).
    pub fn of(cert: &CertificateDer<'_>) -> Result<SpkiPin, TlsError> {
        let (_, parsed) =
            x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| TlsError::Setting(format!("not a certificate: {e}")))?;
        Ok(SpkiPin::of_key(parsed.public_key().raw))
    }

    pub(crate) fn of_key(spki: &[u8]) -> SpkiPin {
        SpkiPin(ring::digest::digest(&ring::digest::SHA256, spki).as_ref().try_into().expect("SHA-256 is 32 bytes"))
    }

    /// Hex (either case; spaces and colons ignored), 64 digits.
    pub fn parse(text: &str) -> Result<SpkiPin, TlsError> {
        hex(text, "SPKI pin").map(SpkiPin)
    }
}

/// `N` bytes from `2N` hex digits (either case; spaces and colons ignored).
fn hex<const N: usize>(text: &str, what: &str) -> Result<[u8; N], TlsError> {
    let digits: Vec<u8> = text.bytes().filter(|b| !matches!(b, b' ' | b':')).collect();
    if digits.len() != 2 * N || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(TlsError::Setting(format!("{what} {text:?} is not {} hex digits", 2 * N)));
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
        let pair = std::str::from_utf8(pair).expect("hex digits are ASCII");
        *byte = u8::from_str_radix(pair, 16).expect("two hex digits make a byte");
    }
    Ok(out)
}

impl std::fmt::Display for SpkiPin {
    /// Lower-case hex, as `--tls-pin` and `rsl_set_tls_files` take it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Display for Thumbprint {
    /// Upper-case hex: the file name under the thumbprint directory.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}
