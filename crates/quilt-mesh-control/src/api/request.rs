//! Request bodies to the published types, then to validated values: JSON syntax errors
//! are 400; fields that are missing, unknown, of the wrong type or invalid are 422 with the
//! field's name in the message.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use quilt_common::cluster::excerpt;
use serde_json::Value;

use ipnet::Ipv4Net;
use quilt_common::ClusterNetwork;

use super::types::{HeartbeatRequest, RegisterRequest};

use crate::error::ApiError;
use crate::model::{
    Condition, FieldError, NewNode, Vxlan, parse_condition, parse_host_ip, parse_hostname,
    parse_mac,
};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

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

/// Parses a JSON body: syntax errors and an empty body are 400.
fn json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson(
            "request body is empty; send a json object".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))
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

/// Says, naming the field, why `value` is not a [`RegisterRequest`] that serde refused
/// with `refusal`; the field rules are the type's, read from its documented shape.
fn explain_register(value: &Value, refusal: serde_json::Error) -> FieldError {
    let Value::Object(map) = value else {
        return FieldError(format!(
            "request body must be a json object, not {}",
            kind(value)
        ));
    };
    let known = RegisterRequest::FIELDS;
    if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return FieldError(format!(
            "unknown field {:?}; known fields are {}",
            excerpt(unknown),
            known.join(", ")
        ));
    }
    let uint_max = |field: &str| match field {
        "cpu_cores" => Some(u64::from(u32::MAX)),
        "ram_mb" => Some(i64::MAX as u64),
        "vxlan_port" => Some(u64::from(u16::MAX)),
        "vni" => Some(u64::from(Vxlan::MAX_VNI)),
        _ => None,
    };
    for field in known {
        let required = matches!(*field, "hostname" | "host_ip");
        match (map.get(*field), uint_max(field)) {
            (None | Some(Value::Null), _) if required => {
                return FieldError(format!("{field} is missing"));
            }
            (None | Some(Value::Null), _) => {}
            (Some(v), Some(max)) if v.as_u64().is_none_or(|n| n > max) => {
                return FieldError(format!(
                    "{field} {} is not a whole number from 0 to {max}",
                    shown(v)
                ));
            }
            (Some(v), None) if !v.is_string() => {
                return FieldError(format!("{field} {} is {}, not a string", shown(v), kind(v)));
            }
            _ => {}
        }
    }
    FieldError(format!(
        "registration refused: {}",
        excerpt(&refusal.to_string())
    ))
}

/// `POST /api/nodes/register` body to a validated registration: the body is read into
/// the published [`RegisterRequest`], then each field is checked (`subnet` against the
/// cluster `plan`).
pub fn register(body: &[u8], plan: &ClusterNetwork) -> Result<NewNode, ApiError> {
    let value = json(body)?;
    let request: RegisterRequest = match serde_json::from_value(value.clone()) {
        Ok(request) => request,
        Err(refusal) => return Err(explain_register(&value, refusal).into()),
    };
    let ram_limit = i64::MAX as u64;
    if let Some(ram_mb) = request.ram_mb
        && ram_mb > ram_limit
    {
        return Err(FieldError(format!(
            "ram_mb {ram_mb} is not a whole number from 0 to {ram_limit}"
        ))
        .into());
    }
    Ok(NewNode {
        hostname: parse_hostname(&request.hostname)?,
        host_ip: parse_host_ip(&request.host_ip)?,
        cpu_cores: request.cpu_cores.unwrap_or(0),
        ram_mb: request.ram_mb.unwrap_or(0),
        vtep_mac: request.vtep_mac.as_deref().map(parse_mac).transpose()?,
        vxlan: vxlan(request.vxlan_port, request.vni)?,
        wanted_subnet: request
            .subnet
            .as_deref()
            .map(|s| wanted_subnet(s, plan))
            .transpose()?,
    })
}

/// The `vxlan_port` and `vni` of a registration: a port other than 0, a 24-bit VNI.
fn vxlan(port: Option<u16>, vni: Option<u32>) -> Result<Vxlan, FieldError> {
    if port == Some(0) {
        return Err(FieldError("vxlan_port 0 is not a port (1 to 65535)".into()));
    }
    if let Some(vni) = vni
        && vni > Vxlan::MAX_VNI
    {
        return Err(FieldError(format!(
            "vni {vni} is not a VXLAN network identifier (0 to {})",
            Vxlan::MAX_VNI
        )));
    }
    Ok(Vxlan { port, vni })
}

