//! HTTP/1.1 wire format: decodes one request at a time from a connection's read buffer and
//! encodes responses into its write buffer.
//!
//! Owns framing only: the head (via `httparse`), `Content-Length` bodies, keep-alive, and
//! the caps a peer controls (head size, body size, header count). Chunked request bodies
//! are refused with 411. Routing and JSON shapes belong to `api`; sockets to `conn`.

use bytes::{Bytes, BytesMut};
use serde::Serialize;

/// Header slots given to `httparse`; a request with more header fields gets 431.
const MAX_HEADERS: usize = 64;

/// Request method. Methods are case-sensitive (RFC 9110 §9.1), so `get` is `Other("get")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Other(String),
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_owned()),
        }
    }
}

/// One decoded request with its whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// Raw request-target, e.g. `/bridge/room/The%20Threshold/events?since=x`.
    pub target: String,
    /// 0 = HTTP/1.0, 1 = HTTP/1.1.
    pub minor_version: u8,
    /// Names lower-cased; values UTF-8 (lossy) and trimmed; in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// HTTP/1.1: true unless `Connection: close`; HTTP/1.0: only with `Connection: keep-alive`.
    pub keep_alive: bool,
}

impl Request {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name_lowercase: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(name, _)| name == name_lowercase)
            .map(|(_, value)| value.as_str())
    }

    /// The request-target before `?`, still percent-encoded.
    pub fn path(&self) -> &str {
        match self.target.split_once('?') {
            Some((path, _)) => path,
            None => &self.target,
        }
    }

    /// The request-target after the first `?`, still percent-encoded.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// The value of the first query parameter whose decoded name is `key`, percent-decoded
    /// with `+` as space. `?flag` yields `Some("")`. A value that does not decode (bad escape,
    /// invalid UTF-8) yields `None`.
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query()?
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(name, _)| percent_decode(name, true).as_deref() == Some(key))
            .and_then(|(_, value)| percent_decode(value, true))
    }

    /// `Upgrade: websocket` plus a `Connection` header carrying the `upgrade` token
    /// (both case-insensitive, either header may be repeated or be a list).
    pub fn is_websocket_upgrade(&self) -> bool {
        self.has_token("upgrade", "websocket") && self.has_token("connection", "upgrade")
    }

    /// Whether any `name` header lists `token` (comma-separated, case-insensitive).
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .any(|(_, value)| list_has_token(value, token))
    }
}

fn list_has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Caps on what a peer may send in one request (from `config::Http`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus header fields plus the blank line, in bytes.
    pub head_max: usize,
    /// `Content-Length` ceiling, in bytes.
    pub body_max: usize,
}

/// A request that cannot be served; the connection answers it with
/// `Response::from(err)` and then closes, since framing can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    /// snake_case, stable: clients match on it.
    pub code: &'static str,
    /// A human sentence.
    pub message: String,
}

impl HttpError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(400, "bad_request", message)
    }

    fn head_too_large(message: impl Into<String>) -> HttpError {
        HttpError::new(431, "header_too_large", message)
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for HttpError {}

/// Decode one request from the front of `buf`, removing its bytes. `Ok(None)` = need more
/// bytes (and `buf` is untouched). Requests pipelined behind this one stay in `buf`.
pub fn decode(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Request>, HttpError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.head_max {
                return Err(head_too_large_error(limits));
            }
            return Ok(None);
        }
        Err(e) => return Err(parse_error(e)),
    };
    if head_len > limits.head_max {
        return Err(head_too_large_error(limits));
    }
    let body_len = body_len(parsed.headers, limits)?;
    // `body_len <= body_max` here, so only a pathological `head_max` could overflow.
    let total = head_len
        .checked_add(body_len)
        .ok_or_else(|| payload_too_large(limits))?;
    if buf.len() < total {
        return Ok(None);
    }

    // The head is complete and the body has arrived: only now copy anything out.
    let method = Method::from_token(parsed.method.unwrap_or_default());
    let target = origin_form(parsed.path.unwrap_or_default());
    let minor_version = parsed.version.unwrap_or(1);
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();
    let keep_alive = keep_alive(minor_version, &headers);

    let _head = buf.split_to(head_len);
    let body = buf.split_to(body_len).freeze();
    Ok(Some(Request {
        method,
        target,
        minor_version,
        headers,
        body,
        keep_alive,
    }))
}

