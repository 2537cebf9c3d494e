//! A registry that wants bearer tokens (the Docker registry token flow), and
//! the token server that issues them.
//!
//! The registry answers an unauthenticated request with 401 and
//! `WWW-Authenticate: Bearer realm=...,service=...,scope=...`; the client asks
//! the realm (this token server) for a token with its basic credentials and
//! retries with `Authorization: Bearer <token>`. Tokens are ES256 JWTs signed
//! by a key of the test process, whose self-signed certificate is the
//! registry's `rootcertbundle` and travels in each token's `x5c` header.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{CertificateParams, DnType, KeyPair, SigningKey as _};

use super::registry::{Registry, start_with_config};
use super::{random_id, scratch_dir};

/// The `service` the registry names in its challenge and accepts as `aud`.
pub const TOKEN_SERVICE: &str = "e2e-registry";
/// The `iss` of the tokens, trusted by the registry.
pub const TOKEN_ISSUER: &str = "e2e-issuer";
/// How long an issued token lasts, in seconds.
pub const TOKEN_LIFETIME: i64 = 300;

/// A registry that wants bearer tokens from the token server of the test process.
pub struct TokenRegistry {
    pub registry: Registry,
    pub username: String,
    pub password: String,
    /// "127.0.0.1:PORT" of the token server.
    pub token_server: String,
    issuer: Arc<TokenIssuer>,
}

impl TokenRegistry {
    /// How many tokens the token server has issued so far (over HTTP or by
    /// [`Self::issue_token`]).
    pub fn tokens_issued(&self) -> usize {
        self.issuer.issued.load(Ordering::SeqCst)
    }

    /// How many tokens issued so far grant `action` ("pull", "push") on the
    /// repository `repository` ("e2e/x").
    pub fn tokens_issued_for(&self, repository: &str, action: &str) -> usize {
        let log = self.issuer.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter()
            .filter(|access| {
                access
                    .iter()
                    .any(|a| a.kind == "repository" && a.name == repository && a.actions.iter().any(|x| x == action))
            })
            .count()
    }

    /// How many token requests the token server refused (wrong or no credentials).
    pub fn tokens_refused(&self) -> usize {
        self.issuer.refused.load(Ordering::SeqCst)
    }

    /// A token for `username` granting `actions` ("pull", "push") on the
    /// repository `repository` ("e2e/x"), as the token server would issue it.
    pub fn issue_token(&self, repository: &str, actions: &[&str]) -> String {
        let access = vec![Access {
            kind: "repository".into(),
            name: repository.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }];
        self.issuer.issue(&self.username, &access)
    }

    /// The realm URL the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.token_server)
    }
}

/// The token registry of this test process, started on first use.
pub fn token_registry() -> &'static TokenRegistry {
    static REGISTRY: OnceLock<TokenRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let (username, password) = ("e2e-token-user".to_owned(), format!("pw-{}", random_id()));
        let key = KeyPair::generate().expect("token signing key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("token signer params");
        params.distinguished_name.push(DnType::CommonName, "wasmrun e2e token signer");
        let cert = params.self_signed(&key).expect("token signer certificate");
        let dir = scratch_dir("token-signer");
        let bundle = dir.join("token-signer.pem");
        std::fs::write(&bundle, cert.pem()).expect("write token signer certificate");
        let issuer = Arc::new(TokenIssuer {
            key,
            x5c: STANDARD.encode(cert.der()),
            username: username.clone(),
            password: password.clone(),
            issued: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        });
        let token_server = serve_tokens(issuer.clone());
        let auth = format!(
            "auth:\n  token:\n    realm: http://{token_server}/token\n    service: {TOKEN_SERVICE}\n    \
             issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            bundle.display()
        );
        // A registry that wants a token answers /v2/ with 401 once it is up.
        let registry = start_with_config("token-registry", &auth, 401);
        TokenRegistry { registry, username, password, token_server, issuer }
    })
}

/// One entry of a token's `access` claim.
#[derive(Clone, Debug, PartialEq)]
struct Access {
    kind: String,
    name: String,
    actions: Vec<String>,
}

struct TokenIssuer {
    key: KeyPair,
    /// Base64 (standard, padded) DER of the signing certificate.
    x5c: String,
    username: String,
    password: String,
    issued: AtomicUsize,
    refused: AtomicUsize,
    /// The `access` claim of every token issued, in order.
    log: Mutex<Vec<Vec<Access>>>,
}

impl TokenIssuer {
    /// A signed JWT for `subject` granting `access`.
    fn issue(&self, subject: &str, access: &[Access]) -> String {
        let now = chrono::Utc::now().timestamp();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(access.to_vec());
        let access: Vec<serde_json::Value> =
            access.iter().map(|a| serde_json::json!({"type": a.kind, "name": a.name, "actions": a.actions})).collect();
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + TOKEN_LIFETIME,
            "nbf": now - 1,
            "iat": now,
            "jti": random_id(),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        let der = self.key.sign(signing_input.as_bytes()).expect("sign token");
        let raw = ecdsa_der_to_raw(&der).unwrap_or_else(|| panic!("unexpected ECDSA signature {}", hex::encode(&der)));
        self.issued.fetch_add(1, Ordering::SeqCst);
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// Whether an `Authorization` header value carries the right basic credentials.
    fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some((scheme, encoded)) = value.trim().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = STANDARD.decode(encoded.trim()) else {
            return false;
        };
        decoded == format!("{}:{}", self.username, self.password).as_bytes()
    }
}

