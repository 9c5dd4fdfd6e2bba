//! Federation's state in the world's Redis (cluster mode).
//!
//! One node of a world runs federation at a time: the one holding the lease
//! `fed:leader` (taken and renewed with the node's liveness beat, [`LEADER`]). What a
//! single process writes to its SQLite `fed_*` tables, that node writes here, inside the
//! same script call as its appends ([`FedOp`]s; the append script refuses the whole call
//! with `NOTLEADER` when the lease is no longer this node's, so a node that lost it can
//! never write over its successor's state). The keys, under `wb:{<world>}:fed:`:
//!
//! - `leader`: the node id running federation (expires after `cluster.node_ttl_s`
//!   unrenewed);
//! - `ev:<origin>`: a sorted set of that origin's federated events (score: their seq,
//!   member: the event's JSON), `origins` the set of origins held;
//! - `pruned`: origin → the seq up to which old events are no longer kept;
//! - `trust`: subject → the trust entry in force; `dep` and `arr`: travel id → a
//!   departure's or an arrival's row;
//! - `at`: the log entry up to which the world's own events have been federated (a new
//!   leader federates those after it from the log).
//!
//! A node that takes the lease reads all of it ([`read_state`]) before it runs anything.

use super::Keys;
use redis::Connection;

/// Takes or renews the federation lease. KEYS: the lease. ARGV: this node, the lease in
/// ms. Returns {2, node} when just taken, {1, node} when renewed, {0, holder} when
/// another node holds it.
pub const LEADER: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, holder}
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, ARGV[1]}
end
return {0, holder}
";

/// The part of a script that writes federation's rows: `p` is the keys' prefix
/// `wb:{<world>}:fed:`, the ops are ARGV[first .. last] in fours.
pub const APPLY_OPS: &str = r"
for i = first, last, 4 do
  local op, k, n, j = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if op == 'ev' then
    redis.call('ZREMRANGEBYSCORE', p .. 'ev:' .. k, n, n)
    redis.call('ZADD', p .. 'ev:' .. k, n, j)
    redis.call('SADD', p .. 'origins', k)
  elseif op == 'pr' then
    redis.call('ZREMRANGEBYSCORE', p .. 'ev:' .. k, '-inf', n)
    redis.call('HSET', p .. 'pruned', k, n)
    redis.call('SADD', p .. 'origins', k)
  elseif op == 'tr' then
    redis.call('HSET', p .. 'trust', k, j)
  elseif op == 'dp' then
    redis.call('HSET', p .. 'dep', k, j)
  elseif op == 'dg' then
    redis.call('HDEL', p .. 'dep', k)
  elseif op == 'ar' then
    redis.call('HSET', p .. 'arr', k, j)
  elseif op == 'ag' then
    redis.call('HDEL', p .. 'arr', k)
  elseif op == 'at' then
    redis.call('SET', p .. 'at', n)
  end
end
";

/// One write of federation's state, made with an append: `op` names it (`ev` an
/// event, `pr` a pruned mark, `tr` a trust entry, `dp`/`dg` a departure written or
/// gone, `ar`/`ag` an arrival, `at` the log position federated through); `key` is the
/// origin, subject or travel id, `num` the seq, `json` the row.
#[derive(Debug, Clone, PartialEq)]
pub struct FedOp {
    pub op: &'static str,
    pub key: String,
    pub num: u64,
    pub json: String,
}

impl FedOp {
    pub fn new(op: &'static str, key: &str, num: u64, json: String) -> FedOp {
        FedOp {
            op,
            key: key.to_string(),
            num,
            json,
        }
    }
}

/// Federation's stored state, as a node that takes the lease reads it (rows as JSON).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FedState {
    /// The log entry up to which the world's own events were federated.
    pub at: u64,
    pub events: Vec<String>,
    pub pruned: Vec<(String, u64)>,
    pub trust: Vec<String>,
    pub departures: Vec<String>,
    pub arrivals: Vec<String>,
}

/// Writes federation's rows (`worldbridge import`, with every node stopped: no lease).
/// KEYS: the lease key (for the prefix). ARGV: the ops, four each.
pub fn import_script() -> redis::Script {
    redis::Script::new(&format!(
        "local p = string.sub(KEYS[1], 1, -7)\nlocal first, last = 1, #ARGV\n{APPLY_OPS}"
    ))
}

/// Read federation's whole stored state.
pub fn read_state(con: &mut Connection, keys: &Keys) -> redis::RedisResult<FedState> {
    let origins: Vec<String> = redis::cmd("SMEMBERS").arg(keys.fed("origins")).query(con)?;
    let mut p = redis::pipe();
    for o in &origins {
        p.cmd("ZRANGE")
            .arg(keys.fed(&format!("ev:{o}")))
            .arg(0)
            .arg(-1);
    }
    let per_origin: Vec<Vec<String>> = match origins.is_empty() {
        true => Vec::new(),
        false => p.query(con)?,
    };
    /// `pruned`, `trust`, `dep`, `arr` and `at`, as the pipeline answers them.
    type Rest = (
        Vec<(String, u64)>,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        Option<u64>,
    );
    let (pruned, trust, departures, arrivals, at): Rest = redis::pipe()
        .cmd("HGETALL")
        .arg(keys.fed("pruned"))
        .cmd("HVALS")
        .arg(keys.fed("trust"))
        .cmd("HVALS")
        .arg(keys.fed("dep"))
        .cmd("HVALS")
        .arg(keys.fed("arr"))
        .cmd("GET")
        .arg(keys.fed("at"))
        .query(con)?;
    Ok(FedState {
        at: at.unwrap_or(0),
        events: per_origin.into_iter().flatten().collect(),
        pruned,
        trust,
        departures,
        arrivals,
    })
}
