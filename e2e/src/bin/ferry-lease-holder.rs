//! A test helper: one replica of the operator's leader election, as its own
//! process so a test can pause it (SIGSTOP) as a stalled node would. While
//! it may act ([`Leadership::is_leading`], the check the controller makes
//! before each reconcile, status write and eviction) it prints
//! `acting <unix ms>` every 50 ms; when `hold` gives up it prints
//! `lost <why>` and exits.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ferry_operator::leader::{LeaderElection, Timing};

#[derive(Parser)]
struct Args {
    kubeconfig: PathBuf,
    namespace: String,
    identity: String,
    /// The lease duration; the deadline and retry period follow it.
    lease_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = ferry_e2e::kube_client::client(&args.kubeconfig).await?;
    let election = LeaderElection::new(
        client,
        &args.namespace,
        "ferry-operator-leader",
        &args.identity,
        Timing::for_lease(Duration::from_millis(args.lease_ms)),
    );
    election.acquire().await?;
    let leadership = election.leadership();
    let actor = async {
        loop {
            if leadership.is_leading() {
                let at = jiff::Timestamp::now().as_millisecond();
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "acting {at}");
                let _ = out.flush();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        why = election.hold() => {
            println!("lost {why}");
        }
        () = actor => {}
    }
    Ok(())
}
