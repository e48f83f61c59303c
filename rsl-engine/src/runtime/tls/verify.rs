//! The peer check both handshake sides share: validity period, the chain to the CA bundle,
//! then the admission rules of `PeerRules`.

use super::{PeerRules, SpkiPin, Thumbprint, TlsError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use webpki::KeyUsage;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Peers whose broken chain was already logged (log-only mode); cleared when full so a
/// stream of distinct certificates cannot grow it.
const WARNED_LIMIT: usize = 1024;

#[derive(Debug)]
pub(super) struct Verifier {
    rules: PeerRules,
    /// The CA bundle: what chains must lead to, and where a subject rule's issuer may be found.
    ca: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    algs: WebPkiSupportedAlgorithms,
    warned: Mutex<HashSet<Thumbprint>>,
}

/// Why a peer whose certificate is otherwise fine was refused.
#[derive(thiserror::Error)]
#[error("no rule admits certificate {0} (names {1:?})")]
struct NotAdmitted(Thumbprint, Vec<String>);

/// rustls shows the reason with `Debug`: make that the readable sentence.
impl std::fmt::Debug for NotAdmitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Verifier {
    /// Refuses rules that could not admit anyone, or would admit anyone.
    pub(super) fn new(rules: PeerRules, ca: Vec<CertificateDer<'static>>, algs: WebPkiSupportedAlgorithms) -> Result<Verifier, TlsError> {
        if rules.require_chain && ca.is_empty() {
            return Err(TlsError::Setting("validating the CA chain needs a CA bundle".into()));
        }
        if rules_empty(&rules) && !rules.require_chain {
            let why = "no peer rule (thumbprints, subjects, SPKI pins, names) and no required CA chain: anyone would be admitted";
            return Err(TlsError::Setting(why.into()));
        }
        if !rules.names.is_empty() && !rules.require_chain {
            // Anyone can put any name in a self-signed certificate.
            let why = "admitting by name needs a required CA chain: anyone would be admitted under any name";
            return Err(TlsError::Setting(why.into()));
        }
        let invalid = |e: webpki::Error| TlsError::Invalid {
            path: rules.ca.clone().unwrap_or_default(),
            detail: format!("not a CA certificate: {e}"),
        };
        let anchors = ca
            .iter()
            .map(|cert| webpki::anchor_from_trusted_cert(cert).map(|a| a.to_owned()).map_err(invalid))
            .collect::<Result<_, _>>()?;
        Ok(Verifier { rules, ca, anchors, algs, warned: Mutex::default() })
    }

    /// The whole check of a peer's leaf (`usage`: what the peer's side of the handshake is).
    fn check(&self, der: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], now: UnixTime, usage: KeyUsage) -> Result<(), Error> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| CertificateError::BadEncoding)?;
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if now_secs < cert.validity().not_before.timestamp() {
            return Err(CertificateError::NotValidYet.into());
        }
        if now_secs > cert.validity().not_after.timestamp() {
            return Err(CertificateError::Expired.into());
        }
        let peer = Peer { der, cert, thumbprint: Thumbprint::of(der), intermediates, now, usage };
        if !self.anchors.is_empty() {
            if let Err(e) = peer.signed_by(&self.anchors, intermediates, &self.algs) {
                if self.rules.require_chain {
                    return Err(e);
                }
                self.warn_once(peer.thumbprint, &e);
            }
        }
        if self.admits(&peer) {
            return Ok(());
        }
        Err(CertificateError::Other(OtherError(Arc::new(NotAdmitted(peer.thumbprint, names(&peer.cert))))).into())
    }

    fn admits(&self, peer: &Peer<'_, '_>) -> bool {
        let r = &self.rules;
        if rules_empty(r) {
            // `new` allows this only with a required chain, which passed above.
            assert!(r.require_chain && !self.anchors.is_empty(), "a rule-less configuration needs a required chain");
            return true;
        }
        let pin = || SpkiPin::of_key(peer.cert.public_key().raw);
        r.thumbprints.contains(&peer.thumbprint)
            || (!r.spki_pins.is_empty() && r.spki_pins.contains(&pin()))
            || (!r.names.is_empty() && names(&peer.cert).iter().any(|n| r.names.contains(n)))
            || self.subject_rule_admits(peer)
    }

    /// `SetSubjectNamesForSsl`: the CN matches a rule and the certificate that signed the leaf
    /// (sent by the peer or in the CA bundle) has one of that rule's thumbprints.
    fn subject_rule_admits(&self, peer: &Peer<'_, '_>) -> bool {
        let cn = common_name(&peer.cert);
        let rules: Vec<_> =
            self.rules.subjects.iter().filter(|r| Some(r.subject.strip_prefix("CN=").unwrap_or(&r.subject)) == cn).collect();
        if rules.is_empty() {
            return false;
        }
        let issuer = peer.cert.issuer().as_raw();
        peer.intermediates.iter().chain(&self.ca).any(|cand| {
            let thumb = Thumbprint::of(cand);
            rules.iter().any(|r| r.issuers.contains(&thumb))
                && X509Certificate::from_der(cand).is_ok_and(|(_, c)| c.subject().as_raw() == issuer)
                && webpki::anchor_from_trusted_cert(cand).is_ok_and(|anchor| peer.signed_by(&[anchor], &[], &self.algs).is_ok())
        })
    }

    fn warn_once(&self, thumbprint: Thumbprint, e: &Error) {
        let mut warned = self.warned.lock().expect("warned set lock");
        if warned.len() >= WARNED_LIMIT {
            warned.clear();
        }
        if warned.insert(thumbprint) {
            tracing::warn!(%thumbprint, error = %e, "TLS: peer's chain does not lead to the CA bundle (not required: the rules decide)");
        }
    }
}