/// An ASN.1 DER ECDSA signature (SEQUENCE of INTEGER r, INTEGER s) as the
/// raw 64-byte r||s that JWS ES256 wants.
fn ecdsa_der_to_raw(der: &[u8]) -> Option<[u8; 64]> {
    fn length(bytes: &[u8]) -> Option<(usize, &[u8])> {
        let (&first, rest) = bytes.split_first()?;
        if first < 0x80 {
            return Some((first as usize, rest));
        }
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 2 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        Some((len, &rest[n..]))
    }
    fn integer(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
        let (&tag, rest) = bytes.split_first()?;
        if tag != 0x02 {
            return None;
        }
        let (len, rest) = length(rest)?;
        if rest.len() < len {
            return None;
        }
        let (mut value, rest) = rest.split_at(len);
        while value.len() > 1 && value[0] == 0 {
            value = &value[1..];
        }
        (value.len() <= 32).then_some((value, rest))
    }
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (len, body) = length(rest)?;
    if body.len() != len {
        return None;
    }
    let (r, rest) = integer(body)?;
    let (s, rest) = integer(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let mut raw = [0u8; 64];
    raw[32 - r.len()..32].copy_from_slice(r);
    raw[64 - s.len()..].copy_from_slice(s);
    Some(raw)
}

/// Serves `GET /token` on 127.0.0.1 from a thread that lives as long as the
/// process; returns "127.0.0.1:PORT".
fn serve_tokens(issuer: Arc<TokenIssuer>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
    let addr = listener.local_addr().expect("token server address").to_string();
    std::thread::Builder::new()
        .name("e2e-token-server".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let issuer = issuer.clone();
                let _ = std::thread::Builder::new().name("e2e-token-request".into()).spawn(move || {
                    let _ = handle(&issuer, stream);
                });
            }
        })
        .expect("spawn token server thread");
    addr
}

/// Answers one request on `stream`, then closes it.
fn handle(issuer: &TokenIssuer, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, extra_headers, body) = if method != "GET" || path != "/token" {
        (404, "", serde_json::json!({"details": format!("no such endpoint: {method} {path}")}))
    } else if !issuer.authorized(headers.get("authorization").map(String::as_str)) {
        issuer.refused.fetch_add(1, Ordering::SeqCst);
        (401, "WWW-Authenticate: Basic realm=\"e2e-token\"\r\n", serde_json::json!({"details": "wrong credentials"}))
    } else {
        let params = parse_query(query);
        let service_ok = params.iter().all(|(k, v)| k != "service" || v == TOKEN_SERVICE);
        if !service_ok {
            (400, "", serde_json::json!({"details": "unknown service"}))
        } else {
            let access: Vec<Access> =
                params.iter().filter(|(k, _)| k == "scope").flat_map(|(_, v)| parse_scopes(v)).collect();
            let token = issuer.issue(&issuer.username, &access);
            let issued_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            (
                200,
                "",
                serde_json::json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": TOKEN_LIFETIME,
                    "issued_at": issued_at,
                }),
            )
        }
    };
    let body = serde_json::to_vec(&body).expect("serialize token response");
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    );
    let mut stream = stream;
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    stream.flush()
}

/// The `key=value` pairs of a query string, percent-decoded, in order.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The resource scopes of one `scope` parameter: space-separated
/// `type:name:action[,action...]` (the name itself may hold colons).
fn parse_scopes(scope: &str) -> Vec<Access> {
    scope
        .split_whitespace()
        .filter_map(|item| {
            let (kind, rest) = item.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let actions: Vec<String> = actions.split(',').filter(|a| !a.is_empty()).map(str::to_owned).collect();
            (!kind.is_empty() && !name.is_empty()).then(|| Access { kind: kind.into(), name: name.into(), actions })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_signatures_become_raw_r_s() {
        // r with a leading zero (high bit set), s short (needs left padding).
        let mut r = vec![0u8];
        r.extend([0x80u8; 32]);
        let s = vec![0x01u8; 31];
        let mut der = vec![0x30, (2 + r.len() + 2 + s.len()) as u8, 0x02, r.len() as u8];
        der.extend(&r);
        der.extend([0x02, s.len() as u8]);
        der.extend(&s);
        let raw = ecdsa_der_to_raw(&der).unwrap();
        assert_eq!(&raw[..32], &[0x80u8; 32]);
        assert_eq!(raw[32], 0);
        assert_eq!(&raw[33..], &[0x01u8; 31]);
    }

    #[test]
    fn scopes_and_queries_parse() {
        let params =
            parse_query("service=e2e-registry&scope=repository%3Ae2e%2Fx%3Apull%2Cpush&scope=repository:a/b:pull");
        assert_eq!(params[0], ("service".into(), "e2e-registry".into()));
        assert_eq!(
            parse_scopes(&params[1].1),
            vec![Access {
                kind: "repository".into(),
                name: "e2e/x".into(),
                actions: vec!["pull".into(), "push".into()]
            }]
        );
        assert_eq!(parse_scopes(&params[2].1)[0].name, "a/b");
    }
}
