//! Throwaway certificates for test rings and `rsl-kv cluster --tls`: a CA made on the spot
//! and one certificate per replica naming its member id (rcgen). Not for production keys.

use super::{Thumbprint, TlsError};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A certificate authority whose key lives only in memory.
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// One issued certificate, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub thumbprint: Thumbprint,
}

/// What a leaf is issued for: its CN (and DNS SAN) and validity period.
pub struct LeafSpec<'a> {
    pub name: &'a str,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let _ = name;
        todo!("helper tls-core")
    }

    /// The CA certificate, PEM (the bundle peers validate against).
    pub fn cert_pem(&self) -> String {
        todo!("helper tls-core")
    }

    pub fn thumbprint(&self) -> Thumbprint {
        todo!("helper tls-core")
    }

    /// A leaf for both TLS client and server use, signed by this CA.
    pub fn issue(&self, spec: &LeafSpec<'_>) -> Issued {
        let _ = spec;
        todo!("helper tls-core")
    }
}

/// A self-signed leaf (no CA): what an outsider might present.
pub fn self_signed(name: &str) -> Issued {
    let _ = name;
    todo!("helper tls-core")
}

/// Writes `issued` as `<dir>/<THUMBPRINT>.crt` and `.key` (the layout
/// `IdentitySource::Thumbprints` reads) and returns the two paths.
pub fn write_by_thumbprint(dir: &Path, issued: &Issued) -> Result<(PathBuf, PathBuf), TlsError> {
    let _ = (dir, issued);
    todo!("helper tls-core")
}
