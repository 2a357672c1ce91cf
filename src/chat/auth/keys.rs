//! Which kind of public key a PEM file holds, so the server knows the one algorithm it
//! implies: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA). Read from the PEM label
//! and the SubjectPublicKeyInfo's algorithm OID (RFC 5280 §4.1.2.7) rather than by trying
//! each loader, so a P-384 key or a private key is refused with a message that says why.
//!
//! Owns: PEM framing and the few DER bytes that name the algorithm. Must not touch:
//! the key material itself (`jsonwebtoken` parses and uses it), files, logs.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

/// RFC 5280 §4.1.2.7: a SubjectPublicKeyInfo names its key's algorithm by OID. These are
/// the DER encodings (tag 0x06, length, value) of the ones we accept.
/// rsaEncryption, 1.2.840.113549.1.1.1 (RFC 8017 appendix C).
const OID_RSA_ENCRYPTION: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1 (RFC 5480 §2.1.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// secp256r1 (P-256), 1.2.840.10045.3.1.7 (RFC 5480 §2.1.1.1): the curve ES256 uses.
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// id-Ed25519, 1.3.101.112 (RFC 8410 §3).
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER tag of a SEQUENCE (X.690 §8.9).
const DER_SEQUENCE: u8 = 0x30;

/// The kinds of public key we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicKeyKind {
    Rsa,     // for RS256
    EcP256,  // for ES256
    Ed25519, // for EdDSA
}

/// The kind of a PEM public key, from its label and (for SubjectPublicKeyInfo) its
/// algorithm OID. Errors describe the PEM's shape, never its content.
pub fn public_key_kind(pem: &[u8]) -> Result<PublicKeyKind, String> {
    let (label, der) = pem_block(pem)?;
    match label {
        // PKCS #1 RSAPublicKey (RFC 8017 appendix A.1.1).
        "RSA PUBLIC KEY" => Ok(PublicKeyKind::Rsa),
        "PUBLIC KEY" => spki_kind(&der),
        label if label.contains("PRIVATE KEY") => {
            Err("this is a private key; give the server the public key (openssl pkey -pubout)".to_owned())
        }
        _ => Err("the PEM is not a public key (expected -----BEGIN PUBLIC KEY-----)".to_owned()),
    }
}

/// The first PEM block (RFC 7468 §2): its label and its base64-decoded body.
fn pem_block(pem: &[u8]) -> Result<(&str, Vec<u8>), String> {
    const NOT_PEM: &str = "not a PEM file (expected -----BEGIN PUBLIC KEY-----)";
    let text = std::str::from_utf8(pem).map_err(|_| NOT_PEM.to_owned())?;
    let mut lines = text.lines().map(str::trim).skip_while(|line| !line.starts_with("-----BEGIN "));
    let begin = lines.next().ok_or(NOT_PEM)?;
    let label = begin.strip_prefix("-----BEGIN ").and_then(|rest| rest.strip_suffix("-----")).ok_or(NOT_PEM)?;
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    for line in lines {
        if line == end {
            let der = BASE64.decode(body).map_err(|_| format!("the {label} PEM body is not valid base64"))?;
            return Ok((label, der));
        }
        body.push_str(line);
    }
    Err(format!("the {label} PEM has no END line"))
}

/// The algorithm of a SubjectPublicKeyInfo (RFC 5280 §4.1):
/// `SEQUENCE { SEQUENCE { algorithm OID, parameters }, BIT STRING }`.
fn spki_kind(der: &[u8]) -> Result<PublicKeyKind, String> {
    const NOT_SPKI: &str = "the PUBLIC KEY PEM is not a SubjectPublicKeyInfo";
    let (spki, _) = der_sequence(der).ok_or(NOT_SPKI)?;
    let (algorithm_identifier, _) = der_sequence(spki).ok_or(NOT_SPKI)?;
    if algorithm_identifier.starts_with(OID_RSA_ENCRYPTION) {
        Ok(PublicKeyKind::Rsa)
    } else if algorithm_identifier.starts_with(OID_ED25519) {
        Ok(PublicKeyKind::Ed25519)
    } else if let Some(curve) = algorithm_identifier.strip_prefix(OID_EC_PUBLIC_KEY) {
        // RFC 5480 §2.1.1: the parameters name the curve; ES256 is P-256 only (RFC 7518 §3.4).
        match curve.starts_with(OID_P256) {
            true => Ok(PublicKeyKind::EcP256),
            false => Err("the EC public key is not on curve P-256 (the only one ES256 uses)".to_owned()),
        }
    } else {
        Err("unsupported public key type (use RSA, EC P-256 or Ed25519)".to_owned())
    }
}

/// The contents of the DER SEQUENCE at the start of `der` (X.690 §8.1: tag, length in
/// short or long form, contents) and the bytes after it.
fn der_sequence(der: &[u8]) -> Option<(&[u8], &[u8])> {
    /// X.690 §8.1.3.5: bit 8 set means the low bits count the length octets that follow.
    const LONG_FORM: u8 = 0x80;
    let (&tag, rest) = der.split_first()?;
    if tag != DER_SEQUENCE {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first & LONG_FORM == 0 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & !LONG_FORM);
        if count == 0 || count > std::mem::size_of::<usize>() || rest.len() < count {
            return None;
        }
        let (octets, rest) = rest.split_at(count);
        (octets.iter().fold(0usize, |len, &octet| (len << 8) | usize::from(octet)), rest)
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}
