//! A provider's answer, passed on to the client without being built into a JSON tree.
//!
//! The gateway changes one thing in a `chat.completion` or a `chat.completion.chunk`: `model`
//! names the agent the client asked for, not the provider's model. And it reads two: the
//! `usage` figures and whether the object is an `error`. So it reads the object's top level
//! only: each member's value is copied as the provider wrote it (checked to be JSON, never
//! parsed into values), `model` is left out and the agent's name written last. A stream of
//! small chunks costs one output buffer a chunk instead of a tree of maps and strings, then
//! its serialisation.

use serde::de::{self, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// What was read of an object while it was relabelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// `usage` is an object: its `prompt_tokens` and `completion_tokens` (0 when missing or not
    /// non-negative integers).
    pub usage: Option<(i64, i64)>,
    /// The object has a top-level `error` member.
    pub error: bool,
}

/// Appends `json` to `out` with `model` set to `model` (a JSON object's text, with its other
/// members as they were, in their order). Fails, leaving `out` as it was, when `json` is not
/// one JSON object.
pub(crate) fn relabel(json: &[u8], model: &str, out: &mut Vec<u8>) -> Result<Seen, String> {
    let start = out.len();
    let mut de = serde_json::Deserializer::from_slice(json);
    let res = de
        .deserialize_map(Relabel { out, model })
        .and_then(|seen| de.end().map(|()| seen));
    res.map_err(|e| {
        out.truncate(start);
        e.to_string()
    })
}

/// `prompt_tokens` and `completion_tokens` of a `usage` object.
pub(crate) fn usage_figures(usage: &Value) -> (i64, i64) {
    let figure = |k| usage.get(k).and_then(Value::as_i64).unwrap_or(0).max(0);
    (figure("prompt_tokens"), figure("completion_tokens"))
}

struct Relabel<'o> {
    out: &'o mut Vec<u8>,
    model: &'o str,
}

impl<'de> Visitor<'de> for Relabel<'_> {
    type Value = Seen;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seen, A::Error> {
        let mut seen = Seen::default();
        self.out.push(b'{');
        while let Some(Key(key)) = map.next_key()? {
            let value: &'de RawValue = map.next_value()?;
            let raw = value.get();
            match &*key {
                "model" => continue,
                "usage" if raw.starts_with('{') => {
                    let usage: Value = serde_json::from_str(raw).map_err(de::Error::custom)?;
                    seen.usage = Some(usage_figures(&usage));
                }
                "error" => seen.error = true,
                _ => {}
            }
            write_string(self.out, &key);
            self.out.push(b':');
            self.out.extend_from_slice(raw.as_bytes());
            self.out.push(b',');
        }
        write_string(self.out, "model");
        self.out.push(b':');
        write_string(self.out, self.model);
        self.out.push(b'}');
        Ok(seen)
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // Writing a string to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A member's name, borrowed from the input unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn run(input: &str, model: &str) -> Result<(Value, Seen, String), String> {
        let mut out = b"data: ".to_vec();
        let seen = relabel(input.as_bytes(), model, &mut out)?;
        let text = String::from_utf8(out).unwrap();
        let json = serde_json::from_str(text.strip_prefix("data: ").unwrap()).unwrap();
        Ok((json, seen, text))
    }

    #[test]
    fn replaces_the_model_and_keeps_everything_else_as_written() {
        let input = r#"{"id":"c-1","object":"chat.completion.chunk","created":1,
            "model":"gpt-4o-2024","choices":[{"index":0,"delta":{"content":"h\u00e9\"\n"},
            "finish_reason":null}],"usage":null,"x":1.50}"#;
        let (v, seen, text) = run(input, "support \"bot\"").unwrap();
        let mut want: Value = serde_json::from_str(input).unwrap();
        want["model"] = json!("support \"bot\"");
        assert_eq!(v, want);
        assert_eq!(seen, Seen::default());
        // Values are copied as written (the number's trailing zero, the escape), in order,
        // the model last.
        assert!(
            text.contains(r#""x":1.50,"model":"support \"bot\""}"#),
            "{text}"
        );
        assert!(text.contains(r#""content":"h\u00e9\"\n""#), "{text}");
        assert!(text.find("\"id\"") < text.find("\"choices\""));
    }

    #[test]
    fn reads_usage_and_errors() {
        let (_, seen, _) = run(
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#,
            "a",
        )
        .unwrap();
        assert_eq!(seen.usage, Some((12, 7)));
        // Missing, negative or fractional figures count as 0; a null usage is no usage.
        let (_, seen, _) = run(
            r#"{"usage":{"prompt_tokens":-3,"completion_tokens":2.5}}"#,
            "a",
        )
        .unwrap();
        assert_eq!(seen.usage, Some((0, 0)));
        let (_, seen, _) = run(r#"{"usage":null}"#, "a").unwrap();
        assert_eq!(seen.usage, None);
        let (v, seen, _) = run(r#"{"error":{"message":"overloaded"}}"#, "a").unwrap();
        assert!(seen.error);
        assert_eq!(v, json!({"error": {"message": "overloaded"}, "model": "a"}));
    }

    #[test]
    fn member_names_with_escapes_are_kept() {
        let (v, _, _) = run(r#"{"a\"b":1,"mod\u0065l":"x"}"#, "agent").unwrap();
        // An escaped `model` is still the model.
        assert_eq!(v, json!({"a\"b": 1, "model": "agent"}));
    }

    #[test]
    fn refuses_what_is_not_one_object_and_leaves_the_buffer_alone() {
        for bad in [
            "",
            "[1,2]",
            "\"text\"",
            "{\"a\":}",
            "{\"a\":[1,}",
            "{\"a\":1} {}",
            "{\"a\":1",
            "{\"usage\":{\"prompt_tokens\":1,}}",
        ] {
            let mut out = b"kept".to_vec();
            assert!(relabel(bad.as_bytes(), "a", &mut out).is_err(), "{bad:?}");
            assert_eq!(out, b"kept", "{bad:?}");
        }
    }
}
