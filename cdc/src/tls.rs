//! TLS for the sidecar's regular sessions (catalog, status, copies, publish,
//! the lease), with the meaning libpq gives `sslmode` and `sslrootcert` — the
//! same meaning the replication connection (pg_walstream's rustls transport)
//! applies to the same `database_url`, so one URL secures every session alike.
//!
//! ```text
//!  database_url ──► split ──► sslmode, sslrootcert ──► TlsPolicy ──► rustls ClientConfig
//!                     │                                                   │
//!                     └──► every other parameter ──► tokio_postgres::Config
//!                                                                         ▼
//!                                         Config::connect(MakeRustlsConnect) ──► session
//! ```
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require` and has
//! no `sslrootcert`; the split takes both parameters out (URL query or
//! `key=value` form, the driver's own grammar for the rest) and keeps
//! everything else for the driver's parser.
//!
//! | `sslmode` | encrypted | certificate checked | host name checked |
//! |---|---|---|---|
//! | `disable` | never | – | – |
//! | `allow`, `prefer` (default) | if the server offers it | no | no |
//! | `require` | always | no | no |
//! | `verify-ca` | always | chain to a trusted root | no |
//! | `verify-full` | always | chain to a trusted root | yes |
//!
//! Trusted roots: the file `sslrootcert` names, and only it; without one (or
//! with libpq's reserved `sslrootcert=system`, which also makes `verify-full`
//! the default and refuses weaker modes) the bundled Mozilla roots.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// libpq's reserved `sslrootcert` value: the implementation's trusted roots.
const SSLROOTCERT_SYSTEM: &str = "system";

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "database_url: invalid sslmode {other:?} (expected disable, allow, prefer, \
                     require, verify-ca or verify-full)"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate is checked at all.
    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Where the trusted roots of `verify-ca`/`verify-full` come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The bundled Mozilla roots (`webpki-roots`).
    Bundled,
    /// Only the certificates of this PEM file.
    File(PathBuf),
}

/// What a connection string asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    pub mode: SslMode,
    pub roots: RootCerts,
}

impl fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sslmode={}", self.mode.as_str())?;
        if self.mode.verifies() {
            match &self.roots {
                RootCerts::Bundled => write!(f, " (bundled roots)")?,
                RootCerts::File(p) => write!(f, " (roots from {})", p.display())?,
            }
        }
        Ok(())
    }
}

/// A connection string split into its TLS policy and the rest, which
/// tokio-postgres parses.
pub(crate) struct SplitConninfo {
    pub(crate) rest: String,
    pub(crate) policy: TlsPolicy,
}

/// Take `sslmode` and `sslrootcert` out of a connection string (URL or
/// `key=value` form) and resolve them as libpq does.
pub(crate) fn split(conninfo: &str) -> Result<SplitConninfo> {
    let (rest, mode, rootcert) =
        if conninfo.starts_with("postgresql://") || conninfo.starts_with("postgres://") {
            split_url(conninfo)?
        } else {
            split_key_value(conninfo)?
        };
    let explicit = mode.is_some();
    let mut mode = match mode {
        Some(m) => SslMode::parse(&m)?,
        None => SslMode::Prefer,
    };
    let roots = match rootcert.as_deref() {
        Some(SSLROOTCERT_SYSTEM) => {
            match mode {
                _ if !explicit => mode = SslMode::VerifyFull,
                SslMode::VerifyFull => {}
                weak => {
                    return Err(Error::Config(format!(
                        "database_url: weak sslmode {:?} may not be used with sslrootcert=system \
                         (use verify-full)",
                        weak.as_str()
                    )));
                }
            }
            RootCerts::Bundled
        }
        Some(path) if !path.is_empty() => RootCerts::File(PathBuf::from(path)),
        _ => RootCerts::Bundled,
    };
    Ok(SplitConninfo {
        rest,
        policy: TlsPolicy { mode, roots },
    })
}

/// `postgresql://…?a=b&sslmode=x`: query parameters are percent-encoded
/// `key=value` pairs joined by `&`.
fn split_url(url: &str) -> Result<(String, Option<String>, Option<String>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None, None));
    };
    let (mut mode, mut rootcert) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        match key.as_str() {
            "sslmode" => mode = Some(decode(v)?),
            "sslrootcert" => rootcert = Some(decode(v)?),
            other => {
                refuse_client_certificates(other)?;
                kept.push(pair)
            }
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, rootcert))
}

