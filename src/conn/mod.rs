//! Connections: a slab of per-connection state machines keyed by generation-checked ids,
//! and the socket I/O helpers they share (read and write until `WouldBlock`).

pub mod fanout;
pub mod http;
pub mod line;
pub mod ws;

use std::io::{self, Read, Write};

/// Whether the connection stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    Open,
    Close,
    /// The `101` is written: the connection now speaks WebSocket
    /// ([`http::HttpConn::upgrade_to`] names the feed, [`http::HttpConn::into_parts`] gives the socket).
    Upgrade,
}

/// Which feed a WebSocket connection belongs to (chosen by the upgrade request's path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// `/ws/matrix`: the seed-004 gateway; `since` is the `?since=` resume point, `bound`
    /// the `gateway.agents` entry whose token the upgrade presented, `epoch` the
    /// `?epoch=` of a cluster's log that `since` is from.
    Gateway {
        since: Option<u64>,
        bound: Option<usize>,
        epoch: Option<u64>,
    },
    /// `/` and `/ws/workshop`: the seed-002 state feed.
    Workshop,
}

impl Feed {
    pub fn name(&self) -> &'static str {
        match self {
            Feed::Gateway { .. } => "gateway",
            Feed::Workshop => "workshop",
        }
    }
}

/// A connection's identity. The slot index is reused after a close; the generation is
/// not, so anything that outlives an event (a parked request waiting for the agent)
/// checks it before touching the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub idx: u32,
    pub gen: u32,
}

struct Slot<T> {
    gen: u32,
    item: Option<T>,
}

/// A slab of `T` with generation-checked ids.
pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The id the next `insert` will return (so an item can know its own id).
    pub fn next_id(&self) -> ConnId {
        match self.free.last() {
            Some(&idx) => ConnId {
                idx,
                gen: self.slots[idx as usize].gen,
            },
            None => ConnId {
                idx: self.slots.len() as u32,
                gen: 0,
            },
        }
    }

    pub fn insert(&mut self, item: T) -> ConnId {
        let id = self.next_id();
        if self.free.pop().is_some() {
            self.slots[id.idx as usize].item = Some(item);
        } else {
            self.slots.push(Slot {
                gen: 0,
                item: Some(item),
            });
        }
        self.live += 1;
        id
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        match self.slots.get_mut(id.idx as usize) {
            Some(s) if s.gen == id.gen => s.item.as_mut(),
            _ => None,
        }
    }

    /// The live id at a slot index (events from mio carry only the index).
    pub fn id_at(&self, idx: usize) -> Option<ConnId> {
        let s = self.slots.get(idx)?;
        s.item.as_ref().map(|_| ConnId {
            idx: idx as u32,
            gen: s.gen,
        })
    }

    /// Move the item at `id` through `f` in place (a state transition such as an HTTP
    /// connection becoming a WebSocket one): same slot, same id, same mio token.
    pub fn replace_with(&mut self, id: ConnId, f: impl FnOnce(T) -> T) -> bool {
        match self.slots.get_mut(id.idx as usize) {
            Some(s) if s.gen == id.gen && s.item.is_some() => {
                s.item = s.item.take().map(f);
                true
            }
            _ => false,
        }
    }

    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        let s = self.slots.get_mut(id.idx as usize)?;
        if s.gen != id.gen {
            return None;
        }
        let item = s.item.take()?;
        s.gen = s.gen.wrapping_add(1);
        self.free.push(id.idx);
        self.live -= 1;
        Some(item)
    }

    pub fn ids(&self) -> Vec<ConnId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.item.is_some())
            .map(|(i, s)| ConnId {
                idx: i as u32,
                gen: s.gen,
            })
            .collect()
    }
}

/// What a read pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadPass {
    pub bytes: usize,
    /// The peer closed its side (`Ok(0)`).
    pub eof: bool,
    /// The socket has no more data now: wait for the next readable event.
    pub drained: bool,
}

/// Read into `buf` until `WouldBlock`, EOF, or `buf` holds `cap` bytes.
pub fn read_until_blocked(
    sock: &mut impl Read,
    buf: &mut bytes::BytesMut,
    cap: usize,
) -> io::Result<ReadPass> {
    let mut pass = ReadPass::default();
    let mut chunk = [0u8; 16 * 1024];
    while buf.len() < cap {
        let want = chunk.len().min(cap - buf.len());
        match sock.read(&mut chunk[..want]) {
            Ok(0) => {
                pass.eof = true;
                pass.drained = true;
                break;
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                pass.bytes += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pass.drained = true;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(pass)
}

/// Write `buf[*pos..]` until done or `WouldBlock`. Returns true when all was written
/// (then `buf` is cleared and `pos` reset).
pub fn write_until_blocked(
    sock: &mut impl Write,
    buf: &mut Vec<u8>,
    pos: &mut usize,
) -> io::Result<bool> {
    while *pos < buf.len() {
        match sock.write(&buf[*pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.clear();
    *pos = 0;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_ids_are_generation_checked() {
        let mut s: Slab<&str> = Slab::default();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_eq!(b.idx, a.idx);
        assert_ne!(b.gen, a.gen);
        assert!(
            s.get_mut(a).is_none(),
            "a stale id must not reach the new item"
        );
        assert_eq!(s.get_mut(b).copied(), Some("b"));
        assert_eq!(s.id_at(b.idx as usize), Some(b));
        assert_eq!(s.len(), 1);
        assert_eq!(s.remove(a), None);
        assert!(s.replace_with(b, |v| if v == "b" { "B" } else { v }));
        assert_eq!(s.get_mut(b).copied(), Some("B"));
        assert!(
            !s.replace_with(a, |_| "stale"),
            "a stale id replaces nothing"
        );
    }
}
