//! Throwaway certificates for test rings and `rsl-kv cluster --tls`: a CA made on the spot
//! and one certificate per replica naming its member id (rcgen). Not for production keys.

use super::{Thumbprint, TlsError};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A certificate authority whose key lives only in memory.
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// One issued certificate, as PEM.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate's SHA-1 thumbprint (what `SetThumbprintsForSsl` takes).
    pub thumbprint: Thumbprint,
}

/// What a leaf is issued for: its CN (and DNS SAN) and validity period.
pub struct LeafSpec<'a> {
    /// The subject CN, also put in a DNS SAN.
    pub name: &'a str,
    /// Valid from.
    pub not_before: SystemTime,
    /// Valid until.
    pub not_after: SystemTime,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = named(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = new_key();
        let cert = params.self_signed(&key).expect("rcgen signs a CA made of valid parameters");
        Ca { cert, key }
    }

    /// The CA certificate, PEM (the bundle peers validate against).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate's SHA-1 thumbprint.
    pub fn thumbprint(&self) -> Thumbprint {
        Thumbprint::of(self.cert.der())
    }

    /// A leaf for both TLS client and server use, signed by this CA.
    pub fn issue(&self, spec: &LeafSpec<'_>) -> Issued {
        let mut params = leaf_params(spec.name);
        params.not_before = spec.not_before.into();
        params.not_after = spec.not_after.into();
        params.use_authority_key_identifier_extension = true;
        let key = new_key();
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("rcgen signs a leaf made of valid parameters");
        issued(&cert, &key)
    }
}

/// A self-signed leaf (no CA): what an outsider might present.
pub fn self_signed(name: &str) -> Issued {
    let key = new_key();
    let cert = leaf_params(name).self_signed(&key).expect("rcgen signs a leaf made of valid parameters");
    issued(&cert, &key)
}

/// Writes `issued` as `<dir>/<THUMBPRINT>.crt` and `.key` (the layout
/// `IdentitySource::Thumbprints` reads) and returns the two paths.
pub fn write_by_thumbprint(dir: &Path, issued: &Issued) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join(format!("{}.crt", issued.thumbprint));
    let key = dir.join(format!("{}.key", issued.thumbprint));
    for (path, text) in [(&cert, &issued.cert_pem), (&key, &issued.key_pem)] {
        std::fs::write(path, text).map_err(|source| TlsError::Read { path: path.clone(), source })?;
    }
    Ok((cert, key))
}

/// A subject `CN=name` with nothing else (rcgen's default CN replaced).
fn named(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
}

/// CN and DNS SAN = `name`, usable for both ends of a mutual TLS connection.
fn leaf_params(name: &str) -> CertificateParams {
    let mut params = named(name);
    // A name that is not ASCII cannot be a DNS SAN; the CN still carries it.
    params.subject_alt_names = rcgen::Ia5String::try_from(name).map(rcgen::SanType::DnsName).into_iter().collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// ECDSA P-256: quick to make, and every TLS 1.2/1.3 peer speaks it.
fn new_key() -> KeyPair {
    KeyPair::generate().expect("ring generates a P-256 key")
}

fn issued(cert: &rcgen::Certificate, key: &KeyPair) -> Issued {
    Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), thumbprint: Thumbprint::of(cert.der()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use x509_parser::prelude::*;

    #[test]
    fn a_leaf_names_its_member_and_its_ca() {
        let ca = Ca::new("test ca");
        let now = SystemTime::now();
        let leaf = ca.issue(&LeafSpec { name: "3", not_before: now, not_after: now + Duration::from_secs(3600) });
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(Thumbprint::of(&der), leaf.thumbprint);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.subject().iter_common_name().next().unwrap().as_str().unwrap(), "3");
        assert_eq!(cert.issuer().iter_common_name().next().unwrap().as_str().unwrap(), "test ca");
        assert_ne!(self_signed("3").thumbprint, leaf.thumbprint);
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = write_by_thumbprint(dir.path(), &leaf).unwrap();
        assert_eq!(crt, dir.path().join(format!("{}.crt", leaf.thumbprint)));
        assert_eq!(std::fs::read_to_string(key).unwrap(), leaf.key_pem);
    }
}
