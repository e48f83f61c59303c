//! Mutual TLS for C: the original's `SetThumbprintsForSsl` / `SetSubjectNamesForSsl`, the
//! thumbprint directory and a CA-and-pins alternative, kept process-wide as the original keeps
//! them, checked when set, and turned into `RslConfig::tls` by each later `rsl_replica_initialize`.

use crate::{fail, guard_flag, guard_value};
use rsl_engine::runtime::tls::{IdentitySource, PeerRules, SpkiPin, SubjectRule, Thumbprint, TlsSettings};
use std::ffi::{c_char, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// Where `SetThumbprintsForSsl` looks for `<THUMBPRINT>.crt`/`.key` when neither
/// `rsl_set_tls_dir` nor `RSL_TLS_DIR` says otherwise.
const DEFAULT_TLS_DIR: &str = "/etc/rsl/tls";

/// `SetThumbprintsForSsl`'s arguments, parsed.
#[derive(Clone, Debug, PartialEq)]
struct Thumbs {
    a: Option<Thumbprint>,
    b: Option<Thumbprint>,
    validate_ca_chain: bool,
}

/// `SetSubjectNamesForSsl`'s arguments, parsed.
#[derive(Clone, Debug, PartialEq)]
struct Subjects {
    rules: Vec<SubjectRule>,
    consider_identities_whitelist: bool,
}

/// `rsl_set_tls_files`'s arguments, parsed.
#[derive(Clone, Debug, PartialEq)]
struct Files {
    ca: Option<PathBuf>,
    cert: PathBuf,
    key: PathBuf,
    pins: Vec<SpkiPin>,
    names: Vec<String>,
}

/// Every TLS call's effect so far.
#[derive(Clone, Debug, Default, PartialEq)]
struct Pieces {
    dir: Option<PathBuf>,
    thumbs: Option<Thumbs>,
    subjects: Option<Subjects>,
    files: Option<Files>,
}

static PIECES: Mutex<Pieces> = Mutex::new(Pieces { dir: None, thumbs: None, subjects: None, files: None });

fn update(f: impl FnOnce(&mut Pieces)) {
    // A panic while holding the lock cannot leave the pieces half-written (each update is one
    // assignment), so a poisoned lock is still good.
    f(&mut PIECES.lock().unwrap_or_else(|e| e.into_inner()));
}

/// The TLS settings the next replica starts with (`None`: plain TCP); `Err` names a
/// combination that admits no one.
pub(crate) fn settings() -> Result<Option<TlsSettings>, String> {
    let pieces = PIECES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let env_dir = std::env::var_os("RSL_TLS_DIR").filter(|d| !d.is_empty()).map(PathBuf::from);
    pieces.settings(env_dir)
}

impl Pieces {
    /// What these pieces amount to: the identity from the files if given, else by thumbprint
    /// from the directory; the peer rules of every call together (a peer any of them admits
    /// is admitted).
    fn settings(&self, env_dir: Option<PathBuf>) -> Result<Option<TlsSettings>, String> {
        let rules = self.subjects.as_ref().map_or(&[][..], |s| &s.rules[..]);
        if self.thumbs.is_none() && rules.is_empty() && self.files.is_none() {
            return Ok(None);
        }
        let dir = self.dir.clone().or(env_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_TLS_DIR));
        let thumbs = self.thumbs.clone().unwrap_or(Thumbs { a: None, b: None, validate_ca_chain: true });
        let mut peers = PeerRules { subjects: rules.to_vec(), ..PeerRules::default() };
        // The original's considerIdentitiesWhitelist=false rejects every certificate; we take
        // its evident intent: leaf thumbprints stop admitting peers, subject+issuer still does.
        if self.subjects.as_ref().is_none_or(|s| s.consider_identities_whitelist) {
            peers.thumbprints.extend(thumbs.a.iter().chain(&thumbs.b));
        }
        if self.thumbs.is_some() {
            let bundle = dir.join("ca.crt");
            // validateCAChain=false: the chain is checked (and a failure logged) only if the
            // directory has a bundle to check it against.
            if thumbs.validate_ca_chain || bundle.is_file() {
                peers.ca = Some(bundle);
            }
            peers.require_chain = thumbs.validate_ca_chain;
        }
        let identity = match &self.files {
            Some(files) => {
                peers.spki_pins.extend(&files.pins);
                peers.names.extend(files.names.iter().cloned());
                if files.ca.is_some() {
                    peers.ca.clone_from(&files.ca);
                    peers.require_chain = true;
                }
                IdentitySource::Files { cert: files.cert.clone(), key: files.key.clone() }
            }
            None => IdentitySource::Thumbprints { dir, a: thumbs.a, b: thumbs.b },
        };
        // With every list empty a valid chain alone would admit: far wider than the original,
        // which admitted nobody here.
        let lists_empty = peers.thumbprints.is_empty() && peers.subjects.is_empty() && peers.spki_pins.is_empty() && peers.names.is_empty();
        if lists_empty && self.files.as_ref().is_none_or(|f| f.ca.is_none()) {
            return Err("TLS: considerIdentitiesWhitelist=false with no subject rule admits no peer".into());
        }
        Ok(Some(TlsSettings { identity, peers }))
    }
}

