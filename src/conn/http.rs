//! One HTTP/1.1 connection: buffers, keep-alive, pipelining, a parked request waiting for
//! a worker, and the deadlines (head read, keep-alive idle).
//!
//! Responses go out in request order: while a request is parked, the requests pipelined
//! behind it stay in the read buffer. Reading stops when the buffer holds a full request's
//! worth of bytes, and parsing stops while the write buffer is over its high-water mark,
//! so a client that floods or stops reading cannot grow our memory.

use super::{read_until_blocked, write_until_blocked, ConnId, Drive, Feed};
use crate::codec::http::{
    decode, encode, encode_stream_head, push_chunk, HttpError, Limits, Method, Request, Response,
    LAST_CHUNK,
};
use bytes::BytesMut;
use mio::net::TcpStream;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Stop parsing new requests while this many response bytes wait to be written.
const TX_HIGH_WATER: usize = 256 * 1024;

/// What the handler did with a request.
pub enum Handled {
    /// The response is ready now.
    Respond(Response),
    /// The answer comes later (the agent is working): the connection waits in order.
    /// `route` names the request for metrics; `headers` are added to the answer (CORS).
    Park {
        route: &'static str,
        headers: Vec<(&'static str, String)>,
    },
    /// The answer may stream (server-sent events): `head` goes out with
    /// `Transfer-Encoding: chunked` before the first [`HttpConn::stream_send`] chunk, and
    /// the body ends with [`HttpConn::stream_end`]; an answer that comes before any chunk
    /// (a refusal) is delivered whole instead, with `headers`. The connection waits in
    /// order meanwhile.
    Stream {
        route: &'static str,
        headers: Vec<(&'static str, String)>,
        head: Response,
    },
    /// A WebSocket handshake was accepted: write these `101` bytes, then hand the socket
    /// and whatever was read past the request head to a WebSocket connection.
    Upgrade { response: Vec<u8>, feed: Feed },
}

/// The application side of an HTTP connection.
pub trait HttpHandler {
    fn handle(&mut self, id: ConnId, req: Request) -> Handled;
    /// A request that could not be parsed (the connection is closed after the response).
    fn rejected(&mut self, err: &HttpError);
    /// False while shutting down: every response then carries `Connection: close`.
    fn keep_alive_allowed(&self) -> bool;
}

/// A deadline that has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request's head and body did not arrive in time: 408, then close.
    Header,
    /// Keep-alive connection idle too long: close quietly.
    Idle,
}

#[derive(Debug, Clone)]
struct Parked {
    keep_alive: bool,
    head_only: bool,
    route: &'static str,
    headers: Vec<(&'static str, String)>,
    since: Instant,
    /// The answer streams: its head is written and chunks follow.
    streaming: bool,
    /// The head of a streamed answer, written before its first chunk.
    stream_head: Option<Response>,
    /// When a chunk last went out (for the stream's `: ping`).
    last_chunk: Instant,
}

/// What [`HttpConn::deliver`] delivered: the parked request's route and its age.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    pub route: &'static str,
    pub waited: Duration,
}

pub struct HttpConn {
    pub sock: TcpStream,
    pub peer: SocketAddr,
    rx: BytesMut,
    tx: Vec<u8>,
    tx_pos: usize,
    /// A readable edge was seen and the socket has not reported `WouldBlock` since.
    readable: bool,
    eof: bool,
    parked: Option<Parked>,
    /// Close once the write buffer is flushed.
    closing: bool,
    /// A WebSocket upgrade was accepted: switch once the `101` is written.
    upgrade: Option<Feed>,
    /// When the first byte of a not yet complete request arrived.
    request_started: Option<Instant>,
    last_activity: Instant,
}

impl HttpConn {
    pub fn new(sock: TcpStream, peer: SocketAddr, now: Instant) -> HttpConn {
        HttpConn {
            sock,
            peer,
            rx: BytesMut::with_capacity(1024),
            tx: Vec::new(),
            tx_pos: 0,
            readable: true,
            eof: false,
            parked: None,
            closing: false,
            upgrade: None,
            request_started: None,
            last_activity: now,
        }
    }

