//! A compact immutable string: short strings live inline (no allocation, no
//! pointer to chase when comparing), longer ones are shared behind an `Arc`.
//! Names and host names of the registry are mostly short ("DEFAULT",
//! "orders-v2"), and an instance lookup compares them for every heartbeat.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Longest string stored inline.
pub(crate) const INLINE: usize = 22;

/// A compact immutable string.
#[derive(Clone, Debug)]
pub(crate) enum SmallStr {
    Inline(u8, [u8; INLINE]),
    Shared(Arc<str>),
}

impl SmallStr {
    pub(crate) fn new(s: &str) -> SmallStr {
        if s.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            SmallStr::Inline(s.len() as u8, buf)
        } else {
            SmallStr::Shared(Arc::from(s))
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            SmallStr::Inline(len, buf) => &buf[..usize::from(*len).min(INLINE)],
            SmallStr::Shared(s) => s.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Built from a `&str` cut at its own length: always valid UTF-8.
            SmallStr::Inline(..) => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            SmallStr::Shared(s) => s,
        }
    }
}

impl PartialEq for SmallStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SmallStr {}

impl PartialOrd for SmallStr {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Byte order, which for UTF-8 equals `str` order.
impl Ord for SmallStr {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for SmallStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_strings_round_trip_and_compare_like_str() {
        let short = SmallStr::new("DEFAULT");
        let long = SmallStr::new(&"x".repeat(40));
        assert!(matches!(short, SmallStr::Inline(..)));
        assert!(matches!(long, SmallStr::Shared(_)));
        assert_eq!(short.as_str(), "DEFAULT");
        assert_eq!(long.as_str().len(), 40);
        assert_eq!(SmallStr::new("a") < SmallStr::new(&"b".repeat(30)), "a" < "b");
        assert_eq!(SmallStr::new(&"z".repeat(22)), SmallStr::new(&"z".repeat(22)));
    }
}
