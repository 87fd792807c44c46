//! Strict JSON for untrusted token segments: like `serde_json::Value`, but a duplicate member
//! name anywhere in the document is an error instead of "last one wins" (RFC 7515 §5.2 lets a
//! verifier reject them, and two `sub` members are a classic way to make two parsers disagree).
//! Nesting depth is bounded by serde_json's recursion limit (128).

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Parses `bytes` as one JSON value, rejecting duplicate member names at any depth.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON cannot carry NaN/inf, so from_f64 only fails on input serde_json never produces.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // One search of the map per member, not two (`contains_key`, then `insert`).
            let serde_json::map::Entry::Vacant(slot) = out.entry(key) else {
                // The member name is attacker-controlled: say what, not which.
                return Err(de::Error::custom("duplicate member name"));
            };
            slot.insert(map.next_value_seed(StrictValue)?);
        }
        Ok(Value::Object(out))
    }
}

/// Shortens attacker-controlled text before it goes into a message.
pub fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_serde_json() {
        let src = br#"{"a":1,"b":[true,null,"x",{"c":-2.5}],"d":{"e":18446744073709551615}}"#;
        let strict = parse_strict(src).unwrap();
        let loose: Value = serde_json::from_slice(src).unwrap();
        assert_eq!(strict, loose);
    }

    #[test]
    fn rejects_duplicates_at_any_depth() {
        for src in [
            &br#"{"sub":"a","sub":"b"}"#[..],
            br#"{"x":{"alg":"RS256","alg":"none"}}"#,
            br#"[{"k":1,"k":1}]"#,
        ] {
            let err = parse_strict(src).unwrap_err();
            assert!(err.contains("duplicate member"), "{err}");
        }
    }

    #[test]
    fn rejects_trailing_garbage_and_deep_nesting() {
        assert!(parse_strict(br#"{"a":1} x"#).is_err());
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert!(parse_strict(deep.as_bytes()).is_err());
    }

    #[test]
    fn truncate_is_char_safe() {
        assert_eq!(truncate("ééé", 2), "éé…");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
