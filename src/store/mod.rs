//! Durable state: an SQLite database in the data directory, owned by one store thread.
//!
//! The loop sends [`Batch`]es of changed rows; the thread commits everything that arrived
//! while its last commit ran in one transaction (group commit), then reports which batches
//! are durable and wakes the loop, which only then sends the answers that waited on them.
//! A failed commit is reported too (those answers become 503) and its rows are retried
//! with the next transaction: every row is a whole upsert or delete, so repeating one is
//! harmless.
//!
//! Why `synchronous = FULL`: an acknowledged write must survive a power cut, not only a
//! crash of the process. In WAL mode NORMAL can lose the last transactions on power loss;
//! FULL syncs the WAL at each commit, and group commit spreads that fsync over every write
//! in the transaction.
//!
//! Also here: opening (lock, pragmas, migrations), loading the [`Snapshot`] at start, and
//! the export/import document of `worldbridge export` / `import`.

pub mod cluster;

use crate::federation::merge::Pruned;
use crate::federation::travel::{Arrival, Departure};
use crate::federation::wire::{FedEvent, TrustEntry};
use crate::feeds::gateway::StoredFrame;
use crate::world::room::Event;
use crate::world::session::Session;
use crate::world::state::{RoomState, Snapshot};
use crate::world::Occupant;
use crossbeam_channel::{Receiver, Sender};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 5;

/// The export document's format name and major version.
pub const EXPORT_FORMAT: &str = "worldbridge-export";
pub const EXPORT_VERSION: u64 = 1;

/// Forward migrations: `MIGRATIONS[i]` takes a database from version `i` to `i + 1`.
const MIGRATIONS: [&str; 5] = [
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE rooms (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE presence (user_id TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE sessions (user_id TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE events (seq INTEGER PRIMARY KEY, room TEXT NOT NULL, body TEXT NOT NULL);
    CREATE INDEX events_by_room ON events (room, seq);
    CREATE TABLE cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL);
",
    "
    CREATE TABLE gateway_history (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);
",
    "
    CREATE TABLE fed_events (origin TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
                             PRIMARY KEY (origin, seq));
    CREATE TABLE fed_trust (subject TEXT PRIMARY KEY, body TEXT NOT NULL);
",
    "
    CREATE TABLE fed_departures (travel_id TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE fed_arrivals (travel_id TEXT PRIMARY KEY, body TEXT NOT NULL);
",
    "
    CREATE TABLE fed_pruned (origin TEXT PRIMARY KEY, upto INTEGER NOT NULL);
",
];

/// One changed row. Rows are whole: writing one again changes nothing.
#[derive(Debug, Clone)]
pub enum Row {
    Room(RoomState),
    /// A room is gone (expired): its row and all its events are deleted.
    RoomGone(String),
    Presence(Occupant),
    PresenceGone(String),
    Session(Session),
    SessionGone(String),
    Event(Event),
    /// The last event sequence number handed out.
    Seq(u64),
    /// A frame of the gateway's resume history (and the gateway's sequence with it).
    Gateway(StoredFrame),
    /// A federated event, own or received: keyed by `(origin, seq)`, so writing it
    /// again changes nothing.
    FedEvent(FedEvent),
    /// An origin's federated events up to a seq are dropped; the mark is kept.
    FedPruned(Pruned),
    /// The trust entry that now wins for its subject.
    FedTrust(TrustEntry),
    /// A travel leaving this world (origin side), keyed by travel id.
    FedDeparture(Departure),
    FedDepartureGone(String),
    /// A travel into this world (destination side), keyed by travel id.
    FedArrival(Arrival),
    FedArrivalGone(String),
}

/// How much the database keeps, from Config.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Events per room (`rooms.events_max`).
    pub events_max: usize,
    /// Gateway history frames (`gateway.history_max`).
    pub gateway_max: usize,
}

/// The changes of one loop iteration.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: u64,
    pub rows: Vec<Row>,
}

/// What the store thread tells the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// Every batch with an id up to `upto` is durable.
    Durable { upto: u64 },
    /// These batches could not be committed (their rows are retried with the next one).
    Failed { ids: Vec<u64>, error: String },
}

/// Counters of the store thread, read by `/bridge/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub batches: std::sync::atomic::AtomicU64,
    pub rows: std::sync::atomic::AtomicU64,
    pub transactions: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
    /// Time spent writing rows and committing (fsync included), in microseconds.
    pub write_us: std::sync::atomic::AtomicU64,
    pub commit_us: std::sync::atomic::AtomicU64,
}

enum Msg {
    Batch(Batch),
    Stop,
}

/// How often the checkpointer copies the WAL into the database file. Small, frequent
/// checkpoints keep the WAL short and in the page cache, so commits stay cheap: on the
/// project's machine 50 ms gave about 43,000 durable says/s, 2 s about 25,000.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// WAL pages after which a commit checkpoints by itself: only a backstop for a stalled
/// checkpointer, so commits rarely pay for a checkpoint.
const AUTOCHECKPOINT_PAGES: u32 = 20_000;

