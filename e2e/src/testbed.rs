//! Finding, and when needed starting, the local test bed.
//!
//! The bed is started by `e2e/testbed/up.sh` (the same script `make testbed`
//! runs), which writes `$FERRY_RUN/testbed.env`; this module runs the script
//! and reads that file. Nothing here fakes a part: when the bed cannot start,
//! the caller gets the script's error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Where the running test bed's parts listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Testbed {
    /// Source cluster contact points, `ip:port`, one per running node.
    pub source_contact_points: Vec<String>,
    /// The source cluster's datacenter name.
    pub source_datacenter: String,
    /// Target cluster contact points, `ip:port`.
    pub target_contact_points: Vec<String>,
    /// The target cluster's datacenter name.
    pub target_datacenter: String,
    /// Admin kubeconfig of the local Kubernetes control plane.
    pub kubeconfig: PathBuf,
    /// Folder of the test bed's binaries (kubectl, helm, etcd, ...).
    pub bin_dir: PathBuf,
    /// The secure node (password authentication, client TLS), when running.
    pub secure: Option<SecureNode>,
    /// The older Cassandra's node (`up.sh --older`), when running.
    pub older: Option<OlderNode>,
}

/// A single-node cluster of an older Cassandra (4.1 by default), a source
/// for the cross-version tests (`up.sh --older`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OlderNode {
    pub contact_point: String,
    pub datacenter: String,
    /// Its Cassandra version, e.g. `4.1.10`.
    pub version: String,
}

/// The test bed's single-node cluster with password authentication (user
/// `cassandra`, password `cassandra`) and client TLS (`up.sh --secure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureNode {
    /// `ip:port`; the port takes TLS and, optionally, plain CQL.
    pub contact_point: String,
    pub datacenter: String,
    /// The CA (PEM) that signed the node's certificate.
    pub ca_file: PathBuf,
}

/// Why the test bed could not be brought up or read.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("running {script}: {source}")]
    Spawn {
        script: PathBuf,
        source: std::io::Error,
    },
    #[error("{script} failed ({status}); its last output:\n{output}")]
    Script {
        script: PathBuf,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("reading {path}: {source}")]
    Env {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} lacks {key}")]
    MissingKey { path: PathBuf, key: &'static str },
}

