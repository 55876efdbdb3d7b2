//! `ferry-operator`: the CassandraMigration controller and sidecar webhook.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use ferry_operator::crdgen;

#[derive(Parser, Debug)]
#[command(
    name = "ferry-operator",
    version,
    about = "Ferry: live Cassandra migrations on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CassandraMigration CRD as YAML, or write every committed copy.
    Crd {
        /// Write the CRD into crds/ and charts/ferry/crds/ under this repository root.
        #[arg(long, value_name = "REPO_ROOT")]
        write: Option<PathBuf>,
    },
    /// Run the controller and the sidecar-injection webhook.
    Run,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { write: None } => {
            print!("{}", crdgen::render()?);
            Ok(())
        }
        Command::Crd { write: Some(root) } => {
            let yaml = crdgen::render()?;
            for rel in crdgen::CRD_PATHS {
                let path = root.join(rel);
                std::fs::write(&path, &yaml).with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Run => bail!(
            "`ferry-operator run` is not implemented yet: the controller and webhook land with the operator issue"
        ),
    }
}
