//! One line-protocol connection: accepted from a game, or dialed to a game that listens.
//!
//! Buffers, framing (via [`LineCodec`]), the non-blocking connect of a dialed link, the
//! heartbeat bookkeeping and the outbound cap. What a line *means* is the handler's
//! business ([`LineHandler`]); this file only moves bytes.
//!
//! Backpressure: reading stops while more than the outbound cap of answers waits to be
//! written (a peer that pipelines and never reads cannot grow our memory), and
//! [`LineConn::queue`] refuses bytes past the cap so the loop can drop a slow consumer.

use super::Drive;
use super::{read_until_blocked, write_until_blocked, ConnId};
use crate::codec::ndjson::{Frame, LineCodec};
use bytes::BytesMut;
use mio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the application does with lines.
pub trait LineHandler {
    /// One complete line (terminator stripped). Answers go into `out`. Returning
    /// [`Drive::Close`] closes the connection once `out` is written.
    fn line(&mut self, id: ConnId, line: &[u8], out: &mut Vec<u8>) -> Drive;
    /// A line went past the cap (it is being discarded).
    fn too_long(&mut self, id: ConnId, out: &mut Vec<u8>);
    /// A dialed connection is established: the first words go into `out`.
    fn connected(&mut self, id: ConnId, out: &mut Vec<u8>);
}

/// The limits of one line connection, from Config.
#[derive(Debug, Clone, Copy)]
pub struct LineLimits {
    pub max_line: usize,
    /// Outbound bytes that may wait; past it the peer is a slow consumer.
    pub max_queued: usize,
}

pub struct LineConn {
    pub sock: TcpStream,
    pub peer: SocketAddr,
    /// The dial this connection belongs to (outbound links).
    pub dial: Option<usize>,
    rx: BytesMut,
    tx: Vec<u8>,
    tx_pos: usize,
    codec: LineCodec,
    readable: bool,
    eof: bool,
    closing: bool,
    /// A non-blocking connect has not completed yet.
    connecting: bool,
    /// Last time anything was received (any line counts).
    pub last_rx: Instant,
    /// When we pinged a silent peer (cleared by any traffic).
    pub ping_sent: Option<Instant>,
}

/// What the heartbeat check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    Fine,
    /// Silent for two heartbeats: send a ping.
    Ping,
    /// Silent for a heartbeat after the ping: drop it.
    Dead,
}

impl LineConn {
    pub fn accepted(sock: TcpStream, peer: SocketAddr, limits: &LineLimits, now: Instant) -> Self {
        Self::new(sock, peer, None, false, limits, now)
    }

    /// A connection whose non-blocking connect was just started.
    pub fn dialing(
        sock: TcpStream,
        peer: SocketAddr,
        dial: usize,
        limits: &LineLimits,
        now: Instant,
    ) -> Self {
        Self::new(sock, peer, Some(dial), true, limits, now)
    }

    fn new(
        sock: TcpStream,
        peer: SocketAddr,
        dial: Option<usize>,
        connecting: bool,
        limits: &LineLimits,
        now: Instant,
    ) -> Self {
        LineConn {
            sock,
            peer,
            dial,
            rx: BytesMut::with_capacity(1024),
            tx: Vec::new(),
            tx_pos: 0,
            codec: LineCodec::new(limits.max_line),
            readable: true,
            eof: false,
            closing: false,
            connecting,
            last_rx: now,
            ping_sent: None,
        }
    }

    pub fn mark_readable(&mut self) {
        self.readable = true;
    }

    pub fn is_connecting(&self) -> bool {
        self.connecting
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.tx.len() - self.tx_pos
    }

    /// Queue bytes for the peer. `false` (nothing queued) when that would pass the cap:
    /// the peer is not reading.
    pub fn queue(&mut self, bytes: &[u8], limits: &LineLimits) -> bool {
        if self.queued() + bytes.len() > limits.max_queued {
            return false;
        }
        // A link that is always a little behind never empties `tx`; drop what was sent.
        if self.tx_pos > 64 * 1024 && self.tx_pos * 2 > self.tx.len() {
            self.tx.drain(..self.tx_pos);
            self.tx_pos = 0;
        }
        self.tx.extend_from_slice(bytes);
        true
    }

    /// Whether the peer has been silent too long (see the protocol's keep-alive rule).
    pub fn heartbeat(&self, now: Instant, every: Duration) -> Heartbeat {
        if self.connecting {
            return Heartbeat::Fine;
        }
        let silent = now.saturating_duration_since(self.last_rx);
        match self.ping_sent {
            _ if silent >= every * 3 => Heartbeat::Dead,
            None if silent >= every * 2 => Heartbeat::Ping,
            _ => Heartbeat::Fine,
        }
    }

    /// Close once what is queued has been written.
    pub fn close_after_flush(&mut self) {
        self.closing = true;
    }

    /// Has the non-blocking connect finished? `Err` if it failed.
    fn finish_connect(&mut self) -> io::Result<bool> {
        if let Some(e) = self.sock.take_error()? {
            return Err(e);
        }
        match self.sock.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Read, frame, dispatch and write until nothing more can be done now. `Err` carries
    /// why the connection failed (for a dial's `last_error`).
    pub fn drive(
        &mut self,
        id: ConnId,
        h: &mut impl LineHandler,
        limits: &LineLimits,
        now: Instant,
    ) -> Result<Drive, String> {
        if self.connecting {
            match self.finish_connect() {
                Ok(true) => {
                    self.connecting = false;
                    self.last_rx = now;
                    h.connected(id, &mut self.tx);
                }
                Ok(false) => return Ok(Drive::Open),
                Err(e) => return Err(format!("connect to {} failed: {e}", self.peer)),
            }
        }
        // Read a line's worth at a time so a flood is framed (and answered) as it comes.
        let rx_cap = limits.max_line + 2;
        loop {
            let mut progress = false;
            if self.readable && !self.eof && !self.closing && self.queued() < limits.max_queued {
                let cap = self.rx.len() + rx_cap;
                let pass = read_until_blocked(&mut self.sock, &mut self.rx, cap)
                    .map_err(|e| format!("read from {} failed: {e}", self.peer))?;
                self.readable &= !pass.drained;
                self.eof |= pass.eof;
                if pass.bytes > 0 {
                    progress = true;
                    self.last_rx = now;
                    self.ping_sent = None;
                }
            }
            while !self.closing {
                match self.codec.decode(&mut self.rx) {
                    Some(Frame::Line(line)) => {
                        progress = true;
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        if h.line(id, &line, &mut self.tx) == Drive::Close {
                            self.closing = true;
                        }
                    }
                    Some(Frame::TooLong) => {
                        progress = true;
                        h.too_long(id, &mut self.tx);
                    }
                    None => break,
                }
            }
            if self.queued() > 0 {
                let before = self.tx_pos;
                let done = write_until_blocked(&mut self.sock, &mut self.tx, &mut self.tx_pos)
                    .map_err(|e| format!("write to {} failed: {e}", self.peer))?;
                progress |= done || self.tx_pos > before;
            }
            if self.queued() == 0 && (self.closing || self.eof) {
                return Ok(Drive::Close);
            }
            if !progress {
                return Ok(Drive::Open);
            }
        }
    }
}