/// Checkpoints on its own connection, so the writer's commits do not stall while the WAL
/// is copied into the database (a passive checkpoint never blocks the writer).
fn checkpointer(path: PathBuf, stop: Receiver<()>) {
    let conn = match Connection::open(&path) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("store: checkpointer cannot open {}: {e}", path.display());
            return;
        }
    };
    let _ = conn.busy_timeout(std::time::Duration::from_millis(100));
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
        stop.recv_timeout(CHECKPOINT_EVERY)
    {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            log::debug!("store: checkpoint: {e}");
        }
    }
}

/// The loop's side of a running store.
pub struct Store {
    tx: Sender<Msg>,
    pub events: Receiver<StoreEvent>,
    pub stats: Arc<StoreStats>,
    thread: Option<JoinHandle<()>>,
    checkpoints: Option<(Sender<()>, JoinHandle<()>)>,
    pub path: PathBuf,
    /// Held for as long as the store runs: a second process on the directory is refused.
    _lock: File,
}

/// The database file inside a data directory.
pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("world.db")
}

/// Why the store could not open a data directory, export it or import into it. Each
/// says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the lock file {}: {source}", path.display())]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another worldbridge is already using the data directory {} (its lock file {} is held); stop it or use another --data-dir",
        dir.display(),
        path.display()
    )]
    Locked { dir: PathBuf, path: PathBuf },
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An SQLite call failed; `what` says which.
    #[error("{what} ({}): {source}", path.display())]
    Sql {
        what: &'static str,
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the database {} cannot use WAL mode (got {mode}); is the directory writable?", path.display())]
    NoWal { path: PathBuf, mode: String },
    #[error(
        "the database {} is corrupt ({check}); restore it from an export (worldbridge import) or move it away",
        path.display()
    )]
    Corrupt { path: PathBuf, check: String },
    #[error(
        "the database {} is corrupt or not an SQLite file ({source}); restore it from an export (worldbridge import) or move it away",
        path.display()
    )]
    NotSqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot use the database {}: {source}", path.display())]
    Unusable {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the database {} has schema version {found}, newer than this worldbridge ({SCHEMA_VERSION}); upgrade worldbridge",
        path.display()
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("migrating {} to version {to} failed: {source}", path.display())]
    Migrate {
        path: PathBuf,
        to: i64,
        source: rusqlite::Error,
    },
    #[error(
        "the data directory {} holds the world {found:?}, not {wanted:?}; use its own --data-dir for each world",
        dir.display()
    )]
    OtherWorld {
        dir: PathBuf,
        found: String,
        wanted: String,
    },
    #[error(
        "cannot write to the database {} ({source}); is the directory writable and the disk not full?",
        path.display()
    )]
    NotWritable {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot start the store thread: {0}")]
    Thread(std::io::Error),
    #[error("there is no world in {} (no {})", dir.display(), path.display())]
    NoDatabase { dir: PathBuf, path: PathBuf },
    #[error("the database {} holds no world yet", path.display())]
    NoWorld { path: PathBuf },
    #[error("the file is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("the file is not a worldbridge export (format is {format}, not {EXPORT_FORMAT:?})")]
    NotAnExport { format: String },
    #[error(
        "the export has version {version}, newer than this worldbridge reads ({EXPORT_VERSION}); upgrade worldbridge"
    )]
    NewerExport { version: u64 },
    #[error("the export has no numeric `version`")]
    NoVersion,
    #[error("bad export: {0}")]
    BadExport(serde_json::Error),
    #[error("bad export: unknown field `{0}`")]
    UnknownField(String),
    #[error("the data directory {} already holds the world {world:?}; add --force to replace it", dir.display())]
    NotEmpty { dir: PathBuf, world: String },
    #[error("importing into {} failed: {source}", path.display())]
    Import {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// Make the data directory (and its parents) if missing.
fn create_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Make the data directory if need be and take its lock (cluster mode: a node's data
/// directory holds only its lock, and the world key).
pub fn lock_data_dir(dir: &Path) -> Result<File, StoreError> {
    create_dir(dir)?;
    lock(dir)
}

/// Take the data directory's lock file, or say who has it.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("worldbridge.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::LockFile {
            path: path.clone(),
            source,
        })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            dir: dir.to_path_buf(),
            path,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Lock { path, source }),
    }
}

fn sql_err(what: &'static str, path: &Path) -> impl Fn(rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Sql {
        what,
        path: path.clone(),
        source,
    }
}

/// Open (creating if needed) the database in `dir`: pragmas, integrity, migrations.
fn open_db(dir: &Path) -> Result<Connection, StoreError> {
    let path = db_path(dir);
    let conn = Connection::open(&path).map_err(sql_err("cannot open the database", &path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql_err("database", &path))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| corrupt_or(e, &path))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal { path, mode });
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES};"
    ))
    .map_err(sql_err("database", &path))?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| corrupt_or(e, &path))?;
    if check != "ok" {
        return Err(StoreError::Corrupt { path, check });
    }
    migrate(&conn, &path)?;
    Ok(conn)
}

fn corrupt_or(source: rusqlite::Error, path: &Path) -> StoreError {
    let text = source.to_string();
    let path = path.to_path_buf();
    if text.contains("not a database") || text.contains("malformed") {
        StoreError::NotSqlite { path, source }
    } else {
        StoreError::Unusable { path, source }
    }
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql_err("database", path))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = i as i64 + 1;
        conn.execute_batch(&format!("BEGIN; {sql} PRAGMA user_version = {to}; COMMIT;"))
            .map_err(|source| {
                let _ = conn.execute_batch("ROLLBACK");
                StoreError::Migrate {
                    path: path.to_path_buf(),
                    to,
                    source,
                }
            })?;
        log::info!(
            "database {} migrated to schema version {to}",
            path.display()
        );
    }
    Ok(())
}