/// The `subnet` a registration asks for: a node subnet of the cluster, not its first.
fn wanted_subnet(value: &str, plan: &ClusterNetwork) -> Result<Ipv4Net, FieldError> {
    let subnet = plan
        .parse_node_subnet("subnet", value)
        .map_err(|e| FieldError(e.to_string()))?;
    if plan.index_of(subnet) == Some(0) {
        return Err(FieldError(format!(
            "subnet {subnet} is the cluster's first node subnet, which is never leased"
        )));
    }
    Ok(subnet)
}

/// `POST /api/nodes/{id}/heartbeat` body to the condition it reports: an empty body (what
/// the original agents send) or one without `condition` is a healthy node.
pub fn heartbeat(body: &[u8]) -> Result<Option<Condition>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value = json(body)?;
    if !value.is_object() {
        return Err(FieldError(format!(
            "heartbeat body must be a json object or empty, not {}",
            kind(&value)
        ))
        .into());
    }
    let request: HeartbeatRequest = serde_json::from_value(value).map_err(|e| {
        FieldError(format!(
            "condition must be {{\"reason\": string, \"message\": string}}: {}",
            excerpt(&e.to_string())
        ))
    })?;
    Ok(request
        .condition
        .map(|c| parse_condition(&c.reason, &c.message))
        .transpose()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ClusterNetwork {
        ClusterNetwork::new("10.42.0.0/16".parse().unwrap(), 24).unwrap()
    }

    fn err(body: &str) -> (StatusCode, String) {
        let e = register(body.as_bytes(), &plan()).unwrap_err();
        (e.status(), e.to_string())
    }

    #[test]
    fn accepts_what_the_original_clients_send() {
        let n = register(
            br#"{"hostname":"node-a","host_ip":"192.168.1.10","cpu_cores":4,"ram_mb":8192}"#,
            &plan(),
        )
        .unwrap();
        assert_eq!((n.cpu_cores, n.ram_mb, n.vtep_mac), (4, 8192, None));
        assert_eq!(n.wanted_subnet, None);
        let n = register(br#"{"hostname":"a","host_ip":"10.0.0.1","vtep_mac":"02:00:00:00:00:01","ram_mb":null}"#, &plan()).unwrap();
        assert_eq!(n.vtep_mac.unwrap().to_string(), "02:00:00:00:00:01");
    }

    #[test]
    fn a_wished_subnet_must_be_a_leasable_node_subnet() {
        let n = register(
            br#"{"hostname":"a","host_ip":"10.0.0.1","subnet":"10.42.7.0/24"}"#,
            &plan(),
        )
        .unwrap();
        assert_eq!(n.wanted_subnet, Some("10.42.7.0/24".parse().unwrap()));
        for (subnet, expected) in [
            ("x", "subnet"),
            ("10.43.1.0/24", "outside cluster cidr 10.42.0.0/16"),
            ("10.42.1.0/25", "/24"),
            ("10.42.1.1/24", "host bits"),
            ("10.42.0.0/24", "first node subnet"),
        ] {
            let body = format!(r#"{{"hostname":"a","host_ip":"10.0.0.1","subnet":"{subnet}"}}"#);
            let (status, msg) = err(&body);
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{subnet}: {msg}");
            assert!(msg.contains(expected), "{subnet}: {msg}");
        }
    }

    #[test]
    fn a_heartbeat_body_is_empty_or_names_a_condition() {
        assert_eq!(heartbeat(b"").unwrap(), None);
        assert_eq!(heartbeat(b" {} ").unwrap(), None);
        assert_eq!(heartbeat(br#"{"condition":null,"later":1}"#).unwrap(), None);
        let c = heartbeat(
            br#"{"condition":{"reason":"SubnetInUse","message":"runtime keeps 10.42.1.0/24"}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.reason(), c.message()),
            ("SubnetInUse", "runtime keeps 10.42.1.0/24")
        );
        let long = "m".repeat(1025);
        for (body, status, expected) in [
            ("{", StatusCode::BAD_REQUEST, "malformed json"),
            ("[1]", StatusCode::UNPROCESSABLE_ENTITY, "not an array"),
            (
                r#"{"condition":7}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "condition must be",
            ),
            (
                r#"{"condition":{"reason":"not a word","message":""}}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"condition.reason "not a word""#,
            ),
            (
                &format!(r#"{{"condition":{{"reason":"X","message":"{long}"}}}}"#),
                StatusCode::UNPROCESSABLE_ENTITY,
                "1025 characters long",
            ),
        ] {
            let e = heartbeat(body.as_bytes()).unwrap_err();
            assert_eq!(e.status(), status, "{body}: {e}");
            assert!(e.to_string().contains(expected), "{body}: {e}");
        }
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
                r#"{"hostname":"a","host_ip":"10.0.0.1","zone":"x"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"unknown field "zone""#,
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
