//! What every connection of one proxy shares: the settings, the metrics,
//! the prepared statements, the spool, and the promises made of it.

use super::*;

/// Everything the connections of one proxy share.
pub struct ProxyContext {
    pub metrics: Metrics,
    pub prepared: PreparedCache,
    pub mode: ModeCell,
    pub peers: RwLock<Arc<PeerMap>>,
    pub filter: MirrorFilter,
    /// Writes owed to the target (`async`).
    pub spool: Arc<Spool>,
    /// Writes owed to the source (`target-primary-async`), in the spool
    /// directory's `to-source`.
    pub source_spool: Arc<Spool>,
    pub spool_full_policy: SpoolFullPolicy,
    pub source: Endpoint,
    pub target: Endpoint,
    /// `--target-username[-file]/--target-password[-file]`, else the
    /// clients' own; files are read at each login.
    pub target_credentials: Option<crate::proxy::credentials::TargetCredentials>,
    /// The last handshake a client made, for the replayer's own link
    /// (with the target's credentials).
    pub last_handshake: Mutex<Option<Handshake>>,
    /// The same with the client's own credentials, for the link of the
    /// replayer that owes the source.
    pub last_source_handshake: Mutex<Option<Handshake>>,
    pub target_timeout: Duration,
    pub async_retries: u32,
    pub retry_backoff: Duration,
    pub max_frame_bytes: usize,
    pub protocol_version_cap: u8,
    pub cql_version: Option<String>,
    /// Follow schema changes on the target (`--mirror-ddl`, the runtime
    /// file's `mirrorDdl`).
    pub mirror_ddl: AtomicBool,
    /// Replication of keyspaces created through the proxy, on the target.
    pub target_replication: RwLock<Option<Arc<str>>>,
    /// Percentage of reads also sent to the target and compared.
    pub shadow_read_percent: std::sync::atomic::AtomicU64,
    pub read_counter: std::sync::atomic::AtomicU64,
    pub shutting_down: AtomicBool,
    pub mirrors_inflight: AtomicUsize,
    /// How the spool's drain is going (`/state`, the stalled gauge).
    pub replay_progress: super::ReplayProgress,
    /// The same for `source_spool`.
    pub source_replay_progress: super::ReplayProgress,
    /// Heartbeat interval on target links (`--heartbeat-secs`; None: off).
    pub heartbeat: Option<Duration>,
    /// Spooled writes replayed at once (`--replay-window`).
    pub replay_window: usize,
    /// Async mode's bound on `mirrors_inflight` (`--mirror-max-in-flight`).
    pub mirror_permits: Arc<tokio::sync::Semaphore>,
    pub source_reachable: AtomicBool,
    pub target_reachable: AtomicBool,
    /// Source node this proxy fronts → its advertised address.
    pub self_peer: Option<(std::net::IpAddr, std::net::SocketAddr)>,
}

impl ProxyContext {
    pub fn peers(&self) -> Arc<PeerMap> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn mode(&self) -> Mode {
        self.mode.get()
    }

    /// The spool of writes owed to `toward`.
    pub fn spool_toward(&self, toward: Toward) -> &Arc<Spool> {
        match toward {
            Toward::Target => &self.spool,
            Toward::Source => &self.source_spool,
        }
    }

    /// How the drain of the spool owed to `toward` is going.
    pub fn replay_progress_toward(&self, toward: Toward) -> &super::ReplayProgress {
        match toward {
            Toward::Target => &self.replay_progress,
            Toward::Source => &self.source_replay_progress,
        }
    }

    /// Room in the spool owed to `toward` for `req`, promised before the
    /// primary is sent it (`reject-writes`: `Err` when there is none, and
    /// the application's write must be refused); `Ok(None)` under
    /// `drop-target-writes`.
    pub fn spool_room(
        &self,
        req: &MirrorRequest,
        toward: Toward,
    ) -> Result<Option<Reservation>, SpoolFull> {
        if self.spool_full_policy != SpoolFullPolicy::RejectWrites {
            return Ok(None);
        }
        let bytes = Reservation::size_of(
            req.body.len(),
            req.statements.iter().map(|(id, s)| {
                id.len() + s.query.len() + s.keyspace.as_ref().map_or(0, String::len)
            }),
        );
        self.spool_toward(toward)
            .reserve(bytes)
            .map(Some)
            .ok_or(SpoolFull)
    }
}

/// The cluster a mirrored write is owed to: the target, except in
/// `target-primary-async`, where the target answers and the source gets
/// the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    Target,
    Source,
}

impl Toward {
    pub fn name(self) -> &'static str {
        match self {
            Self::Target => "target",
            Self::Source => "source",
        }
    }
}

/// The spool cannot promise room for one more write.
#[derive(Debug)]
pub struct SpoolFull;

/// What an async-mode write holds until it is on the target or in the
/// spool: its place among the mirrors in flight and its room in the spool.
#[derive(Default)]
pub struct MirrorHold {
    pub permit: Option<OwnedSemaphorePermit>,
    pub room: Option<Reservation>,
}
