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
//! The bytes inside TLS are the plain protocol's (formats.md §7.3).

pub mod issue;

use rustls_pki_types::CertificateDer;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

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
    Thumbprints { dir: PathBuf, a: Option<Thumbprint>, b: Option<Thumbprint> },
    /// PEM files: the chain (leaf first) and its key.
    Files { cert: PathBuf, key: PathBuf },
}

/// `SetSubjectNamesForSsl`'s rule: a peer whose subject is `subject` and whose issuer's
/// thumbprint is one of `issuers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectRule {
    /// As the certificate's subject CN (`CN=` prefix, if given, is ignored).
    pub subject: String,
    pub issuers: Vec<Thumbprint>,
}

/// Whom a replica accepts. A peer is admitted when its certificate is in its validity period,
/// its chain passes (`ca` with `require_chain`), and one of the lists admits it; with every
/// list empty, the chain alone admits (which needs a `ca` and `require_chain`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerRules {
    /// Leaf thumbprints admitted (the original's A and B).
    pub thumbprints: Vec<Thumbprint>,
    pub subjects: Vec<SubjectRule>,
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
    pub identity: IdentitySource,
    pub peers: PeerRules,
}

/// Who is at the other end of an authenticated connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub thumbprint: Thumbprint,
    /// The subject CN and the DNS SANs: when one of them is a member id of the ring, the
    /// connection speaks for that member only.
    pub names: Vec<String>,
}

/// Why TLS could not be set up (at `Initialize`): names the file or setting.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("TLS: cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("TLS: {path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("TLS: no certificate for thumbprint {0} or {1} in {2}")]
    NoIdentity(String, String, PathBuf),
    #[error("TLS: {0}")]
    Setting(String),
}

/// A loaded configuration: the rustls server and client sides, sharing one peer check.
pub struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    /// Handshakes that failed or whose peer no rule admitted.
    refused: AtomicU64,
}

/// A connection after its handshake, either side.
pub type TlsStream<S> = tokio_rustls::TlsStream<S>;

impl Tls {
    /// Reads the certificate, key and CA files and builds both sides.
    pub fn load(settings: &TlsSettings) -> Result<Tls, TlsError> {
        let _ = settings;
        todo!("helper tls-core")
    }

    /// The server side of a handshake on an accepted connection, bounded by
    /// `HANDSHAKE_TIMEOUT`; a failure is counted in `refused`.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> std::io::Result<(TlsStream<S>, PeerIdentity)> {
        let _ = stream;
        todo!("helper tls-core")
    }

    /// The client side of a handshake on a connection we opened, with the same bound and
    /// the same rules for the server's certificate.
    pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> std::io::Result<(TlsStream<S>, PeerIdentity)> {
        let _ = stream;
        todo!("helper tls-core")
    }

    /// Handshakes refused so far (both sides).
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Thumbprint {
    /// Of a DER certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Thumbprint {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.as_ref());
        Thumbprint(digest.as_ref().try_into().expect("SHA-1 is 20 bytes"))
    }

    /// Hex (either case; spaces and colons ignored, as Windows copies them), 40 digits.
    pub fn parse(text: &str) -> Result<Thumbprint, TlsError> {
        let bad = || TlsError::Setting(format!("thumbprint {text:?} is not 40 hex digits"));
        let digits: Vec<u8> = text.bytes().filter(|b| !matches!(b, b' ' | b':')).collect();
        if digits.len() != 40 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad());
        }
        let mut out = [0u8; 20];
        for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
            let pair = std::str::from_utf8(pair).expect("hex digits are ASCII");
            *byte = u8::from_str_radix(pair, 16).expect("two hex digits make a byte");
        }
        Ok(Thumbprint(out))
    }
}

impl std::fmt::Display for Thumbprint {
    /// Upper-case hex: the file name under the thumbprint directory.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}