/// A C string argument: `None` for NULL; `Err` (logged) if it is not UTF-8.
///
/// # Safety
/// `s` is NULL or NUL-terminated.
unsafe fn text<'a>(s: *const c_char, what: &str) -> Result<Option<&'a str>, ()> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated, per the caller.
    let bytes = unsafe { CStr::from_ptr(s) }.to_bytes();
    std::str::from_utf8(bytes).map(Some).map_err(|_| fail((), format_args!("{what} is not UTF-8")))
}

/// A path argument: `None` for NULL or empty.
///
/// # Safety
/// `s` is NULL or NUL-terminated.
unsafe fn path(s: *const c_char) -> Option<PathBuf> {
    // SAFETY: forwarded from the caller.
    let bytes = (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_bytes())?;
    (!bytes.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(bytes)))
}

fn thumbprint(text: &str, what: &str) -> Result<Thumbprint, ()> {
    Thumbprint::parse(text).map_err(|e| fail((), format_args!("{what}: {e}")))
}

/// The non-empty entries of a `;`-separated list.
fn entries(list: &str) -> impl Iterator<Item = &str> {
    list.split(';').map(str::trim).filter(|s| !s.is_empty())
}

/// `SetSubjectNamesForSsl`'s list of issuer thumbprints: at least one, each valid.
fn issuer_list(list: &str, what: &str) -> Result<Vec<Thumbprint>, ()> {
    let thumbs = entries(list).map(|t| thumbprint(t, what)).collect::<Result<Vec<_>, _>>()?;
    if thumbs.is_empty() {
        fail((), format_args!("{what} names no issuer thumbprint"));
        return Err(());
    }
    Ok(thumbs)
}

/// An SPKI SHA-256 pin: 64 hex digits (either case; spaces and colons ignored).
fn spki_pin(text: &str) -> Result<SpkiPin, ()> {
    SpkiPin::parse(text).map_err(|e| fail((), format_args!("rsl_set_tls_files: {e}")))
}

/// `SetThumbprintsForSsl`: turns on mutual TLS on every RSL port of replicas initialized
/// afterwards. The replica presents `<dir>/<thumb_a>.crt` with its `.key` (else thumb_b's; PEM,
/// chain leaf first, upper-case hex names), where `dir` is `rsl_set_tls_dir`'s, else
/// `$RSL_TLS_DIR`, else `/etc/rsl/tls`. A peer whose leaf thumbprint is A or B is admitted.
/// With `validate_ca_chain` its chain must also lead to `<dir>/ca.crt` (missing: initialize
/// fails); without, a chain failure is only logged (when `ca.crt` exists). `check_revocation`
/// is not supported (no CRL or OCSP): logged and ignored. Both NULL turns this rule off.
///
/// Thumbprints are 40 hex digits (spaces and colons ignored). Returns false (logged, nothing
/// changed) for a malformed one.
///
/// # Safety
/// Each string is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn rsl_set_thumbprints_for_ssl(
    thumb_a: *const c_char,
    thumb_b: *const c_char,
    validate_ca_chain: bool,
    check_revocation: bool,
) -> bool {
    guard_flag(|| {
        let parse = |s: *const c_char, what: &str| -> Result<Option<Thumbprint>, ()> {
            // SAFETY: forwarded from the caller.
            unsafe { text(s, what) }?.map(|t| thumbprint(t, what)).transpose()
        };
        let (Ok(a), Ok(b)) = (parse(thumb_a, "SetThumbprintsForSsl: thumbprint A"), parse(thumb_b, "SetThumbprintsForSsl: thumbprint B"))
        else {
            return false;
        };
        if check_revocation && (a.is_some() || b.is_some()) {
            tracing::warn!("TLS: checkRevocation is not supported (no CRL or OCSP here): ignored");
        }
        let thumbs = (a.is_some() || b.is_some()).then_some(Thumbs { a, b, validate_ca_chain });
        update(|p| p.thumbs = thumbs);
        true
    })
}

