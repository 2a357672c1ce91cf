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
//! The claim script reads the owner's heartbeat key, which it is not passed in KEYS:
//! right for one Redis; Redis Cluster would need the two keys in one hash slot.

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
    fn commands() {
        assert_eq!(heartbeat("n1", 5, 900), ["SET", "pollcast:node:n1", "5", "PX", "900"]);
        assert_eq!(claim("ann", "n1")[3..], ["pollcast:name:ann".to_owned(), "n1".to_owned()]);
        assert_eq!(release("ann", "n1")[2], "1");
    }
}
