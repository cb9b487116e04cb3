//! The ADD result: our interfaces, address and default route, appended to a previous
//! plugin's result when chained.

use serde_json::{Value, json};

use crate::conf::has_ip_version_field;
use quilt_proto::Attachment;

/// The result for `attachment`, chained after `prev` when there is one.
pub fn build(cni_version: &str, attachment: &Attachment, prev: Option<&Value>) -> Value {
    let mut result = match prev {
        Some(Value::Object(prev)) => Value::Object(prev.clone()),
        _ => json!({}),
    };
    result["cniVersion"] = Value::String(cni_version.to_string());
    let interfaces = array(&mut result, "interfaces");
    interfaces.push(json!({ "name": attachment.host_ifname, "mac": attachment.host_mac }));
    let container_index = interfaces.len();
    interfaces.push(json!({
        "name": attachment.ifname,
        "mac": attachment.mac,
        "sandbox": attachment.netns_path,
    }));
    let mut ip = json!({
        "address": attachment.address,
        "gateway": attachment.gateway,
        "interface": container_index,
    });
    if has_ip_version_field(cni_version) {
        ip["version"] = Value::String("4".into());
    }
    array(&mut result, "ips").push(ip);
    let routes = array(&mut result, "routes");
    let default_route = json!({ "dst": "0.0.0.0/0", "gw": attachment.gateway });
    if !routes.contains(&default_route) {
        routes.push(default_route);
    }
    if result.get("dns").is_none() {
        result["dns"] = json!({});
    }
    result
}

/// Whether a previous result lists `address` on an interface called `ifname`.
pub fn lists_address(prev: &Value, ifname: &str, address: &str) -> bool {
    let interfaces = prev.get("interfaces").and_then(Value::as_array);
    prev.get("ips")
        .and_then(Value::as_array)
        .is_some_and(|ips| {
            ips.iter().any(|ip| {
                ip.get("address").and_then(Value::as_str) == Some(address)
                    && match ip.get("interface").and_then(Value::as_u64) {
                        Some(i) => interfaces
                            .and_then(|list| list.get(i as usize))
                            .and_then(|iface| iface.get("name"))
                            .and_then(Value::as_str)
                            .is_none_or(|name| name == ifname),
                        None => true,
                    }
            })
        })
}

fn array<'a>(value: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    if !value.get(key).is_some_and(Value::is_array) {
        value[key] = Value::Array(Vec::new());
    }
    match &mut value[key] {
        Value::Array(list) => list,
        _ => unreachable!("just made an array"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment() -> Attachment {
        Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns_path: "/run/netns/c1".into(),
            address: "10.42.1.2/24".into(),
            gateway: "10.42.1.1".into(),
            mac: "02:00:00:00:00:02".into(),
            mtu: 1450,
            host_ifname: "qv0123456789ab".into(),
            host_mac: "02:00:00:00:00:01".into(),
        }
    }

    #[test]
    fn a_first_plugin_result_has_interfaces_ips_routes_and_dns() {
        let r = build("1.0.0", &attachment(), None);
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["interfaces"][1]["sandbox"], "/run/netns/c1");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(r["ips"][0]["gateway"], "10.42.1.1");
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(
            r["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "10.42.1.1"})
        );
        assert_eq!(r["dns"], json!({}));
        assert!(lists_address(&r, "eth0", "10.42.1.2/24"));
        assert!(!lists_address(&r, "eth1", "10.42.1.2/24"));
        let old = build("0.4.0", &attachment(), None);
        assert_eq!(old["ips"][0]["version"], "4");
    }

    #[test]
    fn a_chained_result_keeps_what_came_before() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo0"}],
            "ips": [{"address": "192.0.2.5/24", "interface": 0}],
            "dns": {"nameservers": ["192.0.2.53"]},
        });
        let r = build("1.0.0", &attachment(), Some(&prev));
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["ips"][0]["address"], "192.0.2.5/24");
        assert_eq!(r["dns"]["nameservers"][0], "192.0.2.53");
    }
}
