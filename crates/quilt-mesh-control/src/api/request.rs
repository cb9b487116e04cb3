//! Request bodies to typed values: JSON syntax errors are 400, fields that are missing,
//! unknown, of the wrong type or invalid are 422 with the field's name in the message.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use quilt_common::cluster::excerpt;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::model::{FieldError, NewNode, parse_host_ip, parse_hostname, parse_mac};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

const REGISTER_FIELDS: &[&str] = &["hostname", "host_ip", "cpu_cores", "ram_mb", "vtep_mac"];

/// Maps a failure to read the body (over the limit, or cut off) to an error.
pub fn body(raw: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    raw.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge { limit: BODY_LIMIT }
        } else {
            ApiError::BadRequest(format!(
                "cannot read request body: {}",
                rejection.body_text()
            ))
        }
    })
}

/// Parses a JSON object, refusing fields outside `known`.
fn object(body: &[u8], known: &[&str]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson(
            "request body is empty; send a json object".into(),
        ));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(FieldError(format!(
            "request body must be a json object, not {}",
            kind(&value)
        ))
        .into());
    };
    if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(FieldError(format!(
            "unknown field {:?}; known fields are {}",
            excerpt(unknown),
            known.join(", ")
        ))
        .into());
    }
    Ok(map)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn shown(v: &Value) -> String {
    excerpt(&v.to_string())
}

fn required_str<'a>(map: &'a Map<String, Value>, field: &str) -> Result<&'a str, FieldError> {
    match map.get(field) {
        None | Some(Value::Null) => Err(FieldError(format!("{field} is missing"))),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(FieldError(format!(
            "{field} {} is {}, not a string",
            shown(v),
            kind(v)
        ))),
    }
}

fn optional_str<'a>(
    map: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, FieldError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(FieldError(format!(
            "{field} {} is {}, not a string",
            shown(v),
            kind(v)
        ))),
    }
}

fn optional_uint(
    map: &Map<String, Value>,
    field: &str,
    max: u64,
) -> Result<Option<u64>, FieldError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(FieldError(format!(
                "{field} {} is not a whole number from 0 to {max}",
                shown(v)
            ))),
        },
    }
}

/// `POST /api/nodes/register` body to a validated registration.
pub fn register(body: &[u8]) -> Result<NewNode, ApiError> {
    let map = object(body, REGISTER_FIELDS)?;
    let hostname = parse_hostname(required_str(&map, "hostname")?)?;
    let host_ip = parse_host_ip(required_str(&map, "host_ip")?)?;
    let cpu_cores = optional_uint(&map, "cpu_cores", u64::from(u32::MAX))?.unwrap_or(0);
    let ram_mb = optional_uint(&map, "ram_mb", i64::MAX as u64)?.unwrap_or(0);
    let vtep_mac = optional_str(&map, "vtep_mac")?.map(parse_mac).transpose()?;
    Ok(NewNode {
        hostname,
        host_ip,
        cpu_cores: u32::try_from(cpu_cores).unwrap_or(u32::MAX),
        ram_mb,
        vtep_mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> (StatusCode, String) {
        let e = register(body.as_bytes()).unwrap_err();
        (e.status(), e.to_string())
    }

    #[test]
    fn accepts_what_the_original_clients_send() {
        let n = register(
            br#"{"hostname":"node-a","host_ip":"192.168.1.10","cpu_cores":4,"ram_mb":8192}"#,
        )
        .unwrap();
        assert_eq!((n.cpu_cores, n.ram_mb, n.vtep_mac), (4, 8192, None));
        let n = register(br#"{"hostname":"a","host_ip":"10.0.0.1","vtep_mac":"02:00:00:00:00:01","ram_mb":null}"#).unwrap();
        assert_eq!(n.vtep_mac.unwrap().to_string(), "02:00:00:00:00:01");
    }

    #[test]
    fn names_the_field_that_failed() {
        let cases = [
            ("{", StatusCode::BAD_REQUEST, "malformed json"),
            ("", StatusCode::BAD_REQUEST, "empty"),
            (
                "[1]",
                StatusCode::UNPROCESSABLE_ENTITY,
                "json object, not an array",
            ),
            (
                r#"{"host_ip":"10.0.0.1"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "hostname is missing",
            ),
            (
                r#"{"hostname":"a"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "host_ip is missing",
            ),
            (
                r#"{"hostname":7,"host_ip":"10.0.0.1"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "hostname 7 is a number",
            ),
            (
                r#"{"hostname":"a","host_ip":"999.1.1.1"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"host_ip "999.1.1.1" is not an IPv4 address"#,
            ),
            (
                r#"{"hostname":"a","host_ip":"10.0.0.1","cpu_cores":-1}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "cpu_cores -1 is not a whole number",
            ),
            (
                r#"{"hostname":"a","host_ip":"10.0.0.1","ram_mb":1.5}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "ram_mb 1.5",
            ),
            (
                r#"{"hostname":"a","host_ip":"10.0.0.1","subnet":"x"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"unknown field "subnet""#,
            ),
            (
                r#"{"hostname":"a","host_ip":"10.0.0.1","vtep_mac":"ff:ff:ff:ff:ff:ff"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "vtep_mac",
            ),
        ];
        for (body, status, expected) in cases {
            let (s, msg) = err(body);
            assert_eq!(s, status, "{body}: {msg}");
            assert!(msg.contains(expected), "{body}: {msg}");
        }
    }
}