/// A peer's leaf during one handshake, parsed once.
struct Peer<'d, 'c> {
    der: &'c CertificateDer<'d>,
    cert: X509Certificate<'c>,
    thumbprint: Thumbprint,
    intermediates: &'c [CertificateDer<'d>],
    now: UnixTime,
    usage: KeyUsage,
}

impl Peer<'_, '_> {
    /// Whether the leaf chains to one of `anchors` through `intermediates`.
    fn signed_by(
        &self,
        anchors: &[TrustAnchor<'_>],
        intermediates: &[CertificateDer<'_>],
        algs: &WebPkiSupportedAlgorithms,
    ) -> Result<(), Error> {
        let other = |e: webpki::Error| Error::from(CertificateError::Other(OtherError(Arc::new(e))));
        let cert = webpki::EndEntityCert::try_from(self.der).map_err(other)?;
        cert.verify_for_usage(algs.all, anchors, intermediates, self.now, self.usage, None, None).map(drop).map_err(other)
    }
}

fn rules_empty(r: &PeerRules) -> bool {
    r.thumbprints.is_empty() && r.subjects.is_empty() && r.spki_pins.is_empty() && r.names.is_empty()
}

fn common_name<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a str> {
    cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok())
}

/// The subject CN and the DNS SANs, each once (`PeerIdentity::names`).
pub(super) fn names(cert: &X509Certificate<'_>) -> Vec<String> {
    let sans = cert.subject_alternative_name().ok().flatten();
    let dns = sans.iter().flat_map(|ext| &ext.value.general_names).filter_map(|n| match n {
        GeneralName::DNSName(name) => Some(*name),
        _ => None,
    });
    let mut names: Vec<String> = Vec::new();
    for name in common_name(cert).into_iter().chain(dns) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

impl ClientCertVerifier for Verifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: peers carry one certificate each and need no help choosing it.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.check(leaf, intermediates, now, KeyUsage::client_auth()).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(msg, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(msg, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ServerCertVerifier for Verifier {
    /// No hostname check: peers are reached by address, and the rules name whom to trust.
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.check(leaf, intermediates, now, KeyUsage::server_auth()).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(msg, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(msg, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
