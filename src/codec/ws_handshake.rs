//! The server side of the WebSocket opening handshake (RFC 6455 §4.2), done in our own
//! HTTP code: an upgrade request, already decoded by [`crate::codec::http`], is checked
//! and answered with the `101 Switching Protocols` bytes, or refused with a typed error
//! that becomes a JSON error response.
//!
//! Framing after the handshake belongs to `conn::ws` (tungstenite's `WebSocketContext`);
//! routing (which path is which feed, tokens) belongs to the API layer.

use crate::codec::http::{encode, Method, Request, Response};

/// Why an upgrade request was refused. Each maps to one HTTP status and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not `GET` (RFC 6455 §4.1: the handshake is a GET): 405.
    Method,
    /// HTTP/1.0: the handshake needs HTTP/1.1 or later: 400.
    HttpVersion,
    /// No `Upgrade: websocket` with `Connection: upgrade`: a plain HTTP request on a
    /// WebSocket-only path: 426.
    NotUpgrade,
    /// `Sec-WebSocket-Version` missing or not 13: 426 with the version we speak.
    Version(Option<String>),
    /// `Sec-WebSocket-Key` missing: 400.
    MissingKey,
    /// `Sec-WebSocket-Key` is not 16 bytes in base64: 400.
    BadKey,
}

impl HandshakeError {
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::Method => 405,
            HandshakeError::NotUpgrade | HandshakeError::Version(_) => 426,
            HandshakeError::HttpVersion | HandshakeError::MissingKey | HandshakeError::BadKey => {
                400
            }
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            HandshakeError::Method => "method_not_allowed",
            HandshakeError::HttpVersion => "bad_http_version",
            HandshakeError::NotUpgrade => "upgrade_required",
            HandshakeError::Version(_) => "unsupported_websocket_version",
            HandshakeError::MissingKey => "missing_websocket_key",
            HandshakeError::BadKey => "bad_websocket_key",
        }
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Method => write!(f, "a WebSocket handshake must be a GET request"),
            HandshakeError::HttpVersion => {
                write!(f, "a WebSocket handshake needs HTTP/1.1 or later")
            }
            HandshakeError::NotUpgrade => write!(
                f,
                "this is a WebSocket endpoint: send Upgrade: websocket and Connection: Upgrade"
            ),
            HandshakeError::Version(None) => {
                write!(f, "Sec-WebSocket-Version is missing; this server speaks 13")
            }
            HandshakeError::Version(Some(v)) => write!(
                f,
                "Sec-WebSocket-Version {v:?} is not supported; this server speaks 13"
            ),
            HandshakeError::MissingKey => write!(f, "Sec-WebSocket-Key is missing"),
            HandshakeError::BadKey => write!(
                f,
                "Sec-WebSocket-Key must be 16 random bytes in base64 (24 characters)"
            ),
        }
    }
}

impl std::error::Error for HandshakeError {}

impl From<HandshakeError> for Response {
    fn from(e: HandshakeError) -> Response {
        let resp = Response::error(e.status(), e.code(), &e.to_string());
        match e {
            HandshakeError::Method => resp.with_header("Allow", "GET"),
            // RFC 9110 §15.5.22: a 426 says which protocol to upgrade to.
            HandshakeError::NotUpgrade => resp.with_header("Upgrade", "websocket"),
            // RFC 6455 §4.4: the versions the server understands.
            HandshakeError::Version(_) => resp.with_header("Sec-WebSocket-Version", "13"),
            _ => resp,
        }
    }
}

/// Check an upgrade request. `Ok` carries the `Sec-WebSocket-Key` to answer.
pub fn check(req: &Request) -> Result<&str, HandshakeError> {
    if req.method != Method::Get {
        return Err(HandshakeError::Method);
    }
    if req.minor_version < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if !req.is_websocket_upgrade() {
        return Err(HandshakeError::NotUpgrade);
    }
    match req.header("sec-websocket-version") {
        Some("13") => {}
        other => return Err(HandshakeError::Version(other.map(str::to_owned))),
    }
    let key = req
        .header("sec-websocket-key")
        .ok_or(HandshakeError::MissingKey)?;
    if !is_base64_16(key) {
        return Err(HandshakeError::BadKey);
    }
    Ok(key)
}

/// Check an upgrade request and return the complete `101 Switching Protocols` response
/// bytes. After writing them the connection speaks WebSocket.
pub fn accept(req: &Request) -> Result<Vec<u8>, HandshakeError> {
    let key = check(req)?;
    let resp = Response {
        status: 101,
        headers: vec![
            ("Upgrade", "websocket".to_owned()),
            (
                "Sec-WebSocket-Accept",
                tungstenite::handshake::derive_accept_key(key.as_bytes()),
            ),
        ],
        body: Vec::new(),
    };
    let mut out = Vec::with_capacity(160);
    // `encode` writes `Connection: Upgrade` for a 101 and no Content-Length.
    encode(&resp, false, true, &mut out);
    Ok(out)
}

