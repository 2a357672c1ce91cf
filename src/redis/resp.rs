//! RESP2 (the Redis serialization protocol) over byte buffers: a command is written as
//! an array of bulk strings, and replies are decoded by the `redis-protocol` crate, one
//! whole frame at a time (`Ok(None)`: need more bytes, nothing consumed).

use redis_protocol::resp2::decode::decode;
pub use redis_protocol::resp2::types::OwnedFrame as Reply;

/// Appends one command (`*N\r\n` then `$len\r\nARG\r\n` per argument) to `out`.
pub fn command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// One whole reply from the front of `input` and the bytes it took; `Ok(None)` when
/// the reply is not whole yet. An error means the stream cannot be trusted any more
/// (the connection must be dropped).
pub fn next_reply(input: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    decode(input).map_err(|e| format!("bad RESP from Redis: {e:?}"))
}

/// The error text of a reply, when it is an error.
pub fn error_text(reply: &Reply) -> Option<&str> {
    match reply {
        Reply::Error(text) => Some(text),
        _ => None,
    }
}

/// A bulk or simple string's bytes.
pub fn bytes(reply: &Reply) -> Option<&[u8]> {
    match reply {
        Reply::BulkString(bytes) | Reply::SimpleString(bytes) => Some(bytes),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &["SELECT", "2"]);
        command(&mut out, &[b"PUBLISH".as_slice(), b"c", b"\x00\r\n"]);
        assert_eq!(out, b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$3\r\n\x00\r\n\r\n");
    }

    #[test]
    fn replies_whole_or_not_yet() {
        assert_eq!(next_reply(b"+OK\r\n").unwrap(), Some((Reply::SimpleString(b"OK".to_vec()), 5)));
        assert_eq!(next_reply(b"+OK\r").unwrap(), None);
        assert_eq!(next_reply(b"$5\r\nhel").unwrap(), None);
        assert_eq!(next_reply(b":42\r\n+x").unwrap(), Some((Reply::Integer(42), 5)));
        let push = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n";
        let (reply, used) = next_reply(push).unwrap().unwrap();
        assert_eq!(used, push.len());
        let Reply::Array(parts) = reply else { panic!("an array") };
        assert_eq!(bytes(&parts[2]), Some(b"hi".as_slice()));
        let (reply, _) = next_reply(b"-NOAUTH Authentication required.\r\n").unwrap().unwrap();
        assert_eq!(error_text(&reply), Some("NOAUTH Authentication required."));
        assert_eq!(next_reply(b"$-1\r\n").unwrap(), Some((Reply::Null, 5)));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(next_reply(b"?what\r\n").is_err());
    }
}
