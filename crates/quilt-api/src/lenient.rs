//! Liberal readers for answer fields: a control plane written against the original
//! documents may send ids as numbers, `null` for numbers, leave fields out, or spell a
//! status in capitals. Requests are not read with these (they stay strict).

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::types::Status;

/// A value, or its default when it is `null` (a missing field takes `#[serde(default)]`).
pub fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A text that is absent when `null` or empty.
pub fn optional_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.trim().is_empty()))
}

/// An id of any form: a string as it is, a number as its decimal text.
pub fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct IdVisitor;
    impl Visitor<'_> for IdVisitor {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a node id (a string or a number)")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            if v.is_empty() {
                return Err(E::custom("node_id is empty"));
            }
            Ok(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(IdVisitor)
}

/// `up` or `down` in any case; `null` is up (a listed node without a status is taken
/// as live, as a list of the original programs' lists only live nodes).
pub fn status<'de, D: Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(Status::Up),
        Some(s) if s.eq_ignore_ascii_case("up") => Ok(Status::Up),
        Some(s) if s.eq_ignore_ascii_case("down") => Ok(Status::Down),
        Some(s) => Err(de::Error::custom(format!(
            "status {s:?} is neither \"up\" nor \"down\""
        ))),
    }
}

/// [`Status::Up`], for a missing `status`.
pub fn up() -> Status {
    Status::Up
}

/// A boolean, true when `null`.
pub fn or_true<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(true))
}
