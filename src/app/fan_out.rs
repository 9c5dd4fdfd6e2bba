//! Fan-out: every new event of the world goes, once, to whoever must hear it: the
//! federation log when it leaves this world, every game link that hears its room, and
//! the gateway's clients (and so the status page).

use crate::app::App;
use crate::codec::ndjson::encode;
use crate::conn::ConnId;
use crate::world::room::EventKind;

impl App {
    /// Send every new event of the world to every link that hears its room (a player
    /// of theirs is there, or they declared it), except the link it
    /// came from (`source`), and to the gateway's clients.
    ///
    /// In cluster mode the world's new events are the ones applied from the log; the
    /// events a link just reported still wait for it, and are marked as that link's.
    pub fn route_events(&mut self, source: Option<ConnId>) {
        if let Some(link) = source {
            self.note_link_events(link);
        }
        self.fan_out(source);
    }

    /// The fan-out itself: the world's new events, to everyone but `source`.
    pub(crate) fn fan_out(&mut self, source: Option<ConnId>) {
        let events = self.world.take_new_events();
        self.federate(&events);
        for ev in &events {
            if ev.kind == EventKind::Presence {
                self.links
                    .observe_presence(&ev.user_id, &ev.event, &ev.room);
            }
            let audience = self.links.audience(&ev.room);
            let mut line = Vec::new();
            for link in audience.into_iter().filter(|l| Some(*l) != source) {
                if line.is_empty() {
                    encode(ev, &mut line);
                }
                self.out.lines.push((link, line.clone()));
            }
        }
        // The same events, to every gateway client (and so the status page).
        self.publish_to_gateway(&events);
    }
}