/// The repository root (every crate lives one level below it).
///
/// `cargo test` and `cargo run` set `CARGO_MANIFEST_DIR` at run time too;
/// that one is tried first. The compile-time value is the clone that built
/// the binary, and with a shared `CARGO_TARGET_DIR` a build made in one clone
/// is reused by another whose sources are older, so it may point at a clone
/// that is gone.
pub fn repo_root() -> PathBuf {
    let runtime = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    runtime
        .into_iter()
        .chain([built.clone()])
        .filter_map(|dir| dir.parent().map(Path::to_path_buf))
        .find(|root| root.join("e2e/testbed/up.sh").is_file())
        .or_else(|| built.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// `$FERRY_RUN`, as `e2e/testbed/lib.sh` computes it.
pub fn run_dir() -> PathBuf {
    if let Some(run) = std::env::var_os("FERRY_RUN") {
        return PathBuf::from(run);
    }
    cache_dir().join("run")
}

/// `$FERRY_CACHE`, as `e2e/testbed/lib.sh` computes it.
pub fn cache_dir() -> PathBuf {
    if let Some(cache) = std::env::var_os("FERRY_CACHE") {
        return PathBuf::from(cache);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/ferry")
}

// Test binaries run in parallel; up.sh holds a file lock too, but this keeps
// one process from spawning it many times at once.
static UP: Mutex<()> = Mutex::new(());

/// Brings up the two Cassandra clusters (the source with at least
/// `source_nodes` nodes) if they are not running, and returns the bed.
pub fn cassandra(source_nodes: u8) -> Result<Testbed, TestbedError> {
    up(&[
        "--no-k8s".to_owned(),
        "--source-nodes".to_owned(),
        source_nodes.to_string(),
    ])
}

/// Brings up the two Cassandra clusters and the secure node if they are not
/// running, and returns the bed (its `secure` is then set).
pub fn secure() -> Result<Testbed, TestbedError> {
    up(&["--no-k8s".to_owned(), "--secure".to_owned()])
}

/// Brings up the two Cassandra clusters and the older Cassandra's node if
/// they are not running, and returns the bed (its `older` is then set).
pub fn older() -> Result<Testbed, TestbedError> {
    up(&["--no-k8s".to_owned(), "--older".to_owned()])
}

/// Brings up the Kubernetes control plane if it is not running.
pub fn kubernetes() -> Result<Testbed, TestbedError> {
    up(&["--no-cassandra".to_owned()])
}

/// Brings up the Kubernetes control plane and a real node where pods run
/// (`up.sh --node`: containerd, kubelet, kube-scheduler, kube-proxy, CoreDNS),
/// with the pause and Cassandra images imported, if they are not running.
pub fn node() -> Result<Testbed, TestbedError> {
    up(&["--no-cassandra".to_owned(), "--node".to_owned()])
}

fn up(args: &[String]) -> Result<Testbed, TestbedError> {
    let _guard = UP.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let script = repo_root().join("e2e/testbed/up.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .map_err(|source| TestbedError::Spawn {
            script: script.clone(),
            source,
        })?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        let tail: Vec<&str> = output.lines().rev().take(30).collect();
        return Err(TestbedError::Script {
            script,
            status: out.status,
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    read_env(&run_dir().join("testbed.env"))
}

/// Parses `testbed.env` (KEY=VALUE lines).
pub fn read_env(path: &Path) -> Result<Testbed, TestbedError> {
    let text = std::fs::read_to_string(path).map_err(|source| TestbedError::Env {
        path: path.to_path_buf(),
        source,
    })?;
    let vars: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let get = |key: &'static str| {
        vars.get(key)
            .map(|v| v.to_string())
            .ok_or_else(|| TestbedError::MissingKey {
                path: path.to_path_buf(),
                key,
            })
    };
    let list = |v: String| -> Vec<String> {
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Ok(Testbed {
        source_contact_points: list(get("FERRY_SOURCE_CONTACT_POINTS")?),
        source_datacenter: get("FERRY_SOURCE_DATACENTER")?,
        target_contact_points: list(get("FERRY_TARGET_CONTACT_POINTS")?),
        target_datacenter: get("FERRY_TARGET_DATACENTER")?,
        kubeconfig: PathBuf::from(get("FERRY_KUBECONFIG")?),
        bin_dir: PathBuf::from(get("FERRY_BIN")?),
        secure: match (
            vars.get("FERRY_SECURE_CONTACT_POINTS"),
            vars.get("FERRY_SECURE_DATACENTER"),
            vars.get("FERRY_SECURE_CA_FILE"),
        ) {
            (Some(cp), Some(dc), Some(ca)) => Some(SecureNode {
                contact_point: cp.to_string(),
                datacenter: dc.to_string(),
                ca_file: PathBuf::from(ca),
            }),
            _ => None,
        },
        older: match (
            vars.get("FERRY_OLDER_CONTACT_POINTS"),
            vars.get("FERRY_OLDER_DATACENTER"),
            vars.get("FERRY_OLDER_VERSION"),
        ) {
            (Some(cp), Some(dc), Some(v)) => Some(OlderNode {
                contact_point: cp.to_string(),
                datacenter: dc.to_string(),
                version: v.to_string(),
            }),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_testbed_env_file() {
        let dir = std::env::temp_dir().join(format!("ferry-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("testbed.env");
        std::fs::write(
            &path,
            "FERRY_SOURCE_CONTACT_POINTS=127.0.0.11:9042,127.0.0.12:9042\nFERRY_SOURCE_DATACENTER=source-dc\nFERRY_TARGET_CONTACT_POINTS=127.0.0.21:9042\nFERRY_TARGET_DATACENTER=target-dc\nFERRY_KUBECONFIG=/k\nFERRY_BIN=/b\n",
        )
        .unwrap();
        let bed = read_env(&path).unwrap();
        assert_eq!(
            bed.source_contact_points,
            vec!["127.0.0.11:9042", "127.0.0.12:9042"]
        );
        assert_eq!(bed.target_datacenter, "target-dc");
        assert_eq!(bed.secure, None);
        let with_secure = "FERRY_SOURCE_CONTACT_POINTS=a:1\nFERRY_SOURCE_DATACENTER=s\nFERRY_TARGET_CONTACT_POINTS=b:1\nFERRY_TARGET_DATACENTER=t\nFERRY_KUBECONFIG=/k\nFERRY_BIN=/b\nFERRY_SECURE_CONTACT_POINTS=127.0.0.23:9042\nFERRY_SECURE_DATACENTER=secure-dc\nFERRY_SECURE_CA_FILE=/ca.pem\n";
        std::fs::write(&path, with_secure).unwrap();
        let secure = read_env(&path).unwrap().secure.expect("secure node");
        assert_eq!(secure.contact_point, "127.0.0.23:9042");
        assert_eq!(secure.ca_file, PathBuf::from("/ca.pem"));
        std::fs::write(&path, "FERRY_SOURCE_DATACENTER=x\n").unwrap();
        assert!(matches!(
            read_env(&path),
            Err(TestbedError::MissingKey { .. })
        ));
    }
}
