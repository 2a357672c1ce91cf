//! Who is alive and who holds which name, in Redis, as pure code: the commands, and
//! what their replies mean. The shell (`server/cluster.rs`) sends them.
//!
//! - **Heartbeat.** Each node keeps `pollcast:node:ID` alive with `SET ... PX ttl`,
//!   refreshed every ttl/3 (`--node-ttl`). A node killed with -9 stops refreshing, and
//!   within one ttl the key expires: the node is dead to the cluster.
//! - **Names.** `pollcast:name:NAME` holds the id of the node whose user has the name.
//!   A claim (one script, atomic) takes the name when it is free, already this node's,
//!   or held by a node whose heartbeat has expired; otherwise it fails and the chat
//!   renames the local user. A release deletes the key only if this node holds it. So a
//!   dead node's names are free again within one ttl, with no cleanup step.
//!
//! - **Members.** `pollcast:members:ROOM` is a hash whose fields are `NODE\tNAME`: who
//!   is in the room through which node. `pollcast:rooms` lists rooms that may have
//!   members, `pollcast:node-rooms:NODE` the rooms a node wrote to (so it can clear its
//!   own fields when it reconnects, then write them again). `who` and `rooms` are
//!   scripts that count only fields of nodes whose heartbeat is alive, and delete the
//!   others as they go: a dead node's members disappear within one ttl, with no cleanup
//!   step. They read every member of a room (`who`) or of every room (`rooms`): fine for
//!   thousands, not for millions (`docs/scaling.md`).
//!
//! These scripts read keys they are not passed in KEYS (heartbeats, members of rooms):
//! right for one Redis; Redis Cluster would need them in one hash slot.

use super::resp::{bytes, Reply};

/// Free, ours, or held by a dead node: take it (1). Else 0.
const CLAIM_SCRIPT: &str = r#"
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', 'pollcast:node:' .. owner) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#;

/// Deletes the name only if this node holds it.
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// Adds (`1`) or removes (`0`) `NODE\tNAME` in a room's members.
const MEMBER_SCRIPT: &str = r#"
local field = ARGV[1] .. '\t' .. ARGV[2]
if ARGV[3] == '1' then
  redis.call('HSET', 'pollcast:members:' .. ARGV[4], field, '1')
  redis.call('SADD', 'pollcast:node-rooms:' .. ARGV[1], ARGV[4])
  redis.call('SADD', 'pollcast:rooms', ARGV[4])
else
  redis.call('HDEL', 'pollcast:members:' .. ARGV[4], field)
end
return 1
"#;

