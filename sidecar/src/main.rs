//! `ferry-sidecar`: Ferry's data plane, one binary with three modes.
//!
//! - `proxy`: the dual-write CQL proxy injected next to each source node.
//! - `backfill`: copies historical data token range by token range (a Job).
//! - `validate`: compares source and target, optionally repairing (a Job).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_sidecar::{bulk, proxy};

/// mimalloc rather than musl's allocator (the images are static musl
/// binaries): at 10M rows it cut the backfill's own CPU per row by 28 %
/// and the validation's by half, much of it the system calls musl's
/// allocator makes to map and unmap memory, and it leaves the proxy's RSS
/// where musl's had it once huge pages are off (docs/benchmarks.md, "The
/// allocator, and 10M rows"). Built without transparent huge pages
/// (`no_thp`); see also [`without_huge_pages`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process, before anything
/// else allocates much. With them, each 2 MiB region the allocator
/// touches can become resident whole (the proxy's RSS with 100
/// connections rose by 40 %); on nodes whose THP setting is `always` the
/// kernel would use them even though the allocator does not ask.
fn without_huge_pages() -> std::io::Result<()> {
    let (disable, unused) = (1 as libc::c_ulong, 0 as libc::c_ulong);
    // SAFETY: PR_SET_THP_DISABLE reads four integer arguments, passed at
    // the width the kernel reads them, and changes only this process's
    // memory policy.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, disable, unused, unused, unused) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "ferry-sidecar",
    version,
    about = "Ferry's data plane: CQL proxy, backfill and validation"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Dual-write CQL proxy: forwards to the source node, mirrors writes to the target.
    Proxy(proxy::ProxyArgs),
    /// Copy historical data from the source to the target, token range by token range.
    Backfill(bulk::BackfillArgs),
    /// Compare source and target and report (or repair) differences.
    Validate(bulk::ValidateArgs),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("FERRY_LOG_FORMAT").is_ok_and(|f| f == "json");
    // Colours only on a terminal: in a pod the escapes would litter the logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The async runtime's threads: `FERRY_WORKER_THREADS` when set, else one
/// per core for the proxy and one for the Jobs (`None`: one per core). 1
/// runs every task on one thread (tokio's current-thread runtime): no
/// cross-thread wake-ups, which a sidecar handling a modest rate pays for on
/// every request. The Jobs' client work is a small share of what a row
/// costs, and a Job scales by its pods (`backfill.parallelism`); on one
/// thread the backfill spent 1.7 CPU µs a row instead of 2.4 and its peak
/// RSS fell from 63 to 45 MiB (docs/benchmarks.md).
fn worker_threads(mode: &Mode) -> Option<usize> {
    let configured = std::env::var("FERRY_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0);
    configured.or(match mode {
        Mode::Proxy(_) => None,
        Mode::Backfill(_) | Mode::Validate(_) => Some(1),
    })
}

fn runtime_builder(workers: Option<usize>) -> tokio::runtime::Builder {
    match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    }
}

fn main() -> ExitCode {
    let huge_pages_off = without_huge_pages();
    let cli = Cli::parse();
    init_tracing();
    if let Err(err) = huge_pages_off {
        tracing::warn!(error = %err, "could not turn transparent huge pages off; the RSS may be larger");
    }
    // The scylla driver turns on rustls' aws-lc-rs provider and our own TLS
    // uses ring: with both compiled in, rustls needs the process to choose.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match runtime_builder(worker_threads(&cli.mode))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.mode {
            Mode::Proxy(args) => proxy::run(args).await,
            Mode::Backfill(args) => bulk::backfill(args).await,
            Mode::Validate(args) => bulk::validate(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(bulk::exit_code(&err))
        }
    }
}
