//! Counters and histograms of the bridge, owned by the event loop (no atomics needed) and
//! rendered as Prometheus text for `GET /metrics`, and as JSON for `GET /bridge/stats`.

use serde::Serialize;
use std::collections::BTreeMap;

/// The `category` label values of `worldbridge_crisis_detections_total`, always rendered.
pub const CRISIS_CATEGORIES: [&str; 5] = [
    "suicide",
    "self_harm",
    "hopelessness",
    "desperation",
    "model_check",
];
use std::fmt::Write;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    pub count: u64,
    pub sum_s: f64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum_s += s;
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_s);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Every counter of the process.
#[derive(Debug, Default, Serialize)]
pub struct Metrics {
    pub connections_accepted: u64,
    pub connections_rejected: u64,
    pub connections_closed: u64,
    /// (route pattern, status) → count.
    #[serde(skip)]
    pub requests: BTreeMap<(&'static str, u16), u64>,
    pub requests_total: u64,
    /// outcome (`ok`, `error`, `timeout`, `rejected`) → count.
    pub agent_calls: BTreeMap<&'static str, u64>,
    pub agent_latency: Histogram,
    pub request_latency: Histogram,
    /// Streamed replies: time from the call to its first part, and to the whole reply,
    /// labelled with the backend (`agent.backend`).
    #[serde(skip)]
    pub agent_first_part: Histogram,
    #[serde(skip)]
    pub agent_reply: Histogram,
    #[serde(skip)]
    pub agent_backend: String,
    /// Crisis detections by category (`suicide`, `self_harm`, `hopelessness`,
    /// `desperation`, or `model_check` when only the model's classification found it).
    pub crisis_detections: BTreeMap<&'static str, u64>,
    /// Questions about the hotlines answered with the numbers.
    pub crisis_resources: u64,
    /// WebSocket upgrades refused for their `Origin` (`websocket.allowed_origins`).
    pub ws_origin_refused: u64,
    pub rate_limited: u64,
    /// Rooms removed after `rooms.idle_expire_s` empty.
    pub rooms_expired: u64,
    pub bad_requests: u64,
    /// Line-protocol messages received, and those answered with `error`.
    pub line_messages: u64,
    pub line_errors: u64,
    /// Links dropped because they stopped reading.
    pub line_slow_consumers: u64,
    /// Requests the bridge sent games (`act`, `observe`).
    pub game_requests: BTreeMap<&'static str, u64>,
    /// WebSocket clients closed because they stopped reading.
    pub ws_slow_consumers: u64,
    /// Gateway broadcasts kept in the loop's shared log (what the slowest member has
    /// not written yet, plus what came since the last trim), as of the last change.
    pub ws_broadcast_log: usize,
    /// Visitor messages not written to the inbox: its queue was full, or the write failed
    /// (each visitor was told `inbox_unavailable`).
    pub inbox_dropped: u64,
}

/// Gauges read from live state when rendering.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Gauges {
    pub connections_open: usize,
    pub sessions_active: usize,
    pub rooms: usize,
    pub agent_queue_depth: usize,
    pub agent_in_flight: usize,
    pub events_seq: u64,
    pub uptime_s: u64,
}

impl Metrics {
    pub fn count_request(&mut self, route: &'static str, status: u16) {
        *self.requests.entry((route, status)).or_insert(0) += 1;
        self.requests_total += 1;
        if (400..500).contains(&status) {
            self.bad_requests += 1;
        }
    }

    pub fn count_agent(&mut self, outcome: &'static str) {
        *self.agent_calls.entry(outcome).or_insert(0) += 1;
    }

    pub fn count_crisis(&mut self, category: &'static str) {
        *self.crisis_detections.entry(category).or_insert(0) += 1;
    }

    /// All crisis detections, whatever the category.
    pub fn crisis_total(&self) -> u64 {
        self.crisis_detections.values().sum()
    }