fn json<T: serde::de::DeserializeOwned>(body: &str, what: &str) -> rusqlite::Result<T> {
    serde_json::from_str(body).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("bad stored {what}: {e}").into(),
        )
    })
}

fn all<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    what: &str,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.map(|b| json(&b?, what)).collect()
}

/// Everything a data directory holds: the world, the gateway's resume history and the
/// federation's state. What a bridge loads at start and `worldbridge export` writes (one
/// flat document: the world's fields first, then these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// The gateway's last `gateway_seq` and its resume history.
    #[serde(default)]
    pub gateway_seq: u64,
    #[serde(default)]
    pub gateway: Vec<crate::feeds::gateway::StoredFrame>,
    /// The federation's event log (own and received events, by `(origin, seq)`).
    #[serde(default)]
    pub fed_events: Vec<crate::federation::wire::FedEvent>,
    /// Per origin, up to which seq federated events were pruned (`federation.events_keep`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fed_pruned: Vec<Pruned>,
    /// The trust winners.
    #[serde(default)]
    pub fed_trust: Vec<crate::federation::wire::TrustEntry>,
    /// Unsettled travels: leaving this world (origin side) and into it (destination
    /// side), by travel id.
    #[serde(default)]
    pub fed_departures: Vec<crate::federation::travel::Departure>,
    #[serde(default)]
    pub fed_arrivals: Vec<crate::federation::travel::Arrival>,
}

