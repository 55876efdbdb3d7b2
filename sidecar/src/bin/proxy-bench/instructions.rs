//! User-space instructions per request (`--callgrind`): the proxy and the
//! relay run under valgrind's callgrind, whose counters are zeroed before a
//! phase and dumped after it. CPU time on a machine shared with four JVMs
//! moves by a third between rounds; an instruction count moves by a few per
//! cent, so a change to the forwarding path shows in it where it would be
//! lost in CPU time. Kernel work (system calls, wake-ups) is not counted:
//! the CPU-time columns of an ordinary run give that.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// Where callgrind writes its dumps, and how to drive it.
pub struct Callgrind {
    dir: PathBuf,
}

impl Callgrind {
    /// Dumps go to `dir` (created).
    pub fn new(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// A command that runs `program` under callgrind.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg(format!(
                "--callgrind-out-file={}/callgrind.%p",
                self.dir.display()
            ))
            .arg(program);
        command
    }

    /// Zeroes the counters of process `pid`.
    pub fn zero(&self, pid: u32) -> anyhow::Result<()> {
        control(&["-z", &pid.to_string()])
    }

    /// Dumps process `pid`'s counts since the last zero as `label`; returns
    /// the instructions they hold.
    pub fn dump(&self, pid: u32, label: &str) -> anyhow::Result<u64> {
        control(&["-d", label, &pid.to_string()])?;
        let prefix = format!("callgrind.{pid}.");
        let trigger = format!("desc: Trigger: dump {label}");
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let named = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix));
            if !named {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            if !text.lines().any(|l| l == trigger) {
                continue;
            }
            return ferry_sidecar::procstat::callgrind_instructions(&text)
                .with_context(|| format!("no totals in {}", path.display()));
        }
        anyhow::bail!("callgrind wrote no dump {label:?} for process {pid}")
    }
}

fn control(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("callgrind_control")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running callgrind_control (valgrind is needed for --callgrind)")?;
    anyhow::ensure!(status.success(), "callgrind_control {args:?}: {status}");
    Ok(())
}