/// The request-target in origin form. RFC 9112 §3.2.2: a server must accept the absolute
/// form (`GET http://host:4004/bridge/health HTTP/1.1`, what a client talking to a proxy
/// sends); its path and query are served as if they had come alone (`/` when empty).
fn origin_form(target: &str) -> String {
    let scheme_len = ["http://", "https://"]
        .iter()
        .find(|s| {
            target
                .get(..s.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(s))
        })
        .map(|s| s.len());
    let Some(scheme_len) = scheme_len else {
        return target.to_owned();
    };
    let rest = &target[scheme_len..];
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => rest[i..].to_owned(),
        Some(i) => format!("/{}", &rest[i..]),
        None => "/".to_owned(),
    }
}

/// Body length from the head: refuses `Transfer-Encoding`, validates `Content-Length`
/// (repeated or listed values must agree) and enforces `body_max` before the body arrives.
fn body_len(headers: &[httparse::Header<'_>], limits: &Limits) -> Result<usize, HttpError> {
    let mut body_len: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::new(
                411,
                "length_required",
                "chunked request bodies are not supported; send Content-Length",
            ));
        }
        if !h.name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        // RFC 9112 §6.3: a list of identical values is acceptable, anything else is not.
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::bad_request("Content-Length must be a decimal number"))?;
        for item in value.split(',') {
            let n = parse_content_length(item.trim(), limits)?;
            match body_len {
                Some(seen) if seen != n => {
                    return Err(HttpError::bad_request(
                        "conflicting Content-Length values in one request",
                    ))
                }
                _ => body_len = Some(n),
            }
        }
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > limits.body_max as u64 {
        return Err(payload_too_large(limits));
    }
    // Fits: it is at most `body_max`, a usize.
    Ok(body_len as usize)
}

fn parse_content_length(item: &str, limits: &Limits) -> Result<u64, HttpError> {
    if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::bad_request(
            "Content-Length must be a decimal number",
        ));
    }
    // All digits, so the only way to fail is a number beyond u64: certainly too large.
    item.parse::<u64>().map_err(|_| payload_too_large(limits))
}

fn keep_alive(minor_version: u8, headers: &[(String, String)]) -> bool {
    let connection = headers.iter().filter(|(name, _)| name == "connection");
    let mut close = false;
    let mut keep = false;
    for (_, value) in connection {
        close |= list_has_token(value, "close");
        keep |= list_has_token(value, "keep-alive");
    }
    if minor_version == 0 {
        keep && !close
    } else {
        !close
    }
}

fn parse_error(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => {
            HttpError::head_too_large(format!("too many header fields (at most {MAX_HEADERS})"))
        }
        httparse::Error::Version => {
            HttpError::bad_request("malformed request line: expected HTTP/1.0 or HTTP/1.1")
        }
        httparse::Error::HeaderName | httparse::Error::HeaderValue => {
            HttpError::bad_request("malformed header field")
        }
        httparse::Error::Token | httparse::Error::NewLine | httparse::Error::Status => {
            HttpError::bad_request("malformed request line")
        }
    }
}

fn head_too_large_error(limits: &Limits) -> HttpError {
    HttpError::head_too_large(format!(
        "request line and headers exceed {} bytes",
        limits.head_max
    ))
}

fn payload_too_large(limits: &Limits) -> HttpError {
    HttpError::new(
        413,
        "payload_too_large",
        format!("request body exceeds {} bytes", limits.body_max),
    )
}

/// A response as a handler builds it. `Content-Length` and `Connection` are the server's:
/// `encode` writes them and ignores any copies here.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
}

