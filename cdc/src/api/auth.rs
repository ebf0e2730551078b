//! Bearer-token authentication: two scopes, tokens compared in constant
//! time, everything refused without a token unless the operator explicitly
//! serves an unauthenticated API on a loopback address.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::config::ApiConfig;
use crate::error::{Error, Refusal, Result};

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Status, runs, lineage, models, gold reads, read-only queries.
    Read,
    /// Everything `Read` may, plus refresh and resync.
    Operate,
}

/// The configured tokens.
#[derive(Clone)]
pub(crate) struct Tokens {
    operate: Option<Vec<u8>>,
    read: Option<Vec<u8>>,
    /// No tokens, loopback only: every request has the operator scope.
    open_loopback: bool,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("operate", &self.operate.as_ref().map(|_| "***"))
            .field("read", &self.read.as_ref().map(|_| "***"))
            .field("open_loopback", &self.open_loopback)
            .finish()
    }
}

fn token(
    value: &Option<String>,
    file: &Option<std::path::PathBuf>,
    var: &str,
) -> Result<Option<Vec<u8>>> {
    let text = match (value, file) {
        (Some(_), Some(_)) => {
            return Err(Error::Config(format!(
                "{var} and {var}_FILE are both set: set one"
            )));
        }
        (Some(v), None) => v.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{var}_FILE {}: {e}", path.display())))?,
        (None, None) => return Ok(None),
    };
    // Files usually end with a newline.
    let text = text.trim();
    if text.len() < 16 {
        return Err(Error::Config(format!(
            "{var} is shorter than 16 characters: use a long random token (e.g. openssl rand -hex 32)"
        )));
    }
    Ok(Some(text.as_bytes().to_vec()))
}

impl Tokens {
    /// The tokens of `api`, checked against the address the API listens on.
    pub fn load(api: &ApiConfig, listen: &SocketAddr) -> Result<Tokens> {
        let operate = token(&api.token, &api.token_file, "MEDALLION_API_TOKEN")?;
        let read = token(
            &api.read_token,
            &api.read_token_file,
            "MEDALLION_API_READ_TOKEN",
        )?;
        if operate.is_some() && operate == read {
            return Err(Error::Config(
                "MEDALLION_API_TOKEN and MEDALLION_API_READ_TOKEN are the same: use two tokens"
                    .into(),
            ));
        }
        if api.insecure_loopback && !listen.ip().is_loopback() {
            return Err(Error::Config(format!(
                "MEDALLION_API_INSECURE_LOOPBACK is set but the API listens on {listen}, which is \
                 not a loopback address: set MEDALLION_API_TOKEN instead"
            )));
        }
        if operate.is_none() && read.is_none() && !api.insecure_loopback {
            tracing::warn!(
                "the HTTP API has no token: every /v1 and /mcp request is refused until \
                 MEDALLION_API_TOKEN (or MEDALLION_API_READ_TOKEN) is set"
            );
        }
        Ok(Tokens {
            operate,
            read,
            open_loopback: api.insecure_loopback && !api.has_operator_token(),
        })
    }

    /// The scope a request's headers grant, or why not.
    pub fn scope(&self, headers: &HeaderMap) -> Result<Scope> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(presented) = presented else {
            if self.open_loopback {
                return Ok(Scope::Operate);
            }
            return Err(Error::refused(
                Refusal::Unauthorized,
                "missing bearer token: send Authorization: Bearer <MEDALLION_API_TOKEN or MEDALLION_API_READ_TOKEN>",
            ));
        };
        // Both compared, each in constant time, so the timing tells
        // nothing about either.
        let p = presented.as_bytes();
        let is = |t: &Option<Vec<u8>>| {
            t.as_ref()
                .is_some_and(|t| bool::from(t.as_slice().ct_eq(p)))
        };
        let (operate, read) = (is(&self.operate), is(&self.read));
        if operate {
            Ok(Scope::Operate)
        } else if read {
            Ok(Scope::Read)
        } else {
            Err(Error::refused(
                Refusal::Unauthorized,
                "invalid bearer token",
            ))
        }
    }
}

