//! `wss://`: the client's TLS configuration, made once at start, and stable names for
//! TLS failures in the error counts. The per-connection state is `pool::tls`.
//!
//! Owns: which server certificates are trusted (`--ca-file`, the system's bundle, or
//! anything with `--insecure`), the protocol versions, ALPN, resumption. Must not touch:
//! sockets, connections.
//!
//! The configuration mirrors the server's (`server::tls`): rustls on the `ring` provider,
//! TLS 1.3 and 1.2, ALPN `http/1.1` (RFC 7301; what a browser offers for `wss://`).
//! Session resumption is off, so every handshake the bench makes is a full one: `churn`
//! over `wss://` then measures the server's cost of a new client, the same for every
//! server, rather than how well its ticket cache happens to match the bench's.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::server::tls::ALPN_HTTP11;

/// The CA bundle trusted when neither `--ca-file` nor `--insecure` is given (Debian's
/// `ca-certificates`).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What to trust, from the command line.
#[derive(Clone, Copy, Debug)]
pub enum Trust<'a> {
    /// `--insecure`: any certificate (self-signed test certificates only).
    Anything,
    /// `--ca-file PEM`: these CAs (or this very self-signed certificate) and no others.
    CaFile(&'a Path),
    /// Neither flag: the system's CA bundle.
    System,
}

/// The client configuration every `wss://` connection of a run shares.
pub fn client_config(trust: Trust<'_>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(provider::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: no usable protocol version: {e}"))?;
    let mut config = match trust {
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
        Trust::CaFile(path) => builder.with_root_certificates(roots(path, "--ca-file")?).with_no_client_auth(),
        Trust::System => builder.with_root_certificates(roots(Path::new(SYSTEM_CA_FILE), "")?).with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file as a trust anchor; at least one must be usable.
pub fn roots(path: &Path, flag: &str) -> Result<RootCertStore, String> {
    let what = if flag.is_empty() {
        format!(
            "the system CA bundle {} (for a self-signed server, give its certificate with --ca-file PEM, \
             or --insecure)",
            path.display()
        )
    } else {
        format!("{flag} {}", path.display())
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what}: cannot read: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not a PEM file: {e}"))?;
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{what}: no usable CERTIFICATE block"));
    }
    Ok(store)
}

/// The server name for `host`: an IP address as such (no SNI is sent for it, RFC 6066
/// §3, and the certificate must list the IP), anything else as a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("'{host}' is not a valid TLS server name: {e}"))
}

/// `--insecure`: accepts every server certificate, whoever signed it and whatever it
/// names, so a server with a self-signed *test* certificate can be loaded without
/// copying that certificate around. For self-signed test certificates only: it gives up
/// the authentication TLS exists for. The handshake signatures are still checked (the
/// server must hold the key of the certificate it sent), so the TLS work the server
/// does is exactly that of a verified connection.
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl fmt::Debug for AcceptAnyCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AcceptAnyCertificate (--insecure)")
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The prefix of every error kind that means "the server's certificate was refused".
pub const CERT_ERROR_PREFIX: &str = "tls_cert_";

/// A stable snake_case name for a TLS failure, for the error counts.
pub fn error_kind(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(cert) => {
            let why = match cert {
                CertificateError::UnknownIssuer => "unknown_issuer",
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => "wrong_name",
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
                // Signed by a key other than the trusted one of that name (say, two
                // self-signed certificates with the same subject).
                CertificateError::BadSignature => "bad_signature",
                // webpki's own reasons, named as it names them (`CaUsedAsEndEntity`: a CA
                // certificate, such as `openssl req -x509` makes by default, served as
                // the leaf).
                CertificateError::Other(other) => {
                    let name = other.to_string();
                    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()) {
                        return format!("{CERT_ERROR_PREFIX}{}", snake_case(&name));
                    }
                    "invalid"
                }
                _ => "invalid",
            };
            format!("{CERT_ERROR_PREFIX}{why}")
        }
        rustls::Error::AlertReceived(alert) => format!("tls_alert_{}", snake_case(&format!("{alert:?}"))),
        rustls::Error::NoApplicationProtocol => "tls_no_alpn".to_owned(),
        // Bytes that are not TLS records: most likely a plain ws:// server.
        rustls::Error::InvalidMessage(_) => "tls_not_tls".to_owned(),
        _ => "tls_error".to_owned(),
    }
}

/// `HandshakeFailure` → `handshake_failure`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out.retain(|c| c.is_ascii_alphanumeric() || c == '_');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_for_each_kind_of_trust() {
        let insecure = client_config(Trust::Anything).unwrap();
        assert_eq!(insecure.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let missing = client_config(Trust::CaFile(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(missing.contains("--ca-file /nonexistent/ca.pem"), "{missing}");
        if Path::new(SYSTEM_CA_FILE).exists() {
            client_config(Trust::System).unwrap();
        }
    }

    #[test]
    fn server_names() {
        assert!(matches!(server_name("127.0.0.1").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("::1").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("chat.example").unwrap(), ServerName::DnsName(_)));
        assert!(server_name("not a name").is_err());
    }

    #[test]
    fn error_kinds() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(error_kind(&unknown), "tls_cert_unknown_issuer");
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert_eq!(error_kind(&alert), "tls_alert_handshake_failure");
        assert_eq!(error_kind(&rustls::Error::NoApplicationProtocol), "tls_no_alpn");
    }
}
