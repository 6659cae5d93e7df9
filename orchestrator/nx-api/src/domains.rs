//! Custom domains (`nx domain`) and the certificate state of every name NX serves over HTTPS:
//! the wire types, and the check a domain name passes before nxd stores it.

use crate::checks::FieldError;
use serde::{Deserialize, Serialize};

/// The longest domain name in its text form, in characters (RFC 1035 §2.3.4: 255 octets on
/// the wire, 253 characters written without the trailing dot).
pub const MAX_DOMAIN_LEN: usize = 253;
/// The longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Checks and normalises a custom domain: lower case, one trailing dot dropped. Refused: an
/// IP address, a wildcard, an empty label (`..`), a label over 63 characters or with other
/// than letters, digits and inner hyphens (RFC 1123 §2.1; IDNs in their `xn--` form), a
/// single label, a name over 253 characters.
pub fn check_domain(input: &str) -> Result<String, FieldError> {
    let fail = |problem: String| FieldError {
        field: "domain".into(),
        problem,
    };
    let name = input.trim();
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return Err(fail("is empty: give a name like www.example.com".into()));
    }
    if name.parse::<std::net::IpAddr>().is_ok()
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::Ipv6Addr>()
            .is_ok()
    {
        return Err(fail(format!(
            "{input:?} is an IP address: certificates and routes are for names; point a name's A/AAAA record at this host and add that name"
        )));
    }
    if name.contains('*') {
        return Err(fail(format!(
            "{input:?} is a wildcard: add each name (www.example.com, shop.example.com); a wildcard certificate needs DNS-01, which NX does not do"
        )));
    }
    if name.len() > MAX_DOMAIN_LEN {
        return Err(fail(format!(
            "is {} characters long; a domain name has at most {MAX_DOMAIN_LEN} (RFC 1035)",
            name.len()
        )));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return Err(fail(format!(
            "{input:?} has an empty label (`..` or a leading dot): write it like www.example.com"
        )));
    }
    if labels.len() < 2 {
        return Err(fail(format!(
            "{input:?} is a single label: give the full name, like www.example.com"
        )));
    }
    for label in &labels {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok_chars || label.starts_with('-') || label.ends_with('-') {
            return Err(fail(format!(
                "label {label:?} may hold only letters, digits and inner hyphens (RFC 1123; write an international name in its xn-- form)"
            )));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(fail(format!(
                "label {label:?} is {} characters long; at most {MAX_LABEL_LEN} (RFC 1035)",
                label.len()
            )));
        }
    }
    Ok(name)
}

/// `POST /v1/sandboxes/{name}/domains`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDomain {
    pub domain: String,
}

/// Where a name's certificate stands.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateState {
    /// No certificate yet: an order is due or running (or the name has no route yet).
    Pending,
    /// A certificate is served.
    Valid,
    /// The last order failed; `next_attempt` says when the next one starts.
    Failed,
    /// Covered by the fixed `tls.cert_file`: no order.
    Fixed,
    /// HTTPS or ACME is off on this host: served on plain HTTP.
    Off,
}

/// A name's certificate state.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    pub state: CertificateState,
    /// The served certificate's `notAfter`, seconds since the Unix epoch.
    pub not_after: Option<i64>,
    /// The last failure, with the ACME server's reason when it gave one.
    pub error: Option<String>,
    /// Failed orders in a row.
    pub failures: u32,
    /// When the next order may start, seconds since the Unix epoch.
    pub next_attempt: Option<i64>,
}

impl CertificateStatus {
    /// A status with only a state.
    pub fn of(state: CertificateState) -> Self {
        Self {
            state,
            not_after: None,
            error: None,
            failures: 0,
            next_attempt: None,
        }
    }
}

/// A custom domain as `nx domain add` / `ls` show it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainView {
    /// The domain, lower case.
    pub domain: String,
    pub sandbox: String,
    /// The DNS record to create: a CNAME to the sandbox's production host (or A/AAAA records
    /// to this host's addresses).
    pub dns_record: String,
    pub certificate: CertificateStatus,
}

/// `DELETE /v1/domains/{domain}`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainRemoved {
    pub removed: String,
}

#[cfg(test)]
mod tests {
    use super::check_domain;

    #[test]
    fn domains_are_normalised_or_refused_with_what_to_do() {
        assert_eq!(check_domain("WWW.Example.COM.").unwrap(), "www.example.com");
        assert_eq!(
            check_domain("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        let long = format!("{}.example.com", vec!["a".repeat(60); 5].join("."));
        for (bad, says) in [
            ("203.0.113.7", "IP address"),
            ("::1", "IP address"),
            ("[2001:db8::1]", "IP address"),
            ("a..example.com", "empty label"),
            (".example.com", "empty label"),
            ("*.example.com", "wildcard"),
            ("localhost", "single label"),
            ("ex_ample.com", "letters, digits"),
            ("-x.example.com", "inner hyphens"),
            (long.as_str(), "at most 253"),
            (&format!("{}.com", "a".repeat(64)), "at most 63"),
            ("", "empty"),
        ] {
            let e = check_domain(bad).unwrap_err();
            assert!(e.problem.contains(says), "{bad}: {e}");
            assert_eq!(e.field, "domain");
        }
    }
}