    pub fn mark_readable(&mut self) {
        self.readable = true;
    }

    pub fn is_parked(&self) -> bool {
        self.parked.is_some()
    }

    /// The feed an accepted upgrade switches to.
    pub fn upgrade_to(&self) -> Option<Feed> {
        self.upgrade
    }

    /// The socket, the peer, and the bytes read past the upgrade request's head (a
    /// client's first frames may have come right behind it): what moves into the
    /// WebSocket connection.
    pub fn into_parts(self) -> (TcpStream, SocketAddr, BytesMut) {
        (self.sock, self.peer, self.rx)
    }

    /// Bytes held in buffers (for the memory figures).
    pub fn buffered(&self) -> usize {
        self.rx.capacity() + self.tx.capacity()
    }

    /// The answer to the parked request has come: queue it (the caller then drives).
    pub fn deliver(
        &mut self,
        resp: Response,
        keep_alive_allowed: bool,
        now: Instant,
    ) -> Option<Delivered> {
        let p = self.parked.take()?;
        let keep = p.keep_alive && keep_alive_allowed;
        let mut resp = resp;
        resp.headers.extend(p.headers);
        encode(&resp, p.head_only, keep, &mut self.tx);
        self.closing |= !keep;
        self.last_activity = now;
        Some(Delivered {
            route: p.route,
            waited: now.duration_since(p.since),
        })
    }

    /// Whether the parked request's answer is streaming (its head went out).
    pub fn is_streaming(&self) -> bool {
        self.parked.as_ref().is_some_and(|p| p.streaming)
    }

    /// Whether the parked request's answer may stream (its head is written or ready).
    pub fn may_stream(&self) -> bool {
        (self.parked.as_ref()).is_some_and(|p| p.streaming || p.stream_head.is_some())
    }

    /// One chunk of a streaming answer, after its head the first time (dropped if the
    /// answer does not stream).
    pub fn stream_send(&mut self, data: &[u8], now: Instant) -> bool {
        match &mut self.parked {
            Some(p) if p.streaming || p.stream_head.is_some() => {
                if let Some(head) = p.stream_head.take() {
                    encode_stream_head(&head, p.keep_alive, &mut self.tx);
                    p.streaming = true;
                }
                push_chunk(data, &mut self.tx);
                p.last_chunk = now;
                self.last_activity = now;
                true
            }
            _ => false,
        }
    }

    /// The last chunk of a streaming answer, then the end of its body.
    pub fn stream_end(
        &mut self,
        data: &[u8],
        keep_alive_allowed: bool,
        now: Instant,
    ) -> Option<Delivered> {
        if !self.may_stream() {
            return None;
        }
        self.stream_send(data, now);
        let p = self.parked.take()?;
        self.tx.extend_from_slice(LAST_CHUNK);
        self.closing |= !(p.keep_alive && keep_alive_allowed);
        self.last_activity = now;
        Some(Delivered {
            route: p.route,
            waited: now.duration_since(p.since),
        })
    }

    /// Whether a streaming answer has been quiet for `every`.
    pub fn ping_due(&self, now: Instant, every: Duration) -> bool {
        (self.parked.as_ref())
            .is_some_and(|p| p.streaming && now.duration_since(p.last_chunk) >= every)
    }

    /// Which deadline, if any, has passed.
    pub fn expired(&self, now: Instant, head_timeout: Duration, idle: Duration) -> Option<Expiry> {
        if self.parked.is_some() || self.closing || self.upgrade.is_some() {
            return None;
        }
        if let Some(t) = self.request_started {
            if now.duration_since(t) > head_timeout {
                return Some(Expiry::Header);
            }
        }
        if self.rx.is_empty() && self.tx.is_empty() && now.duration_since(self.last_activity) > idle
        {
            return Some(Expiry::Idle);
        }
        None
    }

