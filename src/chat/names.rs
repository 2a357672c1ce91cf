//! Display names: what a valid name is, and decoding one from a URL query.
//!
//! Owns: the name rules. Must not touch: who holds which name (`Chat` does).

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// Why a name cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// Empty, longer than 32 characters, or holding control or white-space characters
    /// (a space would make `/msg NAME TEXT` and `who ROOM a b c` ambiguous).
    Invalid,
    /// Another connected user has it.
    Taken,
}

impl NameError {
    /// The stable error code sent to clients.
    pub fn code(self) -> &'static str {
        match self {
            NameError::Invalid => "bad_field",
            NameError::Taken => "name_taken",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            NameError::Invalid => "names are 1-32 printable characters without spaces",
            NameError::Taken => "that name is taken",
        }
    }
}

/// Checks the name rules (not whether it is taken).
pub fn validate(name: &str) -> Result<(), NameError> {
    let chars = name.chars().count();
    let printable = |c: char| !c.is_control() && !c.is_whitespace();
    if (1..=MAX_NAME_CHARS).contains(&chars) && name.chars().all(printable) {
        Ok(())
    } else {
        Err(NameError::Invalid)
    }
}

/// Decodes `application/x-www-form-urlencoded` text (`%41` → `A`, `+` → space).
/// `None` for a bad escape or a result that is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert_eq!(validate("ann"), Ok(()));
        assert_eq!(validate("Zoë_42"), Ok(()));
        assert_eq!(validate(&"x".repeat(32)), Ok(()));
        assert_eq!(validate(&"é".repeat(32)), Ok(()), "characters, not bytes");
        assert_eq!(validate(""), Err(NameError::Invalid));
        assert_eq!(validate(&"x".repeat(33)), Err(NameError::Invalid));
        assert_eq!(validate("a b"), Err(NameError::Invalid));
        assert_eq!(validate("a\u{7}"), Err(NameError::Invalid));
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("ann").as_deref(), Some("ann"));
        assert_eq!(percent_decode("Zo%C3%AB").as_deref(), Some("Zoë"));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