/// Client certificates are not implemented: say so instead of the driver's
/// bare "unknown option".
fn refuse_client_certificates(key: &str) -> Result<()> {
    if matches!(key, "sslcert" | "sslkey" | "sslpassword") {
        return Err(Error::Config(format!(
            "database_url: {key}: client certificates are not supported yet; authenticate \
             with a password (SCRAM) over sslmode=verify-full"
        )));
    }
    Ok(())
}

fn decode(s: &str) -> Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| Error::Config("database_url: a query parameter is not UTF-8".into()))
}

/// `host=h sslmode='verify-full' …`: the grammar tokio-postgres and libpq
/// read (a keyword, `=`, a value bare or in single quotes, `\` escaping the
/// next character). The other parameters are kept as written.
fn split_key_value(s: &str) -> Result<(String, Option<String>, Option<String>)> {
    let bad = |what: &str| Error::Config(format!("database_url: {what}"));
    let (mut mode, mut rootcert) = (None, None);
    let mut kept: Vec<&str> = Vec::new();
    let mut it = s.char_indices().peekable();
    loop {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = it.peek() else { break };
        let mut key_end = start;
        while let Some((i, c)) = it.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key_end = i + c.len_utf8();
        }
        let key = &s[start..key_end];
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if it.next_if(|(_, c)| *c == '=').is_none() {
            return Err(bad(&format!("expected `=` after {key:?}")));
        }
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let end;
        if it.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match it.next() {
                    Some((i, '\'')) => {
                        end = i + 1;
                        break;
                    }
                    Some((_, '\\')) => value.extend(it.next().map(|(_, c)| c)),
                    Some((_, c)) => value.push(c),
                    None => return Err(bad("unterminated quoted connection parameter value")),
                }
            }
        } else {
            let mut last = None;
            while let Some((i, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                last = Some(i + c.len_utf8());
                if c == '\\' {
                    if let Some((j, c2)) = it.next() {
                        value.push(c2);
                        last = Some(j + c2.len_utf8());
                    }
                } else {
                    value.push(c);
                }
            }
            end = last.ok_or_else(|| bad(&format!("no value for {key:?}")))?;
        }
        match key {
            "sslmode" => mode = Some(value),
            "sslrootcert" => rootcert = Some(value),
            other => {
                refuse_client_certificates(other)?;
                kept.push(&s[start..end])
            }
        }
    }
    Ok((kept.join(" "), mode, rootcert))
}

/// The rustls connector for `policy`. With `disable` it is never used (the
/// driver does not ask for TLS) but the session type stays one type.
pub(crate) fn connector(policy: &TlsPolicy) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let chain = match policy.mode {
        SslMode::VerifyFull => {
            let config = builder
                .with_root_certificates(root_store(&policy.roots)?)
                .with_no_client_auth();
            return Ok(MakeRustlsConnect::new(config));
        }
        SslMode::VerifyCa => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(&policy.roots)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| Error::Config(format!("TLS roots: {e}")))?,
        ),
        SslMode::Disable | SslMode::Allow | SslMode::Prefer | SslMode::Require => None,
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Lenient { chain, provider }))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The driver's own mode for `mode`: whether TLS is tried, and required.
pub(crate) fn driver_mode(mode: SslMode) -> tokio_postgres::config::SslMode {
    use tokio_postgres::config::SslMode as Driver;
    match mode {
        SslMode::Disable => Driver::Disable,
        SslMode::Allow | SslMode::Prefer => Driver::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Driver::Require,
    }
}

