//! Who is on the other end of a connection: its address and, over mutual
//! TLS, the names its (already verified) certificate carries.

use std::net::SocketAddr;
use std::sync::Arc;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::activity::Activity;
use crate::config::certs::ATTRIBUTE_NAMES;
use crate::config::{CertIdentity, DistinguishedName};

/// A connection's peer, handed to every request on it in the request's
/// extensions (tonic's `Connected`). Parsed once per connection, not per
/// call.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The client certificate's names; `None` without mutual TLS.
    pub identity: Option<Arc<PeerIdentity>>,
    /// The connection's requests (see `activity.rs`).
    pub activity: Arc<Activity>,
}

/// The names of a verified client certificate that `[[tenants.certs]]`
/// entries can match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject; `None` when it is empty (the names are in the SAN).
    pub subject: Option<DistinguishedName>,
    /// The subjectAltName DNS names, lower-cased.
    pub dns: Vec<String>,
    /// The subjectAltName URIs.
    pub uris: Vec<String>,
}

impl PeerIdentity {
    /// Reads the names of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let attributes = cert.subject().iter_attributes().map(|a| {
            let oid = a.attr_type().to_id_string();
            let name = ATTRIBUTE_NAMES
                .iter()
                .find(|(o, _)| *o == oid)
                .map_or(oid.clone(), |(_, n)| (*n).to_string());
            // A value in a string type gatehouse does not decode becomes
            // `#hex`: it can never equal a configured value, and never
            // silently drops out of the comparison.
            let value = match a.as_str() {
                Ok(s) => s.to_string(),
                Err(_) => format!("#{}", hex::encode(a.as_slice())),
            };
            (name, value)
        });
        // Types are known names or dotted OIDs, so the only failure is an
        // empty subject.
        let subject = DistinguishedName::from_attributes(attributes).ok();
        let mut dns = Vec::new();
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => dns.push(n.to_ascii_lowercase()),
                    GeneralName::URI(u) => uris.push((*u).to_string()),
                    _ => {}
                }
            }
        }
        Ok(Self { subject, dns, uris })
    }

    /// Whether this certificate carries `identity`.
    pub fn matches(&self, identity: &CertIdentity) -> bool {
        match identity {
            CertIdentity::Subject(dn) => self.subject.as_ref() == Some(dn),
            CertIdentity::Dns(name) => self.dns.iter().any(|d| d == name),
            CertIdentity::Uri(uri) => self.uris.iter().any(|u| u == uri),
        }
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.subject, self.uris.first(), self.dns.first()) {
            (Some(dn), _, _) => write!(f, "{dn}"),
            (None, Some(uri), _) => write!(f, "URI:{uri}"),
            (None, None, Some(dns)) => write!(f, "DNS:{dns}"),
            (None, None, None) => f.write_str("(no names)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn names_are_read_from_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["Batch.Acme.Example".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ci");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme");
        params
            .subject_alt_names
            .push(rcgen::SanType::URI("spiffe://acme/ci".try_into().unwrap()));
        let id = PeerIdentity::from_der(&der(params)).unwrap();
        assert_eq!(id.to_string(), "CN=ci, O=Acme");
        let subject = |s| CertIdentity::Subject(DistinguishedName::parse(s).unwrap());
        assert!(id.matches(&subject("O=Acme, CN=ci")));
        assert!(
            !id.matches(&subject("CN=ci")),
            "a part of the subject is not the subject"
        );
        assert!(id.matches(&CertIdentity::dns("batch.acme.example")));
        assert!(id.matches(&CertIdentity::Uri("spiffe://acme/ci".into())));
        assert!(!id.matches(&CertIdentity::Uri("spiffe://acme/other".into())));
    }

    #[test]
    fn an_empty_subject_is_named_by_its_san() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .subject_alt_names
            .push(rcgen::SanType::URI("spiffe://acme/w".try_into().unwrap()));
        let id = PeerIdentity::from_der(&der(params)).unwrap();
        assert_eq!(id.subject, None);
        assert_eq!(id.to_string(), "URI:spiffe://acme/w");
        assert!(PeerIdentity::from_der(b"not a certificate").is_err());
    }
}
