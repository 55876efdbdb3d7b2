//! Stopping one node of the shared test bed on purpose, and always starting
//! it again: a file lock per node keeps two test binaries from stopping the
//! same node at once, and the guard restarts the node when dropped, even
//! when the test failed.

use std::fs::File;
use std::process::Command;

/// How `cassandra.sh start` brings a node of the bed up.
#[derive(Debug, Clone, Copy)]
pub struct BedNode {
    pub name: &'static str,
    pub ip: &'static str,
    pub cluster: &'static str,
    pub dc: &'static str,
    pub seeds: &'static str,
}

/// The target cluster's one node.
pub const TARGET1: BedNode = BedNode {
    name: "target1",
    ip: "127.0.0.21",
    cluster: "ferry-target",
    dc: "target-dc",
    seeds: "127.0.0.21",
};

/// The third node of the source cluster (no proxy test fronts it).
pub const SOURCE3: BedNode = BedNode {
    name: "source3",
    ip: "127.0.0.13",
    cluster: "ferry-source",
    dc: "source-dc",
    seeds: "127.0.0.11",
};

fn cassandra_sh(args: &[&str]) -> bool {
    let script = ferry_e2e::testbed::repo_root().join("e2e/testbed/cassandra/cassandra.sh");
    Command::new("bash")
        .arg(script)
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Holds a node's restart lock; starts the node again when dropped.
pub struct NodeOutage {
    node: BedNode,
    _lock: File,
    stopped: bool,
}

impl NodeOutage {
    pub fn lock(node: BedNode) -> Self {
        let path = ferry_e2e::testbed::run_dir().join(format!("{}-restart.lock", node.name));
        let file = File::create(&path).expect("lock file");
        file.lock().expect("node restart lock");
        Self {
            node,
            _lock: file,
            stopped: false,
        }
    }

    pub fn stop(&mut self) {
        self.stopped = true;
        assert!(
            cassandra_sh(&["stop", self.node.name]),
            "stopping {}",
            self.node.name
        );
    }

    pub fn start(&mut self) {
        assert!(self.start_node(), "starting {}", self.node.name);
        self.stopped = false;
    }

    fn start_node(&self) -> bool {
        let n = self.node;
        cassandra_sh(&["start", n.name, n.ip, n.cluster, n.dc, n.seeds])
            && cassandra_sh(&["wait", n.name, n.ip])
    }
}

impl Drop for NodeOutage {
    fn drop(&mut self) {
        if self.stopped {
            self.start_node();
        }
    }
}
