//! Client certificate identities, as `[[tenants.certs]]` names them.
//!
//! ```toml
//! [[tenants.certs]]
//! subject = "CN=ci, O=Acme"          # the certificate's subject, or
//! # dns = "ci.acme.example"          # a DNS name of its subjectAltName, or
//! # uri = "spiffe://acme/ci"         # a URI of its subjectAltName
//! scopes = ["sessions:open", "sessions:use"]
//! ```
//!
//! A subject matches when it has the same attributes with the same values,
//! in any order: `CN=ci, O=Acme` and `O=Acme,CN=ci` are one name. Attribute
//! names are case-insensitive; values are compared exactly.

use std::fmt;

/// An X.500 distinguished name, normalised for comparison: attribute
/// types upper-case short names (or dotted OIDs), sorted with their values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DistinguishedName(Vec<(String, String)>);

/// The short names gatehouse knows for subject attributes; anything else is
/// written as its dotted OID (`2.5.4.12=...`).
pub const ATTRIBUTE_NAMES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.5", "SERIALNUMBER"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("1.2.840.113549.1.9.1", "EMAILADDRESS"),
];

impl DistinguishedName {
    /// Builds a name from `(type, value)` pairs; a type is a short name of
    /// [`ATTRIBUTE_NAMES`] (any case) or a dotted OID.
    pub fn from_attributes<I, T, V>(attributes: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = (T, V)>,
        T: AsRef<str>,
        V: Into<String>,
    {
        let mut out = Vec::new();
        for (t, v) in attributes {
            out.push((attribute_type(t.as_ref())?, v.into()));
        }
        if out.is_empty() {
            return Err("a subject needs at least one attribute, like CN=name".into());
        }
        out.sort();
        Ok(Self(out))
    }

    /// Parses `CN=ci, O=Acme` (RFC 4514 order or the reverse; `\,` escapes
    /// a comma in a value).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut attributes = Vec::new();
        for part in split_unescaped(text) {
            let part = part.trim();
            let (t, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not TYPE=value"))?;
            let (t, v) = (t.trim(), v.trim());
            if v.is_empty() {
                return Err(format!("{t} has an empty value"));
            }
            attributes.push((t.to_string(), v.to_string()));
        }
        Self::from_attributes(attributes)
    }
}

impl fmt::Display for DistinguishedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (t, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{t}={}", v.replace(',', "\\,"))?;
        }
        Ok(())
    }
}

/// The canonical spelling of an attribute type: a known short name upper
/// case, a known OID as its short name, any other OID as itself.
fn attribute_type(t: &str) -> Result<String, String> {
    let upper = t.to_ascii_uppercase();
    if let Some((_, name)) = ATTRIBUTE_NAMES
        .iter()
        .find(|(oid, name)| *name == upper || *oid == t)
    {
        return Ok((*name).to_string());
    }
    let is_oid = !t.is_empty()
        && t.split('.').count() >= 2
        && t.split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()));
    if is_oid {
        Ok(t.to_string())
    } else {
        let known: Vec<&str> = ATTRIBUTE_NAMES.iter().map(|(_, n)| *n).collect();
        Err(format!(
            "unknown attribute type {t:?} (use one of {} or a dotted OID)",
            known.join(", ")
        ))
    }
}

/// Splits at commas not preceded by a backslash, unescaping `\,`.
fn split_unescaped(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.push(chars.next().unwrap_or('\\')),
            ',' => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

/// What a `[[tenants.certs]]` entry matches in a client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertIdentity {
    /// The whole subject.
    Subject(DistinguishedName),
    /// A `dNSName` of the subjectAltName (case-insensitive).
    Dns(String),
    /// A `uniformResourceIdentifier` of the subjectAltName (exact), e.g. a
    /// SPIFFE id.
    Uri(String),
}

impl CertIdentity {
    /// A DNS identity, lower-cased: DNS names compare case-insensitively.
    pub fn dns(name: &str) -> Self {
        Self::Dns(name.to_ascii_lowercase())
    }
}

impl fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Subject(dn) => write!(f, "subject {dn}"),
            Self::Dns(name) => write!(f, "dns {name}"),
            Self::Uri(uri) => write!(f, "uri {uri}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_compare_in_any_order_and_case_of_types() {
        let a = DistinguishedName::parse("CN=ci, O=Acme").unwrap();
        let b = DistinguishedName::parse("o=Acme,cn=ci").unwrap();
        let c = DistinguishedName::parse("2.5.4.3=ci,2.5.4.10=Acme").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_ne!(a, DistinguishedName::parse("CN=ci, O=acme").unwrap());
        assert_ne!(a, DistinguishedName::parse("CN=ci").unwrap());
        assert_eq!(a.to_string(), "CN=ci, O=Acme");
    }

    #[test]
    fn escaped_commas_stay_in_the_value() {
        let dn = DistinguishedName::parse(r"CN=ci, O=Acme\, Inc.").unwrap();
        assert_eq!(
            dn,
            DistinguishedName::from_attributes([("O", "Acme, Inc."), ("CN", "ci")]).unwrap()
        );
        assert_eq!(dn.to_string(), r"CN=ci, O=Acme\, Inc.");
    }

    #[test]
    fn bad_subjects_say_why() {
        for (text, why) in [
            ("", "not TYPE=value"),
            ("CN", "not TYPE=value"),
            ("CN=", "empty value"),
            ("Nickname=x", "unknown attribute type"),
            ("1.=x", "unknown attribute type"),
        ] {
            let e = DistinguishedName::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        assert_eq!(
            DistinguishedName::parse("2.5.4.12=Engineer")
                .unwrap()
                .to_string(),
            "2.5.4.12=Engineer"
        );
    }
}