/// Middleware: the request's [`Scope`] goes into its extensions (the MCP
/// tools read it there); a request without a valid token is answered 401.
pub(crate) async fn authenticate(
    State(tokens): State<std::sync::Arc<Tokens>>,
    mut request: Request,
    next: Next,
) -> Response {
    match tokens.scope(request.headers()) {
        Ok(scope) => {
            request.extensions_mut().insert(scope);
            next.run(request).await
        }
        Err(e) => super::http::error_response(&e),
    }
}

/// Refuse unless `granted` covers `needed`.
pub(crate) fn require(granted: Scope, needed: Scope) -> Result<()> {
    if granted >= needed {
        Ok(())
    } else {
        Err(Error::refused(
            Refusal::Forbidden,
            "this needs the operator token (MEDALLION_API_TOKEN); the read-only token may not refresh or resync",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    fn cfg(token: Option<&str>, read: Option<&str>, loopback: bool) -> ApiConfig {
        ApiConfig {
            token: token.map(str::to_string),
            read_token: read.map(str::to_string),
            insecure_loopback: loopback,
            ..ApiConfig::default()
        }
    }

    #[test]
    fn scopes_from_tokens() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let t = Tokens::load(
            &cfg(
                Some("operate-token-0123456789"),
                Some("read-token-0123456789"),
                false,
            ),
            &local,
        )
        .unwrap();
        assert_eq!(
            t.scope(&headers("Bearer operate-token-0123456789"))
                .unwrap(),
            Scope::Operate
        );
        assert_eq!(
            t.scope(&headers("Bearer read-token-0123456789")).unwrap(),
            Scope::Read
        );
        for bad in [
            "Bearer nope",
            "Bearer operate-token-012345678",
            "Basic x",
            "Bearer ",
        ] {
            assert!(t.scope(&headers(bad)).is_err(), "{bad}");
        }
        assert!(t.scope(&HeaderMap::new()).is_err(), "no token, no access");
        assert!(require(Scope::Read, Scope::Operate).is_err());
        assert!(require(Scope::Operate, Scope::Read).is_ok());
    }

    #[test]
    fn tokens_from_files_lose_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "file-token-0123456789\n").unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let api = ApiConfig {
            token_file: Some(file.clone()),
            ..ApiConfig::default()
        };
        let t = Tokens::load(&api, &local).unwrap();
        assert_eq!(
            t.scope(&headers("Bearer file-token-0123456789")).unwrap(),
            Scope::Operate
        );
        let both = ApiConfig {
            token: Some("file-token-0123456789".into()),
            token_file: Some(file),
            ..ApiConfig::default()
        };
        assert!(
            Tokens::load(&both, &local).is_err(),
            "a value and a file: which one?"
        );
        let missing = ApiConfig {
            read_token_file: Some(dir.path().join("nope")),
            ..ApiConfig::default()
        };
        let e = Tokens::load(&missing, &local).unwrap_err().to_string();
        assert!(e.contains("MEDALLION_API_READ_TOKEN_FILE"), "{e}");
    }

    #[test]
    fn unauthenticated_only_on_loopback_and_only_when_asked() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let none = Tokens::load(&cfg(None, None, false), &any).unwrap();
        assert!(none.scope(&HeaderMap::new()).is_err());
        let open = Tokens::load(&cfg(None, None, true), &local).unwrap();
        assert_eq!(open.scope(&HeaderMap::new()).unwrap(), Scope::Operate);
        let e = Tokens::load(&cfg(None, None, true), &any)
            .unwrap_err()
            .to_string();
        assert!(e.contains("loopback"), "{e}");
        let e = Tokens::load(&cfg(Some("short"), None, false), &local)
            .unwrap_err()
            .to_string();
        assert!(e.contains("16 characters"), "{e}");
        let same = "same-token-0123456789";
        assert!(Tokens::load(&cfg(Some(same), Some(same), false), &local).is_err());
        assert!(
            !format!(
                "{:?}",
                Tokens::load(&cfg(Some(same), None, false), &local).unwrap()
            )
            .contains(same)
        );
    }
}