fn root_store(roots: &RootCerts) -> Result<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        RootCerts::Bundled => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        RootCerts::File(path) => {
            let fail = |why: String| {
                Error::Config(format!(
                    "sslrootcert {}: {why}; name a PEM file of the CA that signed the \
                     server's certificate, readable by the sidecar",
                    path.display()
                ))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| fail(e.to_string()))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| fail(e.to_string()))?;
            if certs.is_empty() {
                return Err(fail("no certificate in it".into()));
            }
            for cert in certs {
                store
                    .add(cert)
                    .map_err(|e| fail(format!("not a CA certificate: {e}")))?;
            }
        }
    }
    Ok(store)
}

/// The verifier of `verify-ca` (`chain` set: the chain must lead to a
/// trusted root, the name is not compared with the host) and of
/// `require`/`prefer` (no chain: encrypted, the certificate not checked, as
/// libpq without a root file). Handshake signatures are always verified.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(s: &str) -> (String, TlsPolicy) {
        let out = split(s).expect(s);
        (out.rest, out.policy)
    }

    #[test]
    fn url_parameters_are_taken_out_and_the_rest_kept() {
        let (rest, p) = policy(
            "postgresql://u:p@h:5432/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5",
        );
        assert_eq!(
            rest,
            "postgresql://u:p@h:5432/db?application_name=x&connect_timeout=5"
        );
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.roots, RootCerts::File("/etc/ca.pem".into()));
        rest.parse::<tokio_postgres::Config>()
            .expect("driver parses the rest");
        let (rest, p) = policy("postgres://h/db?sslmode=require");
        assert_eq!(
            (rest.as_str(), p.mode),
            ("postgres://h/db", SslMode::Require)
        );
        let (rest, p) = policy("postgresql://h/db");
        assert_eq!(
            (rest.as_str(), p.mode),
            ("postgresql://h/db", SslMode::Prefer)
        );
    }

    #[test]
    fn key_value_parameters_follow_the_drivers_grammar() {
        let (rest, p) = policy(
            "host=h password='a b\\'c' sslmode = 'verify-ca' sslrootcert=/x\\ y.pem dbname=d",
        );
        assert_eq!(rest, "host=h password='a b\\'c' dbname=d");
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert_eq!(p.roots, RootCerts::File("/x y.pem".into()));
        let cfg: tokio_postgres::Config = rest.parse().expect("driver parses the rest");
        assert_eq!(cfg.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(cfg.get_dbname(), Some("d"));
        assert!(split("host=h sslmode").is_err());
        assert!(split("host=h sslmode='x").is_err());
    }

    #[test]
    fn sslrootcert_system_means_verify_full_and_refuses_weaker_modes() {
        let (_, p) = policy("postgresql://h/db?sslrootcert=system");
        assert_eq!((p.mode, p.roots), (SslMode::VerifyFull, RootCerts::Bundled));
        assert!(split("host=h sslrootcert=system sslmode=require").is_err());
        assert!(split("postgresql://h/db?sslmode=verify-ca&sslrootcert=system").is_err());
    }

    #[test]
    fn unknown_modes_and_missing_roots_are_configuration_errors() {
        let e = split("postgresql://h/db?sslcert=/c.pem")
            .err()
            .expect("refused");
        assert!(e.to_string().contains("not supported"), "{e}");
        assert!(split("host=h sslkey=/k.pem").is_err());
        let e = split("postgresql://h/db?sslmode=verify_full")
            .err()
            .expect("refused");
        assert!(e.to_string().contains("verify-full"), "{e}");
        let p = TlsPolicy {
            mode: SslMode::VerifyFull,
            roots: RootCerts::File("/nonexistent/ca.pem".into()),
        };
        let e = connector(&p).err().expect("missing file refused");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        assert!(
            connector(&TlsPolicy {
                mode: SslMode::VerifyFull,
                roots: RootCerts::Bundled
            })
            .is_ok()
        );
    }
}
