//! JSON pointers (RFC 6901) cut into their reference tokens once, when a profile or an
//! endpoint's cost is compiled, instead of on every lookup: an error answer looks up about a
//! dozen pointers, and `Value::pointer` scans, splits and unescapes each one again every time
//! (with a `String` per token), which was a large share of normalising a small vendor body.

use serde_json::Value;

/// A parsed JSON pointer: `""` is the whole document, `/a/b` the reference tokens `a`, `b`
/// with `~1` and `~0` already turned back into `/` and `~`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    tokens: Vec<Box<str>>,
}

impl Pointer {
    /// `""`: the whole document.
    pub const ROOT: Pointer = Pointer { tokens: Vec::new() };

    /// Parses `text`; `None` unless it is empty or starts with `/`. Escapes are undone as
    /// `Value::pointer` undoes them (`~1` then `~0`, so `~01` is `~1`; a stray `~` stays).
    pub fn parse(text: &str) -> Option<Pointer> {
        if text.is_empty() {
            return Some(Pointer::ROOT);
        }
        let tokens = text
            .strip_prefix('/')?
            .split('/')
            .map(|t| match t.contains('~') {
                false => t.into(),
                true => t.replace("~1", "/").replace("~0", "~").into_boxed_str(),
            })
            .collect();
        Some(Pointer { tokens })
    }

    /// The value it points at in `doc`, by the same rules as `Value::pointer`.
    pub fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        walk(doc, self.tokens.iter().map(|t| &**t))
    }
}

/// Walks `tokens` down from `doc`: object members by name, array items by index (digits
/// only, no sign and no leading zero, as `Value::pointer` reads them).
pub fn walk<'a, 't>(
    doc: &'a Value,
    tokens: impl IntoIterator<Item = &'t str>,
) -> Option<&'a Value> {
    tokens.into_iter().try_fold(doc, |v, token| match v {
        Value::Object(m) => m.get(token),
        Value::Array(a) => {
            if token.len() > 1 && token.starts_with('0') || token.starts_with('+') {
                return None;
            }
            a.get(token.parse::<usize>().ok()?)
        }
        _ => None,
    })
}

/// Where the detector looks: a profile's pointer, or one of its own built-in paths (token
/// lists, so they need no parsing at all).
pub trait Path {
    /// The value at this path in `doc`.
    fn find<'a>(&self, doc: &'a Value) -> Option<&'a Value>;
}

impl Path for Pointer {
    fn find<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.get(doc)
    }
}

impl Path for &[&str] {
    fn find<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        walk(doc, self.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn agrees_with_serde_json_pointer() {
        let doc = json!({
            "a": [10, {"b": 1, "": 6}], "": {"": 2}, "x/y": 3, "m~n": 4, "0": 5,
            "01": 7, "+1": 8, "é": {"ü": 9}, "~": 10, "~1": 11, "/": {"~": 12}, "~2": 13, "~/": 14,
        });
        for p in [
            "",
            "/",
            "//",
            "/a",
            "/a/0",
            "/a/1/b",
            "/a/01",
            "/a/+1",
            "/a/2",
            "/a/-1",
            "/a/b",
            "/x~1y",
            "/m~0n",
            "/0",
            "a",
            "/a/0/c",
            "/a/1/b/c",
            "/a/",
            "/a/-",
            "/a/00",
            "/a/18446744073709551616",
            "/~",
            "/~2",
            "/~0",
            "/~01",
            "/~1/~0",
            "/nokey/m~0n",
            "/é/ü",
            "/01",
            "/+1",
            "/a/1/",
            "/m~n",
            "/x~",
            "/~~",
            "/~~1",
        ] {
            let ours = Pointer::parse(p).and_then(|ptr| ptr.get(&doc));
            assert_eq!(ours, doc.pointer(p), "{p:?}");
        }
    }

    #[test]
    fn built_in_paths_walk_the_same_way() {
        let doc = json!({"error": {"details": [{"field": "to"}]}});
        let path: &[&str] = &["error", "details", "0", "field"];
        assert_eq!(path.find(&doc), Some(&json!("to")));
        let missing: &[&str] = &["error", "details", "1"];
        assert_eq!(missing.find(&doc), None);
        let whole: &[&str] = &[];
        assert_eq!(whole.find(&doc), Some(&doc));
    }

    #[test]
    fn a_pointer_without_a_leading_slash_is_refused() {
        assert_eq!(Pointer::parse("error/code"), None);
        assert!(Pointer::parse("/error/code").is_some());
    }
}
