//! Mutual TLS for `rsl-kv`: the replica's `--tls-*` options as the runtime's settings, and
//! the throwaway CA and per-replica certificates `rsl-kv cluster --tls` runs with.

use clap::Args;
use rsl_engine::runtime::tls::issue::{Ca, LeafSpec};
use rsl_engine::runtime::tls::{IdentitySource, PeerRules, SpkiPin, TlsSettings};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long `rsl-kv cluster --tls`'s certificates are valid.
const THROWAWAY_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// A replica's TLS options. Without `--tls-cert` the replica speaks plain TCP.
#[derive(Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// The CA bundle (PEM) a peer's chain must lead to; a peer is admitted by the chain alone
    /// unless `--tls-pin` or `--tls-name` narrow it.
    #[arg(long, requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// This replica's certificate chain (PEM, leaf first).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Admit a peer whose public key (SubjectPublicKeyInfo) has this SHA-256, 64 hex digits.
    /// Repeatable; works without `--tls-ca`.
    #[arg(long = "tls-pin", requires = "tls_cert")]
    pub tls_pins: Vec<String>,
    /// Admit a peer whose certificate names this (subject CN or DNS SAN; the member id binds
    /// the connection to that member). Repeatable; needs `--tls-ca`.
    #[arg(long = "tls-name", requires = "tls_ca")]
    pub tls_names: Vec<String>,
}

impl TlsArgs {
    /// The runtime's settings, checked: something must say whom to admit.
    pub fn settings(&self) -> Result<Option<TlsSettings>, String> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        if self.tls_ca.is_none() && self.tls_pins.is_empty() {
            return Err("--tls-cert needs --tls-ca or --tls-pin to know whom to admit".into());
        }
        let spki_pins =
            self.tls_pins.iter().map(|p| SpkiPin::parse(p).map_err(|e| format!("--tls-pin: {e}"))).collect::<Result<Vec<_>, _>>()?;
        let peers = PeerRules {
            spki_pins,
            names: self.tls_names.clone(),
            ca: self.tls_ca.clone(),
            require_chain: self.tls_ca.is_some(),
            ..PeerRules::default()
        };
        Ok(Some(TlsSettings { identity: IdentitySource::Files { cert: cert.clone(), key: key.clone() }, peers }))
    }
}

/// Where one replica's throwaway files are.
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Files {
    /// The replica options that run with these files and admit `members` by name.
    pub fn args(&self, members: &[String]) -> Vec<String> {
        let mut args = vec!["--tls-ca".into(), path(&self.ca), "--tls-cert".into(), path(&self.cert), "--tls-key".into(), path(&self.key)];
        for id in members {
            args.extend(["--tls-name".into(), id.clone()]);
        }
        args
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A CA made on the spot and one certificate per member id (CN and DNS SAN = the id), under
/// `<dir>/tls`: `ca.crt`, `<id>.crt`, `<id>.key` (keys readable by the owner only). The CA's
/// key is never written: nothing else can be issued.
pub fn throwaway(dir: &Path, ids: &[String]) -> Result<Vec<Files>, String> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).map_err(|e| format!("{}: {e}", tls.display()))?;
    let ca = Ca::new("rsl-kv throwaway CA");
    let ca_path = tls.join("ca.crt");
    write(&ca_path, &ca.cert_pem(), 0o644)?;
    let now = SystemTime::now();
    let not_before = now - Duration::from_secs(3600); // clocks of a test host may differ a little
    ids.iter()
        .map(|id| {
            let issued = ca.issue(&LeafSpec { name: id, not_before, not_after: now + THROWAWAY_VALIDITY });
            let (cert, key) = (tls.join(format!("{id}.crt")), tls.join(format!("{id}.key")));
            write(&cert, &issued.cert_pem, 0o644)?;
            write(&key, &issued.key_pem, 0o600)?;
            Ok(Files { ca: ca_path.clone(), cert, key })
        })
        .collect()
}

/// Writes `text` to a new file (replacing an old one) with `mode`.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_needs_a_ca_or_pins() {
        let args = TlsArgs { tls_cert: Some("c".into()), tls_key: Some("k".into()), ..TlsArgs::default() };
        assert!(args.settings().is_err());
        assert_eq!(TlsArgs::default().settings(), Ok(None));
        let with_ca = TlsArgs { tls_ca: Some("ca".into()), tls_names: vec!["1".into()], ..args };
        let s = with_ca.settings().unwrap().unwrap();
        assert_eq!((s.peers.require_chain, &s.peers.names[..]), (true, &["1".to_string()][..]));
    }
}