    pub fn count_game(&mut self, what: &'static str) {
        *self.game_requests.entry(what).or_insert(0) += 1;
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::with_capacity(4096);
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut o,
            "worldbridge_connections_open",
            "Open client connections.",
            g.connections_open as f64,
        );
        gauge(
            &mut o,
            "worldbridge_sessions_active",
            "Live agent sessions.",
            g.sessions_active as f64,
        );
        gauge(
            &mut o,
            "worldbridge_rooms",
            "Rooms in this world.",
            g.rooms as f64,
        );
        gauge(
            &mut o,
            "worldbridge_agent_queue_depth",
            "Agent calls waiting for a worker.",
            g.agent_queue_depth as f64,
        );
        gauge(
            &mut o,
            "worldbridge_agent_in_flight",
            "Agent calls submitted and not yet answered.",
            g.agent_in_flight as f64,
        );
        gauge(
            &mut o,
            "worldbridge_event_seq",
            "Sequence number of the latest world event.",
            g.events_seq as f64,
        );
        gauge(
            &mut o,
            "worldbridge_uptime_seconds",
            "Seconds since start.",
            g.uptime_s as f64,
        );
        let counters = [
            (
                "worldbridge_connections_accepted_total",
                "Connections accepted.",
                self.connections_accepted,
            ),
            (
                "worldbridge_connections_rejected_total",
                "Connections closed at once because max_connections was reached.",
                self.connections_rejected,
            ),
            (
                "worldbridge_connections_closed_total",
                "Connections closed.",
                self.connections_closed,
            ),
            (
                "worldbridge_crisis_resources_total",
                "Questions about the hotlines answered with the numbers (no protocol).",
                self.crisis_resources,
            ),
            (
                "worldbridge_ws_origin_refused_total",
                "WebSocket upgrades refused because the page's Origin is not allowed.",
                self.ws_origin_refused,
            ),
            (
                "worldbridge_rate_limited_total",
                "Requests refused by the per-user rate limit or the per-address room creation limit.",
                self.rate_limited,
            ),
            (
                "worldbridge_rooms_expired_total",
                "Rooms removed (with their events) after rooms.idle_expire_s empty.",
                self.rooms_expired,
            ),
            (
                "worldbridge_line_messages_total",
                "Line-protocol messages received from game links.",
                self.line_messages,
            ),
            (
                "worldbridge_line_errors_total",
                "Line-protocol messages answered with an error.",
                self.line_errors,
            ),
            (
                "worldbridge_line_slow_consumers_total",
                "Game links dropped because they stopped reading.",
                self.line_slow_consumers,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        o.push_str("# HELP worldbridge_http_requests_total HTTP requests by route and status.\n# TYPE worldbridge_http_requests_total counter\n");
        for ((route, status), n) in &self.requests {
            let _ = writeln!(
                o,
                "worldbridge_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        o.push_str("# HELP worldbridge_agent_calls_total Agent calls by outcome.\n# TYPE worldbridge_agent_calls_total counter\n");
        for (outcome, n) in &self.agent_calls {
            let _ = writeln!(
                o,
                "worldbridge_agent_calls_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        o.push_str("# HELP worldbridge_crisis_detections_total Messages in which a crisis was detected, by category.\n# TYPE worldbridge_crisis_detections_total counter\n");
        for category in CRISIS_CATEGORIES {
            let n = self.crisis_detections.get(category).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "worldbridge_crisis_detections_total{{category=\"{category}\"}} {n}"
            );
        }
        o.push_str("# HELP worldbridge_game_requests_total Requests sent to game links.\n# TYPE worldbridge_game_requests_total counter\n");
        for (what, n) in &self.game_requests {
            let _ = writeln!(
                o,
                "worldbridge_game_requests_total{{request=\"{what}\"}} {n}"
            );
        }
        o.push_str("# HELP worldbridge_agent_latency_seconds Time from submitting an agent call to its answer.\n# TYPE worldbridge_agent_latency_seconds histogram\n");
        self.agent_latency
            .render("worldbridge_agent_latency_seconds", "", &mut o);
        let backend = format!("backend=\"{}\"", self.agent_backend);
        o.push_str("# HELP worldbridge_agent_first_part_seconds Time from a streamed call to its first part.\n# TYPE worldbridge_agent_first_part_seconds histogram\n");
        self.agent_first_part
            .render("worldbridge_agent_first_part_seconds", &backend, &mut o);
        o.push_str("# HELP worldbridge_agent_reply_seconds Time from a streamed call to its whole reply.\n# TYPE worldbridge_agent_reply_seconds histogram\n");
        self.agent_reply
            .render("worldbridge_agent_reply_seconds", &backend, &mut o);
        o.push_str("# HELP worldbridge_http_request_duration_seconds Time from a parsed request to its response.\n# TYPE worldbridge_http_request_duration_seconds histogram\n");
        self.request_latency
            .render("worldbridge_http_request_duration_seconds", "", &mut o);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_labels_and_histogram() {
        let mut m = Metrics::default();
        m.count_request("/bridge/health", 200);
        m.count_request("/bridge/health", 200);
        m.count_request("/bridge/move", 409);
        m.count_agent("ok");
        m.agent_latency.observe(Duration::from_millis(3));
        m.count_crisis("suicide");
        m.count_crisis("suicide");
        let text = m.render(&Gauges {
            connections_open: 7,
            ..Gauges::default()
        });
        assert!(text.contains(
            "worldbridge_http_requests_total{route=\"/bridge/health\",status=\"200\"} 2"
        ));
        assert!(text
            .contains("worldbridge_http_requests_total{route=\"/bridge/move\",status=\"409\"} 1"));
        assert!(text.contains("worldbridge_agent_calls_total{outcome=\"ok\"} 1"));
        assert!(text.contains("worldbridge_connections_open 7"));
        assert!(text.contains("worldbridge_crisis_detections_total{category=\"suicide\"} 2"));
        assert!(text.contains("worldbridge_crisis_detections_total{category=\"self_harm\"} 0"));
        assert!(text.contains("worldbridge_agent_latency_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("worldbridge_agent_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("worldbridge_agent_latency_seconds_count 1"));
        assert_eq!(m.bad_requests, 1);
    }
}
