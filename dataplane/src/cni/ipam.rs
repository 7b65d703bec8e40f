//! Delegation to the IPAM plugin the configuration names (`ipam.type`,
//! found in `CNI_PATH`), as the spec has a plugin call another: the same
//! environment with this command, the same configuration on stdin.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{code, find_in, CniEnv, CniError};

/// Runs the IPAM plugin for `command`; its result (ADD) or `Null`.
pub(super) fn delegate(
    env: &CniEnv,
    command: &str,
    ipam: &Value,
    stdin: &str,
) -> Result<Value, CniError> {
    let Some(kind) = ipam["type"].as_str() else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "the ipam section has no \"type\"",
        ));
    };
    let Some(plugin) = find_in(&env.path, kind) else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "IPAM plugin {kind:?} not found in CNI_PATH ({}); on Debian, `apt install containernetworking-plugins` puts it in /usr/lib/cni",
                env.path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
            ),
        ));
    };
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(code::IO, format!("running {}: {e}", plugin.display())))?;
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::IO, format!("running {}: {e}", plugin.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let said: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        let msg = said["msg"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        return Err(CniError::new(
            code::IPAM,
            format!("IPAM plugin {kind} ({command}) failed: {msg}"),
        ));
    }
    if command != "ADD" {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| {
        CniError::new(
            code::IPAM,
            format!("IPAM plugin {kind} answered what is not a result: {e}"),
        )
    })
}
