//! The WebSocket write scheduler: frames the hub queued become writes on their
//! connections, the gateway's broadcasts go through one shared log (`conn/fanout.rs`),
//! connections are written round-robin a slice at a time, and a client past its queue
//! caps is closed as a slow consumer.

use super::*;

impl Bridge {
    /// Hand the feeds' frames, closes and pings to their connections; each connection
    /// given something joins the write queue once (see [`Bridge::write_ws_slice`]).
    pub(super) fn queue_ws_out(&mut self) {
        let mut batch = std::mem::take(&mut self.app.out.frames);
        for out in batch.drain(..) {
            match out {
                WsOut::Broadcast(except, frame) => {
                    self.fanout.push(frame, except);
                    for &m in &self.ws_members {
                        if Some(m) != except {
                            self.ws_write.push(m);
                        }
                    }
                }
                WsOut::Send(id, frame) => {
                    let Some(s) = ws_session(&mut self.conns, id) else {
                        continue;
                    };
                    if s.conn.send(frame, &self.fanout) == Sent::SlowConsumer {
                        self.slow_consumer_closed(id);
                    }
                    self.ws_write.push(id);
                }
                WsOut::Join(id) => {
                    let Some(s) = ws_session(&mut self.conns, id) else {
                        continue;
                    };
                    if s.conn.is_open() && s.conn.cursor().is_none() {
                        s.conn.join(&self.fanout);
                        self.ws_members.push(id);
                    }
                }
                WsOut::Close(id, code, reason) => {
                    if let Some(s) = ws_session(&mut self.conns, id) {
                        s.conn.close(code, &reason);
                        self.ws_write.push(id);
                    }
                }
                WsOut::Ping(id) => {
                    if let Some(s) = ws_session(&mut self.conns, id) {
                        s.conn.ping(&self.fanout);
                        self.ws_write.push(id);
                    }
                }
            }
        }
        // The emptied queue goes back with its capacity (unless a burst grew it past
        // 4096): every say and chat queues a broadcast (see `Gateway::publish_event`),
        // and a queue grown anew on every turn of the loop cost more than that.
        if self.app.out.frames.is_empty() && batch.capacity() <= 4096 {
            self.app.out.frames = batch;
        }
        if self.fanout.scan_due(self.ws_limits.max_queued_bytes) {
            self.scan_fanout();
        }
        self.app.metrics.ws_broadcast_log = self.fanout.len();
    }

    /// Close the members too far behind in the shared log (each would be past a queue
    /// cap), then drop what every remaining member has written.
    pub(super) fn scan_fanout(&mut self) {
        let mut keep_from = self.fanout.head();
        let mut slow = Vec::new();
        for &m in &self.ws_members {
            let Some(s) = ws_session(&mut self.conns, m) else {
                continue;
            };
            if s.conn.lagging(&self.fanout) {
                slow.push(m);
            } else if let Some(c) = s.conn.cursor() {
                keep_from = keep_from.min(c);
            }
        }
        for m in slow {
            if let Some(s) = ws_session(&mut self.conns, m) {
                s.conn.close_slow();
                self.slow_consumer_closed(m);
                self.ws_write.push(m);
            }
        }
        self.fanout
            .scanned(keep_from, self.ws_limits.max_queued_messages);
    }

    /// Count and log a connection just closed as a slow consumer.
    pub(super) fn slow_consumer_closed(&mut self, id: ConnId) {
        let Some(s) = ws_session(&mut self.conns, id) else {
            return;
        };
        self.app.metrics.ws_slow_consumers += 1;
        let (bytes, msgs) = (
            self.ws_limits.max_queued_bytes,
            self.ws_limits.max_queued_messages,
        );
        log::warn!(
            "conn={} peer={} websocket closed as a slow consumer ({} feed): \
             past {bytes} bytes or {msgs} messages waiting (gateway.max_queued_*)",
            id.idx,
            s.conn.peer,
            s.feed.name()
        );
    }

    /// Write the next [`WS_WRITE_SLICE`] connections of the write queue. A broadcast to
    /// thousands is written over several loop iterations with a poll between them, so
    /// what arrives meanwhile (the next broadcast, an HTTP request) is taken at once
    /// instead of after the whole walk: a frame queued for a connection still waiting
    /// for its turn goes out in the same write, and one already written joins the back
    /// of the queue. Each connection is written once per round, with all it has by then.
    pub(super) fn write_ws_slice(&mut self) {
        for _ in 0..WS_WRITE_SLICE {
            let Some(id) = self.ws_write.pop() else {
                break;
            };
            self.drive_ws(id);
        }
    }
}