impl Response {
    /// A response with a `Content-Type` header and a body.
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body,
        }
    }

    /// `value` as `application/json`. A value serde cannot serialize (a map with
    /// non-string keys) is our bug, not the client's: it becomes a 500 error body.
    pub fn json(status: u16, value: &impl Serialize) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(status, "application/json", body),
            Err(e) => Response::unencodable(e),
        }
    }

    /// [`Response::json`] written into a buffer of `size` bytes to start with: for a hot
    /// answer whose size the handler can tell, it saves the buffer's regrowths.
    pub fn json_sized(status: u16, value: &impl Serialize, size: usize) -> Response {
        let mut body = Vec::with_capacity(size);
        match serde_json::to_writer(&mut body, value) {
            Ok(()) => Response::new(status, "application/json", body),
            Err(e) => Response::unencodable(e),
        }
    }

    fn unencodable(e: serde_json::Error) -> Response {
        log::error!("response body failed to serialize: {e}");
        Response::error(500, "internal_error", "the response could not be encoded")
    }

    /// `{"error": message, "code": code}` with the given status.
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        let body = ErrorBody {
            error: message,
            code,
        };
        // Two strings always serialize; the fallback only keeps this total.
        let body = serde_json::to_vec(&body).unwrap_or_default();
        Response::new(status, "application/json", body)
    }

    /// Adds a header (e.g. `Retry-After`). Values with CR or LF are dropped by `encode`.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

impl From<HttpError> for Response {
    fn from(e: HttpError) -> Response {
        Response::error(e.status, e.code, &e.message)
    }
}

/// Write the response into `out`. The server, not the handler, owns `Content-Length` and
/// `Connection`: they are written here and handler-supplied copies are ignored.
/// `head_only` (HEAD): headers, with the `Content-Length` the body would have, and no body.
/// `keep_alive=false` → `Connection: close`.
///
/// Status rules from RFC 9110 §8.6 and §15: a 1xx or 204 response has neither
/// `Content-Length` nor body; a 304 has no body; a 101 says `Connection: Upgrade` (the
/// WebSocket handshake needs it) whatever `keep_alive` is.
pub fn encode(resp: &Response, head_only: bool, keep_alive: bool, out: &mut Vec<u8>) {
    let status = resp.status;
    let informational = (100..200).contains(&status);
    let no_length = informational || status == 204;
    let no_body = head_only || no_length || status == 304;

    out.reserve(64 + resp.headers.len() * 32 + if no_body { 0 } else { resp.body.len() });
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &resp.headers {
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("connection") {
            continue;
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n') || name.is_empty() {
            // Would split the head (response splitting); a handler bug, never sent.
            log::warn!("dropping response header {name:?}: value contains CR or LF");
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !no_length {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, resp.body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if status == 101 {
        b"Connection: Upgrade\r\n\r\n".as_slice()
    } else if keep_alive {
        b"Connection: keep-alive\r\n\r\n".as_slice()
    } else {
        b"Connection: close\r\n\r\n".as_slice()
    });
    if !no_body {
        out.extend_from_slice(&resp.body);
    }
}

/// The head of a streamed response (`Transfer-Encoding: chunked`, no length): the body
/// follows as [`push_chunk`]s and ends with [`LAST_CHUNK`].
pub fn encode_stream_head(resp: &Response, keep_alive: bool, out: &mut Vec<u8>) {
    let mut head = Vec::with_capacity(256);
    encode(resp, true, keep_alive, &mut head);
    // The head without its length line: the chunks say how long the body is.
    let text = String::from_utf8_lossy(&head);
    for line in text.split_inclusive("\r\n") {
        if line.eq_ignore_ascii_case("\r\n") {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        } else if !line.to_ascii_lowercase().starts_with("content-length:") {
            out.extend_from_slice(line.as_bytes());
        }
    }
}

/// One chunk of a chunked body (nothing for empty data: an empty chunk ends the body).
pub fn push_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

use super::json_text::push_decimal;

/// Appends `s` as a JSON string, byte for byte what `serde_json` writes (for answers
/// written by hand on a hot path): a string with nothing to escape is copied as is.
/// (For the short names of a say's recipients this beats [`super::json_text::push_str`],
/// which is for long text.)
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        super::json_text::push_str(out, s);
    }
}