/// Everything stored, or `None` for an empty database.
fn load(conn: &Connection) -> rusqlite::Result<Option<Stored>> {
    let world: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'world'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let Some(world) = world else {
        return Ok(None);
    };
    let meta_u64 = |key: &str| -> rusqlite::Result<u64> {
        let v: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        Ok(v.and_then(|s| s.parse().ok()).unwrap_or(0))
    };
    let seq: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))
        .optional()?;
    Ok(Some(Stored {
        snapshot: Snapshot {
            world,
            seq: seq.and_then(|s| s.parse().ok()).unwrap_or(0),
            rooms: all(conn, "SELECT body FROM rooms ORDER BY name", "room")?,
            presence: all(
                conn,
                "SELECT body FROM presence ORDER BY user_id",
                "presence",
            )?,
            events: all(conn, "SELECT body FROM events ORDER BY seq", "event")?,
            sessions: all(
                conn,
                "SELECT body FROM sessions ORDER BY user_id",
                "session",
            )?,
        },
        gateway_seq: meta_u64("gateway_seq")?,
        gateway: all(
            conn,
            "SELECT body FROM gateway_history ORDER BY seq",
            "gateway frame",
        )?,
        fed_events: all(
            conn,
            "SELECT body FROM fed_events ORDER BY origin, seq",
            "federated event",
        )?,
        fed_pruned: {
            let mut stmt = conn.prepare("SELECT origin, upto FROM fed_pruned ORDER BY origin")?;
            let rows = stmt.query_map([], |r| {
                Ok(Pruned {
                    origin: r.get(0)?,
                    upto: r.get::<_, i64>(1)? as u64,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<Pruned>>>()?
        },
        fed_trust: all(
            conn,
            "SELECT body FROM fed_trust ORDER BY subject",
            "trust entry",
        )?,
        fed_departures: all(
            conn,
            "SELECT body FROM fed_departures ORDER BY travel_id",
            "travel departure",
        )?,
        fed_arrivals: all(
            conn,
            "SELECT body FROM fed_arrivals ORDER BY travel_id",
            "travel arrival",
        )?,
    }))
}

fn to_json(v: &impl Serialize) -> String {
    // Our own types always serialise.
    serde_json::to_string(v).unwrap_or_default()
}

/// Write rows in the open transaction; events past `keep.events_max` per room and
/// gateway frames past `keep.gateway_max` are pruned.
fn write_rows(tx: &rusqlite::Transaction, rows: &[Row], keep: Retention) -> rusqlite::Result<()> {
    // The highest gateway frame written: `gateway_seq` is set once per transaction.
    let mut gateway_seq: Option<u64> = None;
    let mut rooms_with_events = std::collections::BTreeSet::new();
    {
        let mut room =
            tx.prepare_cached("INSERT OR REPLACE INTO rooms (name, body) VALUES (?1, ?2)")?;
        let mut pres =
            tx.prepare_cached("INSERT OR REPLACE INTO presence (user_id, body) VALUES (?1, ?2)")?;
        let mut room_gone = tx.prepare_cached("DELETE FROM rooms WHERE name = ?1")?;
        let mut room_events_gone = tx.prepare_cached("DELETE FROM events WHERE room = ?1")?;
        let mut pres_gone = tx.prepare_cached("DELETE FROM presence WHERE user_id = ?1")?;
        let mut sess =
            tx.prepare_cached("INSERT OR REPLACE INTO sessions (user_id, body) VALUES (?1, ?2)")?;
        let mut sess_gone = tx.prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?;
        let mut event = tx.prepare_cached(
            "INSERT OR REPLACE INTO events (seq, room, body) VALUES (?1, ?2, ?3)",
        )?;
        let mut meta =
            tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('seq', ?1)")?;
        let mut gw = tx
            .prepare_cached("INSERT OR REPLACE INTO gateway_history (seq, body) VALUES (?1, ?2)")?;
        let mut gw_seq = tx.prepare_cached(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('gateway_seq', ?1)",
        )?;
        let mut fed_event = tx.prepare_cached(
            "INSERT OR IGNORE INTO fed_events (origin, seq, body) VALUES (?1, ?2, ?3)",
        )?;
        let mut fed_drop =
            tx.prepare_cached("DELETE FROM fed_events WHERE origin = ?1 AND seq <= ?2")?;
        let mut fed_mark =
            tx.prepare_cached("INSERT OR REPLACE INTO fed_pruned (origin, upto) VALUES (?1, ?2)")?;
        let mut fed_trust =
            tx.prepare_cached("INSERT OR REPLACE INTO fed_trust (subject, body) VALUES (?1, ?2)")?;
        let mut dep = tx.prepare_cached(
            "INSERT OR REPLACE INTO fed_departures (travel_id, body) VALUES (?1, ?2)",
        )?;
        let mut dep_gone = tx.prepare_cached("DELETE FROM fed_departures WHERE travel_id = ?1")?;
        let mut arr = tx.prepare_cached(
            "INSERT OR REPLACE INTO fed_arrivals (travel_id, body) VALUES (?1, ?2)",
        )?;
        let mut arr_gone = tx.prepare_cached("DELETE FROM fed_arrivals WHERE travel_id = ?1")?;
        for row in rows {
            match row {
                Row::Room(r) => {
                    room.execute(params![r.spec.name, to_json(r)])?;
                }
                Row::RoomGone(name) => {
                    room_gone.execute(params![name])?;
                    room_events_gone.execute(params![name])?;
                }
                Row::Presence(o) => {
                    pres.execute(params![o.user_id, to_json(o)])?;
                }
                Row::PresenceGone(u) => {
                    pres_gone.execute(params![u])?;
                }
                Row::Session(s) => {
                    sess.execute(params![s.user_id, to_json(s)])?;
                }
                Row::SessionGone(u) => {
                    sess_gone.execute(params![u])?;
                }
                Row::Event(e) => {
                    event.execute(params![e.seq as i64, e.room, to_json(e)])?;
                    rooms_with_events.insert(e.room.clone());
                }
                Row::Seq(s) => {
                    meta.execute(params![s.to_string()])?;
                }
                Row::Gateway(f) => {
                    gw.execute(params![f.seq as i64, to_json(f)])?;
                    gateway_seq = gateway_seq.max(Some(f.seq));
                }
                Row::FedEvent(e) => {
                    fed_event.execute(params![e.origin, e.seq as i64, to_json(e)])?;
                }
                Row::FedPruned(p) => {
                    fed_drop.execute(params![p.origin, p.upto as i64])?;
                    fed_mark.execute(params![p.origin, p.upto as i64])?;
                }
                Row::FedTrust(t) => {
                    fed_trust.execute(params![t.subject, to_json(t)])?;
                }
                Row::FedDeparture(d) => {
                    dep.execute(params![d.offer.travel_id, to_json(d)])?;
                }
                Row::FedDepartureGone(id) => {
                    dep_gone.execute(params![id])?;
                }
                Row::FedArrival(a) => {
                    arr.execute(params![a.travel_id, to_json(a)])?;
                }
                Row::FedArrivalGone(id) => {
                    arr_gone.execute(params![id])?;
                }
            }
        }
        if let Some(seq) = gateway_seq {
            gw_seq.execute(params![seq.to_string()])?;
        }
    }
    if gateway_seq.is_some() {
        tx.execute(
            "DELETE FROM gateway_history WHERE seq <= (SELECT MAX(seq) FROM gateway_history) - ?1",
            params![keep.gateway_max as i64],
        )?;
    }
    let mut prune = tx.prepare_cached(
        "DELETE FROM events WHERE room = ?1 AND seq < (SELECT MIN(seq) FROM (SELECT seq FROM events WHERE room = ?1 ORDER BY seq DESC LIMIT ?2))",
    )?;
    for r in rooms_with_events {
        prune.execute(params![r, keep.events_max.max(1) as i64])?;
    }
    Ok(())
}

fn put_meta(conn: &Connection, world: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('world', ?1)",
        params![world],
    )?;
    Ok(())
}

impl Store {
    /// Open the data directory: take its lock, open and migrate the database, load what it
    /// holds, and start the store thread. `wake` is called after each report.
    pub fn open(
        dir: &Path,
        world: &str,
        keep: Retention,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<(Store, Option<Stored>), StoreError> {
        create_dir(dir)?;
        let lock = lock(dir)?;
        let mut conn = open_db(dir)?;
        let path = db_path(dir);
        let snap = load(&conn).map_err(sql_err("cannot read the stored world", &path))?;
        match &snap {
            Some(s) if s.snapshot.world != world => {
                return Err(StoreError::OtherWorld {
                    dir: dir.to_path_buf(),
                    found: s.snapshot.world.clone(),
                    wanted: world.to_string(),
                })
            }
            Some(_) => {}
            None => put_meta(&conn, world).map_err(|source| StoreError::NotWritable {
                path: path.clone(),
                source,
            })?,
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
        let (etx, events) = crossbeam_channel::unbounded();
        let stats = Arc::new(StoreStats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || writer(&mut conn, &rx, &etx, &st, keep, &*wake))
            .map_err(StoreError::Thread)?;
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let cp_path = path.clone();
        let checkpoints = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpointer(cp_path, stop_rx))
            .ok()
            .map(|t| (stop_tx, t));
        log::info!("store: {} (WAL, synchronous=FULL)", path.display());
        Ok((
            Store {
                tx,
                events,
                stats,
                thread: Some(thread),
                checkpoints,
                path,
                _lock: lock,
            },
            snap,
        ))
    }

    /// The store's part of `GET /metrics`.
    pub fn render_metrics(&self, waiting: usize, o: &mut String) {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        let st = &self.stats;
        for (name, help, v) in [
            (
                "worldbridge_store_batches_total",
                "Batches of changes sent to the store (one per loop iteration with changes).",
                st.batches.load(Relaxed),
            ),
            (
                "worldbridge_store_rows_total",
                "Rows written.",
                st.rows.load(Relaxed),
            ),
            (
                "worldbridge_store_transactions_total",
                "Transactions committed (group commit: several batches each).",
                st.transactions.load(Relaxed),
            ),
            (
                "worldbridge_store_failures_total",
                "Commits that failed.",
                st.failures.load(Relaxed),
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let _ = writeln!(o, "# HELP worldbridge_store_waiting_answers Answers waiting for their change to be durable.\n# TYPE worldbridge_store_waiting_answers gauge\nworldbridge_store_waiting_answers {waiting}");
    }

    /// Hand a batch to the store thread.
    pub fn send(&self, batch: Batch) {
        // The thread only ends after `close`; a send error means it died, and the
        // missing Durable report makes the waiting answers time out as 503s.
        let _ = self.tx.send(Msg::Batch(batch));
    }

    /// Commit what was sent and stop the thread.
    pub fn close(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some((stop, t)) = self.checkpoints.take() {
            let _ = stop.send(());
            let _ = t.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// The store thread: group commit until told to stop.
fn writer(
    conn: &mut Connection,
    rx: &Receiver<Msg>,
    events: &Sender<StoreEvent>,
    stats: &StoreStats,
    keep: Retention,
    wake: &(dyn Fn() + Send + Sync),
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut retry: Vec<Row> = Vec::new();
    let mut stopping = false;
    while !stopping {
        let first = match rx.recv() {
            Ok(Msg::Batch(b)) => b,
            Ok(Msg::Stop) | Err(_) => break,
        };
        // Everything that arrived while the last commit ran goes into this one.
        let mut ids = vec![first.id];
        let mut rows = std::mem::take(&mut retry);
        rows.extend(first.rows);
        loop {
            match rx.try_recv() {
                Ok(Msg::Batch(b)) => {
                    ids.push(b.id);
                    rows.extend(b.rows);
                }
                Ok(Msg::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let t0 = std::time::Instant::now();
        let result = conn.transaction().and_then(|tx| {
            write_rows(&tx, &rows, keep)?;
            let t1 = std::time::Instant::now();
            stats
                .write_us
                .fetch_add((t1 - t0).as_micros() as u64, Relaxed);
            let r = tx.commit();
            stats
                .commit_us
                .fetch_add(t1.elapsed().as_micros() as u64, Relaxed);
            r
        });
        stats.batches.fetch_add(ids.len() as u64, Relaxed);
        match result {
            Ok(()) => {
                stats.transactions.fetch_add(1, Relaxed);
                stats.rows.fetch_add(rows.len() as u64, Relaxed);
                let upto = ids.iter().copied().max().unwrap_or(0);
                let _ = events.send(StoreEvent::Durable { upto });
            }
            Err(e) => {
                stats.failures.fetch_add(1, Relaxed);
                log::error!(
                    "store: commit of {} rows failed: {e}; they are retried with the next write",
                    rows.len()
                );
                retry = rows;
                let _ = events.send(StoreEvent::Failed {
                    ids,
                    error: e.to_string(),
                });
            }
        }
        wake();
    }
    if !retry.is_empty() {
        log::error!(
            "store: {} rows could not be written before stopping",
            retry.len()
        );
    }
}

/// The top-level fields of an export document. serde cannot refuse unknown fields through
/// the two flattened layers ([`Stored`], [`Snapshot`]), so `import` checks against this
/// list (a test keeps it equal to what `export` writes).
const EXPORT_FIELDS: [&str; 16] = [
    "format",
    "version",
    "bridge_version",
    "world",
    "seq",
    "rooms",
    "presence",
    "events",
    "sessions",
    "gateway_seq",
    "gateway",
    "fed_events",
    "fed_pruned",
    "fed_trust",
    "fed_departures",
    "fed_arrivals",
];

/// The document of `worldbridge export`: the whole state of one world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Export {
    pub format: String,
    pub version: u64,
    pub bridge_version: String,
    #[serde(flatten)]
    pub state: Stored,
}

/// Read a data directory's state without taking its lock (a running bridge may hold
/// it; SQLite's WAL lets a reader in).
pub fn export(dir: &Path) -> Result<Export, StoreError> {
    let path = db_path(dir);
    if !path.exists() {
        return Err(StoreError::NoDatabase {
            dir: dir.to_path_buf(),
            path,
        });
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql_err("cannot open the database", &path))?;
    let snap = load(&conn)
        .map_err(|e| corrupt_or(e, &path))?
        .ok_or_else(|| StoreError::NoWorld { path: path.clone() })?;
    Ok(Export {
        format: EXPORT_FORMAT.into(),
        version: EXPORT_VERSION,
        bridge_version: env!("CARGO_PKG_VERSION").into(),
        state: snap,
    })
}

/// Read an export document: its format, a version this build reads, and no field it
/// does not know.
pub fn read_export(text: &str) -> Result<Export, StoreError> {
    let head: serde_json::Value = serde_json::from_str(text).map_err(StoreError::NotJson)?;
    if head["format"] != EXPORT_FORMAT {
        return Err(StoreError::NotAnExport {
            format: head["format"].to_string(),
        });
    }
    match head["version"].as_u64() {
        Some(v) if v <= EXPORT_VERSION => {}
        Some(version) => return Err(StoreError::NewerExport { version }),
        None => return Err(StoreError::NoVersion),
    }
    if let Some(unknown) = head
        .as_object()
        .and_then(|o| o.keys().find(|k| !EXPORT_FIELDS.contains(&k.as_str())))
    {
        return Err(StoreError::UnknownField(unknown.clone()));
    }
    serde_json::from_value(head).map_err(StoreError::BadExport)
}

/// Load an export document into a data directory (refusing a newer major version, and a
/// directory that already holds a world unless `force`).
pub fn import(dir: &Path, text: &str, force: bool) -> Result<Stored, StoreError> {
    let doc = read_export(text)?;
    create_dir(dir)?;
    let _lock = lock(dir)?;
    let mut conn = open_db(dir)?;
    let path = db_path(dir);
    if let Some(existing) = load(&conn).map_err(sql_err("cannot read the stored world", &path))? {
        let empty = existing.snapshot.rooms.is_empty()
            && existing.snapshot.events.is_empty()
            && existing.snapshot.sessions.is_empty()
            && existing.snapshot.presence.is_empty()
            && existing.fed_events.is_empty()
            && existing.fed_pruned.is_empty()
            && existing.fed_departures.is_empty()
            && existing.fed_arrivals.is_empty();
        if !empty && !force {
            return Err(StoreError::NotEmpty {
                dir: dir.to_path_buf(),
                world: existing.snapshot.world,
            });
        }
    }
    let s = &doc.state;
    let tx = conn.transaction().map_err(sql_err("database", &path))?;
    let result = (|| {
        tx.execute_batch("DELETE FROM rooms; DELETE FROM presence; DELETE FROM sessions; DELETE FROM events; DELETE FROM gateway_history; DELETE FROM fed_events; DELETE FROM fed_pruned; DELETE FROM fed_trust; DELETE FROM fed_departures; DELETE FROM fed_arrivals; DELETE FROM meta;")?;
        put_meta(&tx, &s.snapshot.world)?;
        let mut rows: Vec<Row> = Vec::new();
        rows.extend(s.snapshot.rooms.iter().cloned().map(Row::Room));
        rows.extend(s.snapshot.presence.iter().cloned().map(Row::Presence));
        rows.extend(s.snapshot.sessions.iter().cloned().map(Row::Session));
        rows.extend(s.snapshot.events.iter().cloned().map(Row::Event));
        rows.extend(s.gateway.iter().cloned().map(Row::Gateway));
        rows.extend(s.fed_pruned.iter().cloned().map(Row::FedPruned));
        rows.extend(s.fed_events.iter().cloned().map(Row::FedEvent));
        rows.extend(s.fed_trust.iter().cloned().map(Row::FedTrust));
        rows.extend(s.fed_departures.iter().cloned().map(Row::FedDeparture));
        rows.extend(s.fed_arrivals.iter().cloned().map(Row::FedArrival));
        rows.push(Row::Seq(s.snapshot.seq));
        // Keep exactly what the document holds: its windows were bounded already.
        let keep = Retention {
            events_max: s.snapshot.events.len().max(1),
            gateway_max: s.gateway.len().max(1),
        };
        write_rows(&tx, &rows, keep)?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('gateway_seq', ?1)",
            params![s.gateway_seq.to_string()],
        )?;
        tx.commit()
    })();
    result.map_err(|source| StoreError::Import { path, source })?;
    Ok(doc.state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wb-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    const KEEP: Retention = Retention {
        events_max: 50,
        gateway_max: 100,
    };

    /// Block until the store reports batch `upto` durable.
    fn wait_durable(store: &Store, upto: u64) {
        let mut done = 0;
        while done < upto {
            match store
                .events
                .recv_timeout(std::time::Duration::from_secs(5))
                .unwrap()
            {
                StoreEvent::Durable { upto: u } => done = u,
                other => panic!("{other:?}"),
            }
        }
    }

    fn no_wake() -> Arc<dyn Fn() + Send + Sync> {
        Arc::new(|| {})
    }

    #[test]
    fn a_second_process_on_the_directory_is_refused() {
        let dir = temp_dir("lock");
        let (_a, snap) = Store::open(&dir, "w", KEEP, no_wake()).expect("first");
        assert!(snap.is_none(), "a new directory holds no world");
        let err = Store::open(&dir, "w", KEEP, no_wake())
            .err()
            .expect("second refused");
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        assert!(
            err.to_string().contains("already using the data directory"),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_database_and_a_newer_schema_are_clear_errors() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(db_path(&dir), vec![0x42u8; 8192]).unwrap();
        let err = Store::open(&dir, "w", KEEP, no_wake())
            .err()
            .expect("refused");
        assert!(matches!(err, StoreError::NotSqlite { .. }), "{err:?}");
        assert!(err.to_string().contains("corrupt"), "{err}");

        let dir = temp_dir("newer");
        std::fs::create_dir_all(&dir).unwrap();
        let c = Connection::open(db_path(&dir)).unwrap();
        c.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(c);
        let err = Store::open(&dir, "w", KEEP, no_wake())
            .err()
            .expect("refused");
        assert!(
            matches!(err, StoreError::NewerSchema { found: 99, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("newer than this worldbridge"),
            "{err}"
        );
    }

    #[test]
    fn another_worlds_directory_is_refused() {
        let dir = temp_dir("world");
        drop(Store::open(&dir, "mac", KEEP, no_wake()).unwrap());
        let err = Store::open(&dir, "vps", KEEP, no_wake())
            .err()
            .expect("refused");
        assert!(
            matches!(&err, StoreError::OtherWorld { found, .. } if found == "mac"),
            "{err:?}"
        );
        assert!(err.to_string().contains("holds the world \"mac\""), "{err}");
    }

    #[test]
    fn batches_commit_together_and_events_are_pruned() {
        let dir = temp_dir("group");
        let (mut store, _) = Store::open(
            &dir,
            "w",
            Retention {
                events_max: 3,
                gateway_max: 2,
            },
            no_wake(),
        )
        .unwrap();
        let ev = |seq: u64| Event {
            kind: crate::world::room::EventKind::Say,
            event: "message".into(),
            user_id: "a".into(),
            username: "A".into(),
            room: "R".into(),
            message: Some(format!("m{seq}")),
            timestamp: crate::world::time::rfc3339(seq),
            seq,
            origin: "w".into(),
            ts_ms: seq,
        };
        for id in 1..=10 {
            store.send(Batch {
                id,
                rows: vec![Row::Event(ev(id)), Row::Seq(id)],
            });
        }
        let mut upto = 0;
        while upto < 10 {
            match store
                .events
                .recv_timeout(std::time::Duration::from_secs(5))
                .unwrap()
            {
                StoreEvent::Durable { upto: u } => {
                    assert!(u > upto, "reports move forward");
                    upto = u;
                }
                other => panic!("{other:?}"),
            }
        }
        let tx = store.stats.transactions.load(Relaxed);
        assert!((1..=10).contains(&tx));
        store.close();
        let doc = export(&dir).unwrap();
        assert_eq!(doc.state.snapshot.seq, 10);
        let kept: Vec<u64> = doc.state.snapshot.events.iter().map(|e| e.seq).collect();
        assert_eq!(kept, [8, 9, 10], "rooms.events_max bounds the file");
    }

    #[test]
    fn the_export_fields_are_what_export_writes_and_others_are_refused() {
        let doc = Export {
            format: EXPORT_FORMAT.into(),
            version: EXPORT_VERSION,
            bridge_version: "0".into(),
            state: Stored {
                snapshot: Snapshot {
                    world: "w".into(),
                    seq: 0,
                    rooms: vec![],
                    presence: vec![],
                    events: vec![],
                    sessions: vec![],
                },
                gateway_seq: 0,
                gateway: vec![],
                fed_events: vec![],
                fed_pruned: vec![Pruned {
                    origin: "mac".into(),
                    upto: 3,
                }],
                fed_trust: vec![],
                fed_departures: vec![],
                fed_arrivals: vec![],
            },
        };
        let v = serde_json::to_value(&doc).unwrap();
        let written: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            written, EXPORT_FIELDS,
            "the list follows the document, in order"
        );
        let mut extra = v.clone();
        extra["colour"] = serde_json::json!("blue");
        let err = import(&temp_dir("unknown-field"), &extra.to_string(), false).unwrap_err();
        assert!(
            matches!(&err, StoreError::UnknownField(k) if k == "colour"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "bad export: unknown field `colour`");
        let back = import(&temp_dir("known-fields"), &v.to_string(), false).unwrap();
        assert_eq!(back, doc.state, "an export reads back whole");
    }

    #[test]
    fn federated_events_and_trust_are_stored_once_and_travel_in_exports() {
        use crate::federation::wire::{FedEvent, Kind, TrustEntry};
        let dir = temp_dir("fed");
        let (mut store, _) = Store::open(&dir, "mac", KEEP, no_wake()).unwrap();
        let ev = FedEvent {
            origin: "vps".into(),
            seq: 7,
            kind: Kind::Say,
            room: Some("The Bridge".into()),
            user_id: Some("bob".into()),
            username: Some("Bob".into()),
            message: Some("hi mac".into()),
            event: None,
            timestamp: crate::world::time::rfc3339(1),
            data: None,
            sig: None,
        };
        let trust = TrustEntry {
            subject: "bob@vps".into(),
            score: 0.5,
            updated_at: 1,
            origin: "vps".into(),
            seq: 8,
            timestamp: None,
            sig: None,
        };
        for id in 1..=2 {
            store.send(Batch {
                id,
                rows: vec![Row::FedEvent(ev.clone()), Row::FedTrust(trust.clone())],
            });
        }
        wait_durable(&store, 2);
        store.close();
        drop(store);
        let doc = export(&dir).unwrap();
        assert_eq!(
            doc.state.fed_events,
            vec![ev.clone()],
            "written twice, kept once"
        );
        assert_eq!(doc.state.fed_trust, vec![trust.clone()]);
        let text = serde_json::to_string(&doc).unwrap();
        let other = temp_dir("fed-import");
        let back = import(&other, &text, false).unwrap();
        assert_eq!(back.fed_events, vec![ev]);
        assert_eq!(export(&other).unwrap().state.fed_trust, vec![trust]);
    }

    #[test]
    fn pruned_federated_events_leave_the_file_and_the_mark_stays() {
        use crate::federation::merge::tests::ev;
        let dir = temp_dir("fed-pruned");
        let (mut store, _) = Store::open(&dir, "mac", KEEP, no_wake()).unwrap();
        let mut rows: Vec<Row> = (1..=10).map(|s| Row::FedEvent(ev("vps", s))).collect();
        rows.extend((1..=4).map(|s| Row::FedEvent(ev("mac", s))));
        rows.push(Row::FedPruned(Pruned {
            origin: "vps".into(),
            upto: 7,
        }));
        store.send(Batch { id: 1, rows });
        // A later mark (a peer pruned further) moves on.
        store.send(Batch {
            id: 2,
            rows: vec![Row::FedPruned(Pruned {
                origin: "vps".into(),
                upto: 8,
            })],
        });
        wait_durable(&store, 2);
        store.close();
        drop(store);
        let doc = export(&dir).unwrap();
        let kept: Vec<(String, u64)> = doc
            .state
            .fed_events
            .iter()
            .map(|e| (e.origin.clone(), e.seq))
            .collect();
        let want: Vec<(String, u64)> = [("mac", 1), ("mac", 2), ("mac", 3), ("mac", 4)]
            .into_iter()
            .chain([("vps", 9), ("vps", 10)])
            .map(|(o, s)| (o.to_string(), s))
            .collect();
        assert_eq!(kept, want);
        let mark = vec![Pruned {
            origin: "vps".into(),
            upto: 8,
        }];
        assert_eq!(doc.state.fed_pruned, mark);
        // The marks travel in exports.
        let other = temp_dir("fed-pruned-import");
        let back = import(&other, &serde_json::to_string(&doc).unwrap(), false).unwrap();
        assert_eq!(back.fed_pruned, mark);
        assert_eq!(back.fed_events.len(), 6);
    }

    #[test]
    fn travel_rows_are_kept_by_travel_id_forgotten_and_travel_in_exports() {
        use crate::federation::travel::{Arrival, Departure, Leg, Stay};
        use crate::federation::wire::Offer;
        let dir = temp_dir("travel");
        let (mut store, _) = Store::open(&dir, "mac", KEEP, no_wake()).unwrap();
        let offer = |id: &str| Offer {
            travel_id: id.into(),
            from: "mac".into(),
            to: "vps".into(),
            user_id: "timmy".into(),
            username: "Timmy".into(),
            room: Some("The Bridge".into()),
            history: Vec::new(),
            trust: Vec::new(),
            sig: None,
        };
        let pending = Departure {
            offer: offer("mac-1-1"),
            leg: Leg::Pending { deadline_ms: 10 },
        };
        let departed = Departure {
            offer: offer("mac-1-1"),
            leg: Leg::Departed,
        };
        let gone = Departure {
            offer: offer("mac-1-2"),
            leg: Leg::Departed,
        };
        let arrival = Arrival {
            travel_id: "vps-2-1".into(),
            from: "vps".into(),
            at_ms: 2,
            stay: Stay::CalledOff,
        };
        let batches = [
            vec![
                Row::FedDeparture(pending),
                Row::FedDeparture(gone),
                Row::FedArrival(arrival.clone()),
            ],
            vec![
                Row::FedDeparture(departed.clone()),
                Row::FedDepartureGone("mac-1-2".into()),
            ],
        ];
        for (i, rows) in batches.into_iter().enumerate() {
            store.send(Batch {
                id: i as u64 + 1,
                rows,
            });
        }
        wait_durable(&store, 2);
        store.close();
        drop(store);
        let doc = export(&dir).unwrap();
        assert_eq!(
            doc.state.fed_departures,
            vec![departed.clone()],
            "the last write wins"
        );
        assert_eq!(doc.state.fed_arrivals, vec![arrival.clone()]);
        let text = serde_json::to_string(&doc).unwrap();
        let other = temp_dir("travel-import");
        let back = import(&other, &text, false).unwrap();
        assert_eq!(back.fed_departures, vec![departed]);
        assert_eq!(back.fed_arrivals, vec![arrival]);
    }
}