/// `SetSubjectNamesForSsl`: admits a peer whose subject CN is `subject_a` (a leading `CN=` is
/// ignored) and whose issuer's thumbprint is in `parent_thumbs_a` (`;`-separated), or the same
/// with B. A subject or its list NULL leaves that rule out. With
/// `consider_identities_whitelist` false, `rsl_set_thumbprints_for_ssl`'s A and B still name
/// the local certificate but no longer admit peers (the original, as coded, then admitted
/// nobody at all). The local certificate comes from `rsl_set_thumbprints_for_ssl` or
/// `rsl_set_tls_files`. Returns false (logged, nothing changed) for a malformed thumbprint or
/// an empty list.
///
/// # Safety
/// Each string is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn rsl_set_subject_names_for_ssl(
    subject_a: *const c_char,
    parent_thumbs_a: *const c_char,
    subject_b: *const c_char,
    parent_thumbs_b: *const c_char,
    consider_identities_whitelist: bool,
) -> bool {
    guard_flag(|| {
        let rule = |subject: *const c_char, parents: *const c_char, what: &str| -> Result<Option<SubjectRule>, ()> {
            // SAFETY: forwarded from the caller.
            let (subject, parents) = unsafe { (text(subject, what)?, text(parents, what)?) };
            let (Some(subject), Some(parents)) = (subject, parents) else { return Ok(None) };
            Ok(Some(SubjectRule { subject: subject.to_owned(), issuers: issuer_list(parents, what)? }))
        };
        let (Ok(a), Ok(b)) = (
            rule(subject_a, parent_thumbs_a, "SetSubjectNamesForSsl: subject A"),
            rule(subject_b, parent_thumbs_b, "SetSubjectNamesForSsl: subject B"),
        ) else {
            return false;
        };
        let rules: Vec<SubjectRule> = a.into_iter().chain(b).collect();
        update(|p| p.subjects = Some(Subjects { rules, consider_identities_whitelist }));
        true
    })
}

/// The directory `rsl_set_thumbprints_for_ssl` finds certificates in; NULL or empty goes back
/// to `$RSL_TLS_DIR`, else `/etc/rsl/tls`. Read at `rsl_replica_initialize`.
///
/// # Safety
/// `dir` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn rsl_set_tls_dir(dir: *const c_char) {
    guard_value((), || {
        // SAFETY: forwarded from the caller.
        let dir = unsafe { path(dir) };
        update(|p| p.dir = dir);
    })
}