/// The reason phrase for a status code; `""` for codes we never send (an empty
/// reason-phrase is valid HTTP/1.1).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Percent-decode `s`; with `plus_as_space` (query strings) `+` becomes a space.
/// An invalid escape (`%G1`, a truncated `%2`) or a result that is not UTF-8 → `None`.
pub fn percent_decode(s: &str, plus_as_space: bool) -> Option<String> {
    if !s.bytes().any(|b| b == b'%' || (plus_as_space && b == b'+')) {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_value(*bytes.get(i + 1)?)?;
                let lo = hex_value(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        head_max: 16 * 1024,
        body_max: 1024 * 1024,
    };

    fn req(
        method: Method,
        target: &str,
        minor_version: u8,
        headers: &[(&str, &str)],
        body: &[u8],
        keep_alive: bool,
    ) -> Request {
        Request {
            method,
            target: target.to_owned(),
            minor_version,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Bytes::copy_from_slice(body),
            keep_alive,
        }
    }

    /// Decodes `input` handed over in one read.
    #[test]
    fn absolute_form_targets_are_served_like_origin_form() {
        for (sent, path, query) in [
            (
                "http://127.0.0.1:4004/bridge/health",
                "/bridge/health",
                None,
            ),
            (
                "HTTP://localhost/bridge/room/The%20Forge/events?since=x",
                "/bridge/room/The%20Forge/events",
                Some("since=x"),
            ),
            ("https://example.test", "/", None),
            ("http://host:1?a=b", "/", Some("a=b")),
            ("/already/origin?x=1", "/already/origin", Some("x=1")),
            ("httpx://not-a-scheme/", "httpx://not-a-scheme/", None),
        ] {
            let raw = format!("GET {sent} HTTP/1.1\r\nHost: h\r\n\r\n");
            let r = decode_all(raw.as_bytes(), &LIMITS).unwrap().unwrap();
            assert_eq!((r.path(), r.query()), (path, query), "{sent}");
        }
    }

    fn decode_all(input: &[u8], limits: &Limits) -> Result<Option<Request>, HttpError> {
        let mut buf = BytesMut::from(input);
        decode(&mut buf, limits)
    }

    fn valid_cases() -> Vec<(&'static str, Vec<u8>, Request)> {
        vec![
            (
                "GET with query",
                b"GET /bridge/room/The%20Threshold/events?since=2024-01-01T00%3A00%3A00Z HTTP/1.1\r\nHost: localhost:4004\r\n\r\n".to_vec(),
                req(
                    Method::Get,
                    "/bridge/room/The%20Threshold/events?since=2024-01-01T00%3A00%3A00Z",
                    1,
                    &[("host", "localhost:4004")],
                    b"",
                    true,
                ),
            ),
            (
                "POST with JSON body",
                b"POST /bridge/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"user_id\":\"alice\",\"message\":\"hi there\"}".to_vec(),
                req(
                    Method::Post,
                    "/bridge/chat",
                    1,
                    &[
                        ("host", "x"),
                        ("content-type", "application/json"),
                        ("content-length", "40"),
                    ],
                    b"{\"user_id\":\"alice\",\"message\":\"hi there\"}",
                    true,
                ),
            ),
            (
                "HTTP/1.0 without keep-alive",
                b"GET /bridge/health HTTP/1.0\r\n\r\n".to_vec(),
                req(Method::Get, "/bridge/health", 0, &[], b"", false),
            ),
            (
                "HTTP/1.0 with keep-alive",
                b"GET /bridge/health HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n".to_vec(),
                req(
                    Method::Get,
                    "/bridge/health",
                    0,
                    &[("connection", "Keep-Alive")],
                    b"",
                    true,
                ),
            ),
            (
                "HTTP/1.1 with Connection: close",
                b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
                req(Method::Get, "/", 1, &[("connection", "close")], b"", false),
            ),
            (
                "HEAD",
                b"HEAD /bridge/health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                req(Method::Head, "/bridge/health", 1, &[("host", "x")], b"", true),
            ),
            (
                "header names in any case, values trimmed",
                b"PUT /x HTTP/1.1\r\nCONTENT-LENGTH:   3  \r\nX-Mixed-Case: Value With Case\r\ncOnNeCtIoN: Upgrade, CLOSE\r\n\r\nabc".to_vec(),
                req(
                    Method::Put,
                    "/x",
                    1,
                    &[
                        ("content-length", "3"),
                        ("x-mixed-case", "Value With Case"),
                        ("connection", "Upgrade, CLOSE"),
                    ],
                    b"abc",
                    false,
                ),
            ),
            (
                "unknown method, percent-encoded query",
                b"PROPFIND /s?name=The+Threshold&room=caf%C3%A9 HTTP/1.1\r\n\r\n".to_vec(),
                req(
                    Method::Other("PROPFIND".into()),
                    "/s?name=The+Threshold&room=caf%C3%A9",
                    1,
                    &[],
                    b"",
                    true,
                ),
            ),
        ]
    }

    #[test]
    fn valid_requests_fed_one_byte_at_a_time() {
        for (name, input, want) in valid_cases() {
            let mut buf = BytesMut::new();
            for (i, &b) in input.iter().enumerate() {
                buf.extend_from_slice(&[b]);
                let got = decode(&mut buf, &LIMITS).unwrap_or_else(|e| panic!("{name}: {e}"));
                if i + 1 < input.len() {
                    assert_eq!(got, None, "{name}: decoded early after {} bytes", i + 1);
                    assert_eq!(buf.len(), i + 1, "{name}: partial input was consumed");
                } else {
                    assert_eq!(got.as_ref(), Some(&want), "{name}");
                    assert!(buf.is_empty(), "{name}: bytes left over");
                }
            }
        }
    }

    #[test]
    fn valid_requests_split_at_every_boundary() {
        for (name, input, want) in valid_cases() {
            for split in 1..input.len() {
                let mut buf = BytesMut::from(&input[..split]);
                assert_eq!(
                    decode(&mut buf, &LIMITS),
                    Ok(None),
                    "{name}: split at {split}"
                );
                buf.extend_from_slice(&input[split..]);
                assert_eq!(
                    decode(&mut buf, &LIMITS),
                    Ok(Some(want.clone())),
                    "{name}: split at {split}"
                );
                assert!(buf.is_empty(), "{name}: split at {split}: bytes left over");
            }
        }
    }

    #[test]
    fn request_accessors() {
        let mut buf = BytesMut::from(
            &b"GET /bridge/room/The%20Threshold/events?since=2024-01-01T00%3A00%3A00Z&who=a+b&flag&bad=%ZZ&who=second HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nX-A: 1\r\nX-A: 2\r\n\r\n"[..],
        );
        let r = decode(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!(r.path(), "/bridge/room/The%20Threshold/events");
        assert_eq!(
            r.query(),
            Some("since=2024-01-01T00%3A00%3A00Z&who=a+b&flag&bad=%ZZ&who=second")
        );
        assert_eq!(
            r.query_param("since").as_deref(),
            Some("2024-01-01T00:00:00Z")
        );
        assert_eq!(r.query_param("who").as_deref(), Some("a b"));
        assert_eq!(r.query_param("flag").as_deref(), Some(""));
        assert_eq!(r.query_param("bad"), None);
        assert_eq!(r.query_param("missing"), None);
        assert_eq!(r.header("x-a"), Some("1"));
        assert_eq!(r.header("X-A"), None, "lookup takes a lower-case name");
        assert!(r.is_websocket_upgrade());

        let plain = decode_all(b"GET /plain HTTP/1.1\r\n\r\n", &LIMITS)
            .unwrap()
            .unwrap();
        assert_eq!(plain.path(), "/plain");
        assert_eq!(plain.query(), None);
        assert_eq!(plain.query_param("x"), None);
        assert!(!plain.is_websocket_upgrade());
    }

    #[test]
    fn websocket_upgrade_needs_both_headers() {
        let cases: &[(&[u8], bool)] = &[
            (
                b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                true,
            ),
            (
                b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nConnection: upgrade\r\n\r\n",
                true,
            ),
            (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", false),
            (b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\n\r\n", false),
            (
                b"GET /ws HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
                false,
            ),
        ];
        for (input, want) in cases {
            let r = decode_all(input, &LIMITS).unwrap().unwrap();
            assert_eq!(
                r.is_websocket_upgrade(),
                *want,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn pipelined_requests_decode_in_order() {
        let mut buf = BytesMut::from(
            &b"POST /bridge/say HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /bridge/health HTTP/1.1\r\n\r\nGET /par"[..],
        );
        let first = decode(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!(first.method, Method::Post);
        assert_eq!(first.target, "/bridge/say");
        assert_eq!(&first.body[..], b"hello");
        let second = decode(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!(second.method, Method::Get);
        assert_eq!(second.target, "/bridge/health");
        assert!(second.body.is_empty());
        assert_eq!(&buf[..], b"GET /par", "the third, partial request stays");
        assert_eq!(decode(&mut buf, &LIMITS), Ok(None));
        buf.extend_from_slice(b"tial HTTP/1.1\r\n\r\n");
        let third = decode(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!(third.target, "/partial");
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_body_leaves_buffer_untouched() {
        let input = b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345";
        let mut buf = BytesMut::from(&input[..]);
        assert_eq!(decode(&mut buf, &LIMITS), Ok(None));
        assert_eq!(&buf[..], &input[..]);
    }

    fn expect_err(input: &[u8], limits: &Limits, status: u16, code: &str) {
        let err = decode_all(input, limits).expect_err(&format!(
            "expected {status} for {:?}",
            String::from_utf8_lossy(input)
        ));
        assert_eq!(
            (err.status, err.code),
            (status, code),
            "{:?}",
            String::from_utf8_lossy(input)
        );
        assert!(!err.message.is_empty());
    }

    #[test]
    fn garbage_is_bad_request() {
        let cases: &[&[u8]] = &[
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
            b"hello world\r\n\r\n",                          // no version
            b"GET / HTTP/2.0\r\n\r\n",                       // not HTTP/1.x
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",      // space in a name
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",          // NUL in a value
            b"GET\x01/ HTTP/1.1\r\n\r\n",                    // control byte in the method
        ];
        for input in cases {
            expect_err(input, &LIMITS, 400, "bad_request");
        }
    }

    #[test]
    fn head_too_large_partial_and_complete() {
        let limits = Limits {
            head_max: 64,
            body_max: 1024,
        };
        // Partial: the head never ends but already exceeds the cap.
        let mut partial = b"GET /".to_vec();
        partial.extend(vec![b'a'; 64]);
        expect_err(&partial, &limits, 431, "header_too_large");
        // ...while the same bytes under the cap are simply incomplete.
        assert_eq!(decode_all(&partial[..64], &limits), Ok(None));

        // Complete in one read, but longer than the cap.
        let mut complete = b"GET /".to_vec();
        complete.extend(vec![b'a'; 64]);
        complete.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        expect_err(&complete, &limits, 431, "header_too_large");

        // Exactly at the cap is fine.
        let mut exact = b"GET /".to_vec();
        exact.extend(vec![b'a'; 64 - 5 - 13]);
        exact.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(exact.len(), 64);
        assert!(decode_all(&exact, &limits).unwrap().is_some());
    }

    fn with_headers(n: usize) -> Vec<u8> {
        let mut input = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            input.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        input
    }

    #[test]
    fn too_many_headers() {
        let r = decode_all(&with_headers(64), &LIMITS).unwrap().unwrap();
        assert_eq!(r.headers.len(), 64);
        expect_err(&with_headers(65), &LIMITS, 431, "header_too_large");
    }

    #[test]
    fn transfer_encoding_is_length_required() {
        expect_err(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            &LIMITS,
            411,
            "length_required",
        );
        expect_err(
            b"POST /x HTTP/1.1\r\nContent-Length: 5\r\ntransfer-encoding: gzip\r\n\r\nhello",
            &LIMITS,
            411,
            "length_required",
        );
    }

    #[test]
    fn bad_or_conflicting_content_length() {
        for value in ["abc", "-1", "+5", "", "5 5", "0x10", "5;", "1e3"] {
            let input = format!("POST /x HTTP/1.1\r\nContent-Length: {value}\r\n\r\nhello");
            expect_err(input.as_bytes(), &LIMITS, 400, "bad_request");
        }
        expect_err(
            b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            &LIMITS,
            400,
            "bad_request",
        );
        expect_err(
            b"POST /x HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello!",
            &LIMITS,
            400,
            "bad_request",
        );
        // Identical repeats are the same length (RFC 9112 §6.3) and are accepted.
        for input in [
            &b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"[..],
            &b"POST /x HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello"[..],
        ] {
            let r = decode_all(input, &LIMITS).unwrap().unwrap();
            assert_eq!(&r.body[..], b"hello");
        }
    }

    #[test]
    fn body_too_large_before_body_arrives() {
        let limits = Limits {
            head_max: 1024,
            body_max: 100,
        };
        // Only the head has been sent; the verdict must not wait for 101 body bytes.
        expect_err(
            b"POST /x HTTP/1.1\r\nContent-Length: 101\r\n\r\n",
            &limits,
            413,
            "payload_too_large",
        );
        expect_err(
            b"POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
            &limits,
            413,
            "payload_too_large",
        );
        // At the cap: waits for the body, then decodes it.
        let mut buf = BytesMut::from(&b"POST /x HTTP/1.1\r\nContent-Length: 100\r\n\r\n"[..]);
        assert_eq!(decode(&mut buf, &limits), Ok(None));
        buf.extend_from_slice(&[b'z'; 100]);
        assert_eq!(decode(&mut buf, &limits).unwrap().unwrap().body.len(), 100);
    }

    /// Deterministic junk and mutated requests: decode must return, never panic, and only
    /// ever consume a prefix of the buffer.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let limits = Limits {
            head_max: 256,
            body_max: 64,
        };
        let seeds: Vec<Vec<u8>> = valid_cases().into_iter().map(|(_, i, _)| i).collect();
        for round in 0..5_000 {
            let mut input = if round % 2 == 0 {
                seeds[(next() as usize) % seeds.len()].clone()
            } else {
                (0..(next() % 300)).map(|_| next() as u8).collect()
            };
            for _ in 0..(next() % 4) {
                if !input.is_empty() {
                    let at = (next() as usize) % input.len();
                    input[at] = next() as u8;
                }
            }
            let mut buf = BytesMut::from(&input[..]);
            let mut guard = 0;
            while let Ok(Some(_)) = decode(&mut buf, &limits) {
                guard += 1;
                assert!(guard <= input.len(), "decode made no progress");
            }
            assert!(buf.len() <= input.len());
        }
    }

    #[test]
    fn encode_small_json_response_exactly() {
        let resp = Response::json(200, &serde_json::json!({"status": "ok"}));
        let mut out = Vec::new();
        encode(&resp, false, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\nConnection: keep-alive\r\n\r\n{\"status\":\"ok\"}"
        );
    }

    #[test]
    fn encode_head_keeps_length_but_no_body() {
        let resp = Response::new(200, "text/plain", b"hello".to_vec());
        let mut out = Vec::new();
        encode(&resp, true, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn encode_close_and_appends_to_existing_output() {
        let resp = Response::new(404, "text/plain", b"no".to_vec());
        let mut out = b"earlier".to_vec();
        encode(&resp, false, false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "earlierHTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
        );
    }

    #[test]
    fn encode_ignores_handler_length_and_connection() {
        let resp = Response::new(429, "text/plain", b"slow down".to_vec())
            .with_header("Content-Length", "999")
            .with_header("connection", "keep-alive")
            .with_header("Retry-After", "12");
        let mut out = Vec::new();
        encode(&resp, false, false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nRetry-After: 12\r\nContent-Length: 9\r\nConnection: close\r\n\r\nslow down"
        );
    }

    #[test]
    fn encode_drops_header_values_that_would_split_the_head() {
        let resp = Response::new(200, "text/plain", Vec::new())
            .with_header("X-Evil", "a\r\nSet-Cookie: b")
            .with_header("X-Fine", "ok");
        let mut out = Vec::new();
        encode(&resp, false, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Fine: ok\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn encode_no_content_and_switching_protocols() {
        let mut out = Vec::new();
        let no_content = Response {
            status: 204,
            headers: Vec::new(),
            body: b"ignored".to_vec(),
        };
        encode(&no_content, false, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"
        );

        let mut out = Vec::new();
        let upgrade = Response {
            status: 101,
            headers: vec![
                ("Upgrade", "websocket".into()),
                ("Connection", "Upgrade".into()),
                (
                    "Sec-WebSocket-Accept",
                    "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                ),
            ],
            body: Vec::new(),
        };
        encode(&upgrade, false, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nConnection: Upgrade\r\n\r\n"
        );
    }

    #[test]
    fn error_response_shape() {
        let resp = Response::from(HttpError {
            status: 413,
            code: "payload_too_large",
            message: "request body exceeds 100 bytes".into(),
        });
        assert_eq!(resp.status, 413);
        assert_eq!(
            resp.headers,
            vec![("Content-Type", "application/json".to_string())]
        );
        assert_eq!(
            String::from_utf8(resp.body).unwrap(),
            r#"{"error":"request body exceeds 100 bytes","code":"payload_too_large"}"#
        );
        let quoted = Response::error(400, "bad_request", "field \"text\" is missing");
        let v: serde_json::Value = serde_json::from_slice(&quoted.body).unwrap();
        assert_eq!(v["error"], "field \"text\" is missing");
        assert_eq!(v["code"], "bad_request");
    }

    #[test]
    fn json_that_cannot_serialize_is_a_500() {
        let mut bad = std::collections::HashMap::new();
        bad.insert(vec![1u8], 1);
        let resp = Response::json(200, &bad);
        assert_eq!(resp.status, 500);
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["code"], "internal_error");
    }

    #[test]
    fn reason_phrases() {
        let table = [
            (101, "Switching Protocols"),
            (200, "OK"),
            (204, "No Content"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (408, "Request Timeout"),
            (409, "Conflict"),
            (411, "Length Required"),
            (413, "Content Too Large"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (503, "Service Unavailable"),
            (504, "Gateway Timeout"),
            (505, "HTTP Version Not Supported"),
        ];
        for (status, phrase) in table {
            assert_eq!(reason(status), phrase, "{status}");
        }
        assert_eq!(reason(299), "");
    }

    #[test]
    fn percent_decoding() {
        let cases: &[(&str, bool, Option<&str>)] = &[
            ("The%20Threshold", false, Some("The Threshold")),
            ("The%20Threshold", true, Some("The Threshold")),
            ("a+b", true, Some("a b")),
            ("a+b", false, Some("a+b")),
            ("caf%C3%A9", false, Some("café")),
            ("%2f%2F", false, Some("//")),
            ("plain", true, Some("plain")),
            ("", true, Some("")),
            ("%G1", false, None),
            ("%2", false, None),
            ("abc%", true, None),
            ("%FF", false, None),
            ("%C3", true, None),
        ];
        for (input, plus, want) in cases {
            assert_eq!(
                percent_decode(input, *plus).as_deref(),
                *want,
                "{input:?} plus_as_space={plus}"
            );
        }
    }

    #[test]
    fn push_json_str_writes_what_serde_json_writes() {
        for s in [
            "",
            "plain",
            "Ünïcödé ✓ 🎉",
            "quote \" and backslash \\",
            "line\nbreak\ttab\r\u{8}\u{c}",
            "\u{0}\u{1f}\u{7f}",
            "</script>",
        ] {
            let mut out = b"x".to_vec();
            push_json_str(&mut out, s);
            let want = format!("x{}", serde_json::to_string(s).unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), want, "{s:?}");
        }
    }
}