    /// Answer a request that took too long with 408 and close after writing it.
    pub fn time_out(&mut self) {
        let resp = Response::error(408, "request_timeout", "the request did not arrive in time");
        encode(&resp, false, false, &mut self.tx);
        self.rx.clear();
        self.closing = true;
    }

    /// Read, parse, dispatch and write until nothing more can be done now.
    pub fn drive(
        &mut self,
        id: ConnId,
        h: &mut impl HttpHandler,
        limits: &Limits,
        now: Instant,
    ) -> Drive {
        let rx_cap = limits.head_max + limits.body_max;
        loop {
            let mut progress = false;
            // After an accepted upgrade, bytes are WebSocket frames: they wait in `rx` for
            // the WebSocket connection (which reads the rest itself).
            let http = !self.closing && self.upgrade.is_none();
            if self.readable && !self.eof && http && self.rx.len() < rx_cap {
                match read_until_blocked(&mut self.sock, &mut self.rx, rx_cap) {
                    Ok(pass) => {
                        self.readable &= !pass.drained;
                        self.eof |= pass.eof;
                        if pass.bytes > 0 {
                            progress = true;
                            self.last_activity = now;
                        }
                    }
                    Err(_) => return Drive::Close,
                }
            }
            while self.parked.is_none()
                && !self.closing
                && self.upgrade.is_none()
                && self.tx.len() < TX_HIGH_WATER
            {
                match decode(&mut self.rx, limits) {
                    Ok(Some(req)) => {
                        progress = true;
                        self.request_started = None;
                        let keep = req.keep_alive && h.keep_alive_allowed();
                        let head_only = req.method == Method::Head;
                        match h.handle(id, req) {
                            Handled::Respond(resp) => {
                                encode(&resp, head_only, keep, &mut self.tx);
                                self.closing = !keep;
                            }
                            Handled::Upgrade { response, feed } => {
                                self.tx.extend_from_slice(&response);
                                self.upgrade = Some(feed);
                            }
                            Handled::Park { route, headers } => {
                                self.parked = Some(Parked {
                                    keep_alive: keep,
                                    head_only,
                                    route,
                                    headers,
                                    since: now,
                                    streaming: false,
                                    stream_head: None,
                                    last_chunk: now,
                                })
                            }
                            Handled::Stream {
                                route,
                                headers,
                                head,
                            } => {
                                self.parked = Some(Parked {
                                    keep_alive: keep,
                                    head_only: false,
                                    route,
                                    headers,
                                    since: now,
                                    streaming: false,
                                    stream_head: Some(head),
                                    last_chunk: now,
                                })
                            }
                        }
                    }
                    Ok(None) => {
                        if self.rx.is_empty() {
                            self.request_started = None;
                        } else if self.request_started.is_none() {
                            self.request_started = Some(now);
                        }
                        break;
                    }
                    Err(err) => {
                        h.rejected(&err);
                        encode(&Response::from(err), false, false, &mut self.tx);
                        self.rx.clear();
                        self.closing = true;
                    }
                }
            }
            if !self.tx.is_empty() {
                let before = self.tx_pos;
                match write_until_blocked(&mut self.sock, &mut self.tx, &mut self.tx_pos) {
                    Ok(done) => {
                        if done || self.tx_pos > before {
                            progress = true;
                            self.last_activity = now;
                        }
                    }
                    Err(_) => return Drive::Close,
                }
            }
            if self.tx.is_empty() && self.upgrade.is_some() {
                return Drive::Upgrade;
            }
            if self.tx.is_empty() && (self.closing || (self.eof && self.parked.is_none())) {
                return Drive::Close;
            }
            if !progress {
                return Drive::Open;
            }
        }
    }
}