/// The modern alternative: the replica presents `cert` (PEM chain, leaf first) with `key`;
/// a peer is admitted when its chain leads to the CA bundle `ca` (if given, it is required)
/// and, if either list is given, its SPKI SHA-256 is in `spki_pins` (`;`-separated, 64 hex
/// digits each) or its subject CN or a DNS SAN is in `names` (`;`-separated). Names need
/// `ca` (anyone can issue a certificate with any name), and something must be given: `ca`
/// or pins. Combines with the thumbprint and subject rules (any admits); this identity
/// replaces the thumbprint one. `cert` and `key` both NULL turns it off. Returns false
/// (logged, nothing changed) for a malformed or missing argument; files are read at
/// `rsl_replica_initialize`.
///
/// # Safety
/// Each string is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn rsl_set_tls_files(
    ca: *const c_char,
    cert: *const c_char,
    key: *const c_char,
    spki_pins: *const c_char,
    names: *const c_char,
) -> bool {
    guard_flag(|| {
        // SAFETY: forwarded from the caller.
        let (ca, cert, key) = unsafe { (path(ca), path(cert), path(key)) };
        // SAFETY: forwarded from the caller.
        let (Ok(pins), Ok(names)) =
            (unsafe { text(spki_pins, "rsl_set_tls_files: SPKI pins") }, unsafe { text(names, "rsl_set_tls_files: names") })
        else {
            return false;
        };
        let (cert, key) = match (cert, key) {
            (None, None) => {
                update(|p| p.files = None);
                return true;
            }
            (Some(cert), Some(key)) => (cert, key),
            _ => {
                return fail(false, "TLS: rsl_set_tls_files needs both a certificate and a key");
            }
        };
        let Ok(pins) = entries(pins.unwrap_or("")).map(spki_pin).collect::<Result<Vec<_>, _>>() else { return false };
        let names: Vec<String> = entries(names.unwrap_or("")).map(str::to_owned).collect();
        if ca.is_none() && (pins.is_empty() || !names.is_empty()) {
            return fail(false, "TLS: rsl_set_tls_files needs a CA bundle, or SPKI pins and no names, to know whom to admit");
        }
        update(|p| p.files = Some(Files { ca, cert, key, pins, names }));
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(byte: u8) -> Thumbprint {
        Thumbprint([byte; 20])
    }

    #[test]
    fn nothing_set_is_plain_tcp() {
        assert_eq!(Pieces::default().settings(Some("/x".into())), Ok(None));
    }

    #[test]
    fn thumbprints_name_the_identity_and_the_peers_with_the_directory_bundle() {
        let pieces = Pieces { thumbs: Some(Thumbs { a: Some(t(1)), b: Some(t(2)), validate_ca_chain: true }), ..Pieces::default() };
        let s = pieces.settings(Some("/env".into())).unwrap().unwrap();
        assert_eq!(s.identity, IdentitySource::Thumbprints { dir: "/env".into(), a: Some(t(1)), b: Some(t(2)) });
        assert_eq!(s.peers.thumbprints, [t(1), t(2)]);
        assert_eq!(s.peers.ca, Some(PathBuf::from("/env/ca.crt")));
        assert!(s.peers.require_chain);
        let explicit = Pieces { dir: Some("/set".into()), ..pieces.clone() }.settings(Some("/env".into())).unwrap().unwrap();
        assert_eq!(explicit.identity, IdentitySource::Thumbprints { dir: "/set".into(), a: Some(t(1)), b: Some(t(2)) });
        let default = pieces.settings(None).unwrap().unwrap();
        assert_eq!(default.peers.ca, Some(PathBuf::from("/etc/rsl/tls/ca.crt")));
    }

    #[test]
    fn without_chain_validation_a_missing_bundle_is_not_asked_for() {
        let dir = std::env::temp_dir().join(format!("rsl-ffi-tls-{}", std::process::id()));
        let pieces = Pieces {
            dir: Some(dir.clone()),
            thumbs: Some(Thumbs { a: Some(t(1)), b: None, validate_ca_chain: false }),
            ..Pieces::default()
        };
        let s = pieces.settings(None).unwrap().unwrap();
        assert_eq!((s.peers.ca, s.peers.require_chain), (None, false));
    }

    #[test]
    fn identities_whitelist_off_keeps_the_identity_and_the_subject_rule_only() {
        let rule = SubjectRule { subject: "CN=ring".into(), issuers: vec![t(9)] };
        let pieces = Pieces {
            thumbs: Some(Thumbs { a: Some(t(1)), b: None, validate_ca_chain: true }),
            subjects: Some(Subjects { rules: vec![rule.clone()], consider_identities_whitelist: false }),
            ..Pieces::default()
        };
        let s = pieces.settings(None).unwrap().unwrap();
        assert!(s.peers.thumbprints.is_empty());
        assert_eq!(s.peers.subjects, [rule]);
        assert!(matches!(s.identity, IdentitySource::Thumbprints { a: Some(_), .. }));
        let no_rule = Pieces { subjects: Some(Subjects { rules: vec![], consider_identities_whitelist: false }), ..pieces };
        assert!(no_rule.settings(None).is_err(), "the chain alone must not admit where the original admitted no one");
    }

    #[test]
    fn files_replace_the_identity_and_add_pins_and_names() {
        let pieces = Pieces {
            files: Some(Files {
                ca: Some("/ca.pem".into()),
                cert: "/c.pem".into(),
                key: "/k.pem".into(),
                pins: vec![SpkiPin([7; 32])],
                names: vec!["1".into()],
            }),
            ..Pieces::default()
        };
        let s = pieces.settings(None).unwrap().unwrap();
        assert_eq!(s.identity, IdentitySource::Files { cert: "/c.pem".into(), key: "/k.pem".into() });
        assert_eq!(s.peers.spki_pins, [SpkiPin([7; 32])]);
        assert_eq!(s.peers.names, ["1"]);
        assert_eq!((s.peers.ca, s.peers.require_chain), (Some(PathBuf::from("/ca.pem")), true));
    }

    #[test]
    fn pins_and_lists_are_parsed_strictly() {
        assert_eq!(spki_pin(&"Ab".repeat(32)), Ok(SpkiPin([0xab; 32])));
        assert_eq!(spki_pin(&"ab:".repeat(32)), Ok(SpkiPin([0xab; 32])));
        assert!(spki_pin(&"ab".repeat(31)).is_err());
        assert!(spki_pin(&"zz".repeat(32)).is_err());
        assert_eq!(entries(" a; ;b;").collect::<Vec<_>>(), ["a", "b"]);
    }
}
