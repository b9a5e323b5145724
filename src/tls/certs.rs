//! Making a CA and the certificates Quarry uses, with rcgen (`quarryctl certs`, and
//! the tests). Every certificate serves both ends of a connection (its extended key
//! usages name server and client authentication): a node presents the same one to
//! clients and to peers.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::identity::{ADMIN_URI, NODE_URI_PREFIX};
use crate::raft::NodeId;

/// Whom a certificate is for; it decides the role the certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Node(NodeId),
    Admin,
    /// An ordinary client, by name (its common name).
    Client(String),
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ a little) for `days` days.
    pub fn days(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now - Duration::hours(1), not_after: now + Duration::days(days) }
    }
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that can issue certificates.
pub struct Authority {
    issued: Issued,
    issuer: Issuer<'static, KeyPair>,
}

fn error(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Authority {
    /// A new self-signed CA named `name`, valid for `validity`.
    pub fn new(name: &str, validity: Validity) -> Result<Authority, String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        (params.not_before, params.not_after) = (validity.not_before, validity.not_after);
        let key = KeyPair::generate().map_err(error("cannot make a key"))?;
        let cert = params.self_signed(&key).map_err(error("cannot sign the CA certificate"))?;
        let issued = Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(Authority { issued, issuer: Issuer::new(params, key) })
    }

    /// A CA from its certificate and key (PEM), to issue more certificates.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Authority, String> {
        let key = KeyPair::from_pem(key_pem).map_err(error("the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(error("the CA certificate"))?;
        let key_copy = KeyPair::from_pem(key_pem).map_err(error("the CA key"))?;
        let issued = Issued { cert_pem: cert_pem.to_owned(), key_pem: key_copy.serialize_pem() };
        Ok(Authority { issued, issuer })
    }

    /// The CA's own certificate and key.
    pub fn own(&self) -> &Issued {
        &self.issued
    }

    /// A certificate for `holder`, valid for `validity`, naming `hosts` (IP addresses
    /// or DNS names: the addresses it is dialled at, for a node).
    pub fn issue(&self, holder: &Holder, hosts: &[String], validity: Validity) -> Result<Issued, String> {
        let mut params = CertificateParams::default();
        let (common_name, role_uri) = match holder {
            Holder::Node(id) => (format!("quarry-node-{id}"), Some(format!("{NODE_URI_PREFIX}{id}"))),
            Holder::Admin => ("quarry-admin".to_owned(), Some(ADMIN_URI.to_owned())),
            Holder::Client(name) => (name.clone(), None),
        };
        params.distinguished_name = distinguished_name(&common_name);
        for host in hosts {
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.as_str().try_into().map_err(error("a host name"))?),
            };
            params.subject_alt_names.push(san);
        }
        if let Some(uri) = role_uri {
            params.subject_alt_names.push(SanType::URI(uri.as_str().try_into().map_err(error("a role URI"))?));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        (params.not_before, params.not_after) = (validity.not_before, validity.not_after);
        let key = KeyPair::generate().map_err(error("cannot make a key"))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(error("cannot sign the certificate"))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}
