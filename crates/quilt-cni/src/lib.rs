//! quilt-cni: a CNI plugin (specification 1.0.0; also writes 0.3.x/0.4.0 results) that
//! puts containers on Quilt Mesh by asking quilt-runtime over gRPC. It keeps no state:
//! ADD is AttachContainer, DEL is DetachContainer, CHECK is CheckContainer (the runtime
//! inspects the interface, address and route inside the namespace) plus a look at the
//! previous result.
//!
//! The rooms:
//! - [`conf`]: the network configuration on stdin and the supported versions.
//! - [`error`]: the specification's error JSON and codes, mapped in one place.
//! - [`result`]: the ADD result, chained after a previous plugin's.

pub mod conf;
pub mod error;
pub mod result;

use std::time::Duration;

use quilt_proto as pb;
use quilt_proto::connect::{ConnectError, Timeouts};
use quilt_proto::quilt_runtime_client::QuiltRuntimeClient;
use tonic::transport::Channel;

pub use conf::NetConf;
pub use error::{CniError, code};

/// How long quilt-cni waits to connect to quilt-runtime, and for one answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The CNI_* environment variables of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl Env {
    /// Reads the CNI_* variables of this process; absent ones are empty.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }

    fn require(&self, name: &str, value: &str) -> Result<(), CniError> {
        if value.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("{name} is not set"),
            ));
        }
        Ok(())
    }
}

/// The version an error answer should carry: the one asked for when stdin says so and it
/// is supported, else 1.0.0.
pub fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .filter(|v| conf::check_version(v).is_ok())
        .unwrap_or_else(|| "1.0.0".to_string())
}

/// Runs one invocation: answers what goes to stdout (`None`: nothing, as for DEL).
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<String>, CniError> {
    match env.command.as_str() {
        "VERSION" => Ok(Some(version(stdin))),
        "ADD" | "DEL" | "CHECK" => {
            let conf = NetConf::parse(stdin)?;
            env.require("CNI_CONTAINERID", &env.container_id)?;
            env.require("CNI_IFNAME", &env.ifname)?;
            if env.command != "DEL" {
                env.require("CNI_NETNS", &env.netns)?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    CniError::new(
                        code::IO_FAILURE,
                        format!("cannot start an async runtime: {e}"),
                    )
                })?;
            rt.block_on(async {
                match env.command.as_str() {
                    "ADD" => add(env, &conf).await.map(Some),
                    "DEL" => del(env, &conf).await.map(|()| None),
                    _ => check(env, &conf).await.map(|()| None),
                }
            })
        }
        "" => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            "CNI_COMMAND is not set",
        )),
        other => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION"),
        )),
    }
}

fn version(stdin: &[u8]) -> String {
    serde_json::json!({
        "cniVersion": requested_version(stdin),
        "supportedVersions": conf::SUPPORTED_VERSIONS,
    })
    .to_string()
}

async fn connect(conf: &NetConf) -> Result<QuiltRuntimeClient<Channel>, CniError> {
    let address = &conf.runtime_address;
    let timeouts = Timeouts {
        connect: CONNECT_TIMEOUT,
        call: CALL_TIMEOUT,
    };
    quilt_proto::connect::connect(address, timeouts)
        .await
        .map_err(|e| match e {
            ConnectError::BadAddress { .. } | ConnectError::BadTls { .. } => {
                CniError::new(code::INVALID_CONFIG, e.to_string())
            }
            ConnectError::Unreachable { message, .. } => CniError::unreachable(address, message),
        })
}

async fn add(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    let mut client = connect(conf).await?;
    let answer = client
        .attach_container(pb::AttachContainerRequest {
            container_id: env.container_id.clone(),
            netns_path: env.netns.clone(),
            ifname: env.ifname.clone(),
            mtu: conf.mtu.unwrap_or(0),
        })
        .await
        .map_err(|e| CniError::unreachable(&conf.runtime_address, e))?
        .into_inner();
    if !answer.success {
        return Err(CniError::from_runtime(answer.error_kind(), answer.error));
    }
    let attachment = answer.attachment.ok_or_else(|| {
        CniError::new(
            code::RUNTIME_INTERNAL,
            "quilt-runtime answered success without an attachment",
        )
    })?;
    Ok(result::build(&conf.cni_version, &attachment, conf.prev_result.as_ref()).to_string())
}

async fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let mut client = connect(conf).await?;
    let answer = client
        .detach_container(pb::DetachContainerRequest {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
        })
        .await
        .map_err(|e| CniError::unreachable(&conf.runtime_address, e))?
        .into_inner();
    if answer.success {
        Ok(())
    } else {
        Err(CniError::from_runtime(answer.error_kind(), answer.error))
    }
}

async fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    if conf.cni_version.starts_with("0.3") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK is not defined for cniVersion {}", conf.cni_version),
        ));
    }
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult in the network configuration",
        )
    })?;
    let mut client = connect(conf).await?;
    let answer = client
        .check_container(pb::CheckContainerRequest {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns_path: env.netns.clone(),
        })
        .await
        .map_err(|e| CniError::unreachable(&conf.runtime_address, e))?
        .into_inner();
    if !answer.success {
        return Err(CniError::from_runtime(answer.error_kind(), answer.error));
    }
    let attachment = answer.attachment.unwrap_or_default();
    if !result::lists_address(prev, &env.ifname, &attachment.address) {
        return Err(CniError::new(
            code::CHECK_FAILED,
            format!(
                "prevResult does not list address {} on {}",
                attachment.address, env.ifname
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> Env {
        Env {
            command: command.into(),
            container_id: "c1".into(),
            netns: "/run/netns/c1".into(),
            ifname: "eth0".into(),
            ..Env::default()
        }
    }

    #[test]
    fn version_lists_what_we_write() {
        let out = run(&env("VERSION"), br#"{"cniVersion":"0.4.0"}"#)
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert!(
            v["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&"1.0.0".into())
        );
    }

    #[test]
    fn bad_invocations_get_the_spec_codes() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"quilt-cni"}"#;
        let cases: Vec<(Env, &[u8], u32)> = vec![
            (env(""), conf, code::INVALID_ENVIRONMENT),
            (env("FROB"), conf, code::INVALID_ENVIRONMENT),
            (env("ADD"), b"not json", code::DECODE),
            (
                env("ADD"),
                br#"{"cniVersion":"9.9.9","type":"quilt-cni"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                env("ADD"),
                br#"{"cniVersion":"1.0.0","type":"bridge"}"#,
                code::INVALID_CONFIG,
            ),
            (
                env("ADD"),
                br#"{"cniVersion":"1.0.0","type":"quilt-cni","mtu":10}"#,
                code::INVALID_CONFIG,
            ),
            (
                env("ADD"),
                br#"{"cniVersion":"1.0.0","type":"quilt-cni","runtime_address":"tcp://x"}"#,
                code::INVALID_CONFIG,
            ),
            (
                Env {
                    container_id: String::new(),
                    ..env("ADD")
                },
                conf,
                code::INVALID_ENVIRONMENT,
            ),
            (
                Env {
                    netns: String::new(),
                    ..env("ADD")
                },
                conf,
                code::INVALID_ENVIRONMENT,
            ),
            (
                Env {
                    ifname: String::new(),
                    ..env("DEL")
                },
                conf,
                code::INVALID_ENVIRONMENT,
            ),
            (env("CHECK"), conf, code::INVALID_CONFIG),
        ];
        for (env, stdin, expected) in cases {
            let err = run(&env, stdin).unwrap_err();
            assert_eq!(
                err.code,
                expected,
                "{} {}: {err}",
                env.command,
                String::from_utf8_lossy(stdin)
            );
        }
    }

    #[test]
    fn an_unreachable_runtime_is_try_again_later() {
        let conf =
            br#"{"cniVersion":"1.0.0","type":"quilt-cni","runtime_address":"http://127.0.0.1:1"}"#;
        let err = run(&env("DEL"), conf).unwrap_err();
        assert_eq!(err.code, code::TRY_AGAIN_LATER, "{err}");
        let json: serde_json::Value = serde_json::from_str(&err.to_json("1.0.0")).unwrap();
        assert_eq!(json["code"], 11);
        assert!(json["msg"].as_str().unwrap().contains("unreachable"));
    }
}