/// Clears every member field this node wrote (it writes them again after).
const RESET_SCRIPT: &str = r#"
local prefix = ARGV[1] .. '\t'
for _, room in ipairs(redis.call('SMEMBERS', 'pollcast:node-rooms:' .. ARGV[1])) do
  local key = 'pollcast:members:' .. room
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if string.sub(field, 1, #prefix) == prefix then redis.call('HDEL', key, field) end
  end
end
redis.call('DEL', 'pollcast:node-rooms:' .. ARGV[1])
return 1
"#;

/// The names in a room through live nodes (fields of dead ones are deleted).
const WHO_SCRIPT: &str = r#"
local key = 'pollcast:members:' .. ARGV[1]
local names, alive = {}, {}
for _, field in ipairs(redis.call('HKEYS', key)) do
  local tab = string.find(field, '\t', 1, true)
  if tab then
    local node = string.sub(field, 1, tab - 1)
    if alive[node] == nil then alive[node] = redis.call('EXISTS', 'pollcast:node:' .. node) == 1 end
    if alive[node] then table.insert(names, string.sub(field, tab + 1)) else redis.call('HDEL', key, field) end
  end
end
return names
"#;

/// Every room with members through live nodes, and how many names: `[room, n, ...]`.
const ROOMS_SCRIPT: &str = r#"
local out, alive = {}, {}
for _, room in ipairs(redis.call('SMEMBERS', 'pollcast:rooms')) do
  local key = 'pollcast:members:' .. room
  local seen, count = {}, 0
  for _, field in ipairs(redis.call('HKEYS', key)) do
    local tab = string.find(field, '\t', 1, true)
    if tab then
      local node = string.sub(field, 1, tab - 1)
      if alive[node] == nil then alive[node] = redis.call('EXISTS', 'pollcast:node:' .. node) == 1 end
      local name = string.sub(field, tab + 1)
      if not alive[node] then redis.call('HDEL', key, field)
      elseif not seen[name] then seen[name] = true; count = count + 1 end
    end
  end
  if count > 0 then table.insert(out, room); table.insert(out, count)
  else redis.call('SREM', 'pollcast:rooms', room) end
end
return out
"#;

/// `name` is (`on`) or is no longer in `room` through `node`.
pub fn member(room: &str, name: &str, node: &str, on: bool) -> Vec<String> {
    let on = if on { "1" } else { "0" };
    vec!["EVAL".into(), MEMBER_SCRIPT.into(), "0".into(), node.into(), name.into(), on.into(), room.into()]
}

/// Clears what `node` wrote of the members (before writing it again).
pub fn reset(node: &str) -> Vec<String> {
    vec!["EVAL".into(), RESET_SCRIPT.into(), "0".into(), node.into()]
}

/// The cluster's members of `room`.
pub fn who(room: &str) -> Vec<String> {
    vec!["EVAL".into(), WHO_SCRIPT.into(), "0".into(), room.into()]
}

/// The cluster's rooms and their member counts.
pub fn rooms() -> Vec<String> {
    vec!["EVAL".into(), ROOMS_SCRIPT.into(), "0".into()]
}

/// The who script's answer: names.
pub fn names(reply: &Reply) -> Option<Vec<String>> {
    let Reply::Array(parts) = reply else { return None };
    parts.iter().map(|part| bytes(part).map(|b| String::from_utf8_lossy(b).into_owned())).collect()
}

/// The rooms script's answer: rooms and counts.
pub fn room_counts(reply: &Reply) -> Option<Vec<(String, usize)>> {
    let Reply::Array(parts) = reply else { return None };
    parts
        .chunks(2)
        .map(|pair| match pair {
            [room, Reply::Integer(n)] => Some((String::from_utf8_lossy(bytes(room)?).into_owned(), *n as usize)),
            _ => None,
        })
        .collect()
}

/// A node's heartbeat key.
pub fn node_key(node: &str) -> String {
    format!("pollcast:node:{node}")
}

/// A name's owner key.
pub fn name_key(name: &str) -> String {
    format!("pollcast:name:{name}")
}

/// `SET pollcast:node:ID NOW_MS PX TTL`: this node is alive for one more ttl.
pub fn heartbeat(node: &str, now_ms: u64, ttl_ms: u64) -> Vec<String> {
    vec!["SET".into(), node_key(node), now_ms.to_string(), "PX".into(), ttl_ms.max(1).to_string()]
}

/// Claims `name` for `node` (EVAL: claims are rare, and EVAL needs no NOSCRIPT path).
pub fn claim(name: &str, node: &str) -> Vec<String> {
    vec!["EVAL".into(), CLAIM_SCRIPT.into(), "1".into(), name_key(name), node.into()]
}

/// Releases `name` if `node` holds it.
pub fn release(name: &str, node: &str) -> Vec<String> {
    vec!["EVAL".into(), RELEASE_SCRIPT.into(), "1".into(), name_key(name), node.into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let bulk = |t: &str| Reply::BulkString(t.as_bytes().to_vec());
        assert_eq!(names(&Reply::Array(vec![bulk("ann"), bulk("bob")])), Some(vec!["ann".into(), "bob".into()]));
        let counts = Reply::Array(vec![bulk("lobby"), Reply::Integer(3), bulk("tea"), Reply::Integer(1)]);
        assert_eq!(room_counts(&counts), Some(vec![("lobby".into(), 3), ("tea".into(), 1)]));
        assert_eq!(room_counts(&Reply::Integer(1)), None);
    }

    #[test]
    fn commands() {
        assert_eq!(heartbeat("n1", 5, 900), ["SET", "pollcast:node:n1", "5", "PX", "900"]);
        assert_eq!(claim("ann", "n1")[3..], ["pollcast:name:ann".to_owned(), "n1".to_owned()]);
        assert_eq!(release("ann", "n1")[2], "1");
    }
}