/// 16 bytes in padded base64 are exactly 24 characters: 22 of the alphabet and `==`.
/// Like common decoders, this does not insist that the unused low bits are zero.
fn is_base64_16(key: &str) -> bool {
    let b = key.as_bytes();
    let alphabet = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    b.len() == 24 && b[..22].iter().all(alphabet) && &b[22..] == b"=="
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::http::{decode, Limits};
    use bytes::BytesMut;

    const LIMITS: Limits = Limits {
        head_max: 16 * 1024,
        body_max: 1024,
    };
    /// RFC 6455 §1.3's example key and its accept value.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn parse(raw: &str) -> Request {
        let mut buf = BytesMut::from(raw.as_bytes());
        decode(&mut buf, &LIMITS)
            .expect("valid HTTP")
            .expect("complete")
    }

    fn upgrade(extra: &str) -> String {
        format!(
            "GET /ws/matrix?token=x HTTP/1.1\r\nHost: localhost:8765\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    #[test]
    fn accepts_the_rfc_example_with_the_rfc_accept_value() {
        let req = parse(&upgrade(&format!("Sec-WebSocket-Key: {KEY}\r\n")));
        let bytes = accept(&req).expect("accepted");
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nUpgrade: websocket\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: Upgrade\r\n"), "{text}");
        assert!(
            text.contains(&format!("\r\nSec-WebSocket-Accept: {ACCEPT}\r\n")),
            "{text}"
        );
        assert!(
            !text.to_ascii_lowercase().contains("content-length"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn browser_style_headers_are_accepted() {
        // Firefox sends `Connection: keep-alive, Upgrade`; header case varies.
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: localhost:8765\r\nconnection: keep-alive, Upgrade\r\n\
             upgrade: WebSocket\r\nsec-websocket-version: 13\r\n\
             sec-websocket-key: {KEY}\r\nOrigin: http://localhost:5173\r\n\r\n"
        );
        assert_eq!(check(&parse(&raw)), Ok(KEY));
    }

    #[test]
    fn refusals_table() {
        let good_key = format!("Sec-WebSocket-Key: {KEY}\r\n");
        let cases: Vec<(&str, String, HandshakeError, u16)> = vec![
            (
                "POST",
                format!(
                    "POST /ws/matrix HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Version: 13\r\n{good_key}\r\n"
                ),
                HandshakeError::Method,
                405,
            ),
            (
                "HTTP/1.0",
                format!(
                    "GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Version: 13\r\n{good_key}\r\n"
                ),
                HandshakeError::HttpVersion,
                400,
            ),
            (
                "plain GET",
                "GET /ws/matrix HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
                HandshakeError::NotUpgrade,
                426,
            ),
            (
                "Upgrade without Connection: upgrade",
                format!(
                    "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\
                     Sec-WebSocket-Version: 13\r\n{good_key}\r\n"
                ),
                HandshakeError::NotUpgrade,
                426,
            ),
            (
                "upgrade to another protocol",
                format!(
                    "GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Version: 13\r\n{good_key}\r\n"
                ),
                HandshakeError::NotUpgrade,
                426,
            ),
            (
                "no version",
                format!(
                    "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{good_key}\r\n"
                ),
                HandshakeError::Version(None),
                426,
            ),
            (
                "version 8",
                upgrade(&good_key).replace("Version: 13", "Version: 8"),
                HandshakeError::Version(Some("8".into())),
                426,
            ),
            ("no key", upgrade(""), HandshakeError::MissingKey, 400),
            (
                "short key",
                upgrade("Sec-WebSocket-Key: abc=\r\n"),
                HandshakeError::BadKey,
                400,
            ),
            (
                "key of 17 bytes",
                upgrade("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZTE=\r\n"),
                HandshakeError::BadKey,
                400,
            ),
            (
                "key with a bad character",
                upgrade("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j*Q==\r\n"),
                HandshakeError::BadKey,
                400,
            ),
        ];
        for (name, raw, want, status) in cases {
            let req = parse(&raw);
            let err = accept(&req).expect_err(name);
            assert_eq!(err, want, "{name}");
            let resp = Response::from(err);
            assert_eq!(resp.status, status, "{name}");
            let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
            assert_eq!(body["code"], want.code(), "{name}");
            assert!(
                body["error"].as_str().is_some_and(|s| !s.is_empty()),
                "{name}"
            );
        }
    }

    #[test]
    fn error_responses_carry_the_headers_rfcs_ask_for() {
        let header = |e: HandshakeError, name: &str| {
            Response::from(e)
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header(HandshakeError::Version(None), "Sec-WebSocket-Version").as_deref(),
            Some("13")
        );
        assert_eq!(
            header(HandshakeError::NotUpgrade, "Upgrade").as_deref(),
            Some("websocket")
        );
        assert_eq!(
            header(HandshakeError::Method, "Allow").as_deref(),
            Some("GET")
        );
    }

    #[test]
    fn key_shape() {
        assert!(is_base64_16(KEY));
        assert!(is_base64_16("AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(!is_base64_16("AAAAAAAAAAAAAAAAAAAAAAAA"));
        assert!(!is_base64_16(""));
        assert!(!is_base64_16("AAAAAAAAAAAAAAAAAAAAAA==="));
    }
}
