//! Certificates, keys and CAs read from PEM files, checked at once so that a wrong
//! file is one clear line at start (or at reload), not a failed handshake later.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The files a node's TLS is made of (etcd's flag names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate this node presents to everyone who connects, and its key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA of client certificates; without it, only the peer CA's are accepted.
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse connections without a client certificate.
    pub client_cert_auth: bool,
    /// The certificate this node presents when it connects to peers (it must name this
    /// node: `quarry://node/<id>`), and its key.
    pub peer_cert_file: PathBuf,
    pub peer_key_file: PathBuf,
    /// The CA of node certificates.
    pub peer_trusted_ca_file: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The certificates of a PEM file, the first checked to be valid now.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    let first = certs.first().ok_or_else(|| format!("{} holds no certificate", path.display()))?;
    check_validity(path, first)?;
    Ok(certs)
}

/// The private key of a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("{}: no PEM private key: {e}", path.display()))
}

/// The certificates of every file in `paths`, as roots of trust.
pub fn roots(paths: &[&Path]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for path in paths {
        for cert in certificates(path)? {
            store.add(cert).map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
        }
    }
    Ok(store)
}

/// Refuses a certificate that has expired or is not valid yet.
fn check_validity(path: &Path, cert: &CertificateDer<'_>) -> Result<(), String> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("{}: not an X.509 certificate: {e}", path.display()))?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(format!("{}: certificate expired on {}", path.display(), validity.not_after));
    }
    if now < validity.not_before {
        return Err(format!("{}: certificate is not valid until {}", path.display(), validity.not_before));
    }
    Ok(())
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(cert_file: &Path, key_file: &Path) -> Result<rustls::sign::CertifiedKey, String> {
    let chain = certificates(cert_file)?;
    let key = private_key(key_file)?;
    let mismatch =
        |e: rustls::Error| format!("{} and {} do not belong together: {e}", cert_file.display(), key_file.display());
    let signing = super::provider().key_provider.load_private_key(key).map_err(mismatch)?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(mismatch)?;
    Ok(certified)
}
