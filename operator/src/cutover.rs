//! Cut-over and roll-back: which stage the operator may apply now, what the
//! proxies must then do, and whether they all do it. Pure, so every rule is
//! unit tested here; the controller reads the proxies and writes the
//! runtime ConfigMap.
//!
//! A stage reaches the proxies through the runtime ConfigMap they already
//! watch (mode and shadow-read percentage): no restart, no reconnect. It
//! counts as done only once every proxy says on `/state` that it serves it.

use ferry_sidecar::proxy::state::ProxyState;

use crate::crd::{CassandraMigration, CassandraMigrationStatus, CutoverStage, Phase, WriteMode};
use crate::proxy_state::ReadError;

/// What the proxies run for a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySetting {
    /// The proxy's mode name (`sync`, `async`, `target-primary`,
    /// `target-primary-async`).
    pub mode: &'static str,
    pub shadow_read_percent: u64,
}

/// The proxies' setting for `stage`.
pub fn proxy_setting(stage: CutoverStage, cm: &CassandraMigration) -> ProxySetting {
    let mirror = match cm.spec.proxy.write_mode {
        WriteMode::Sync => "sync",
        WriteMode::Async => "async",
    };
    match stage {
        CutoverStage::Mirror => ProxySetting {
            mode: mirror,
            shadow_read_percent: 0,
        },
        CutoverStage::ShadowReads => ProxySetting {
            mode: mirror,
            shadow_read_percent: cm.spec.cutover.shadow_read_percent.clamp(1, 100) as u64,
        },
        // Done keeps target-primary on the proxies not taken out yet: the
        // clients still on them go on being served by the target. The
        // source's copy is synchronous or not as the target's was.
        CutoverStage::TargetPrimary | CutoverStage::Done => ProxySetting {
            mode: match cm.spec.proxy.write_mode {
                WriteMode::Sync => "target-primary",
                WriteMode::Async => "target-primary-async",
            },
            shadow_read_percent: 0,
        },
    }
}

/// The stage a migration has applied (`mirror` before any).
pub fn applied(status: Option<&CassandraMigrationStatus>) -> CutoverStage {
    status
        .and_then(|s| s.cutover.as_ref())
        .map(|c| c.stage)
        .unwrap_or_default()
}

/// Whether the migration's proxies are being taken out for good (cut-over
/// `done`): the webhook no longer injects them.
pub fn proxies_leaving(cm: &CassandraMigration) -> bool {
    applied(cm.status.as_ref()) == CutoverStage::Done
        || cm
            .status
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Complete)
}

/// Why a requested stage is not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// What the controller knows when a stage is requested.
#[derive(Debug, Clone)]
pub struct Facts {
    pub phase: Phase,
    /// The last validation found no difference (`Validated=True`).
    pub validated: bool,
    /// Why writes may be missing from the target now
    /// ([`crate::status::unsafe_reason`]).
    pub unsafe_reason: Option<String>,
    /// Client connections through the proxies, summed; `None` when a proxy
    /// could not be read.
    pub client_connections: Option<u64>,
    pub force: bool,
}

/// Whether `requested` may be applied, coming from `applied`.
pub fn decide(
    requested: CutoverStage,
    applied: CutoverStage,
    facts: &Facts,
) -> Result<CutoverStage, Refusal> {
    if requested == applied {
        return Ok(applied);
    }
    if applied == CutoverStage::Done {
        return Err(Refusal {
            reason: "AlreadyDone",
            message: "the cut-over is done; it cannot go back".to_owned(),
        });
    }
    if facts.phase != Phase::Ready {
        return Err(Refusal {
            reason: "NotReady",
            message: format!(
                "stage {requested} waits for the migration to be Ready (it is {})",
                facts.phase
            ),
        });
    }
    // Going back, or shadow reads: nothing the target must hold yet.
    if requested <= CutoverStage::ShadowReads {
        return Ok(requested);
    }
    if !facts.validated {
        return Err(Refusal {
            reason: "NotValidated",
            message: format!("stage {requested} needs a validation that found no difference"),
        });
    }
    if let Some(why) = &facts.unsafe_reason {
        return Err(Refusal {
            reason: "Unsafe",
            message: format!("stage {requested} waits: {why}"),
        });
    }
    if requested == CutoverStage::Done && !facts.force {
        match facts.client_connections {
            Some(0) => {}
            Some(n) => {
                return Err(Refusal {
                    reason: "ClientsConnected",
                    message: format!(
                        "{n} client connections still go through the proxies: move the applications to the target first (or set cutover.force)"
                    ),
                })
            }
            None => {
                return Err(Refusal {
                    reason: "ClientsUnknown",
                    message: "cannot read every proxy's client connections (or set cutover.force)"
                        .to_owned(),
                })
            }
        }
    }
    Ok(requested)
}

/// The pods whose proxy does not serve `want` yet, each with what it
/// serves (or why it could not be read).
pub fn lagging(
    readings: &[(String, Result<ProxyState, ReadError>)],
    want: ProxySetting,
) -> Vec<String> {
    readings
        .iter()
        .filter_map(|(pod, reading)| match reading {
            Ok(s) if s.mode != want.mode || s.shadow_read_percent != want.shadow_read_percent => {
                Some(format!(
                    "{pod} serves {} with {}% shadow reads",
                    s.mode, s.shadow_read_percent
                ))
            }
            // Back from target-primary-async: the source is the primary
            // again only once it has every write the target took meanwhile.
            Ok(s) if s.source_spool_records > 0 && !want.mode.starts_with("target-primary") => {
                Some(format!(
                    "{pod} still owes the source {} writes made while the target was primary{}",
                    s.source_spool_records,
                    if s.source_spool_stalled_seconds > 0 {
                        format!(", none replayed for {}s", s.source_spool_stalled_seconds)
                    } else {
                        String::new()
                    }
                ))
            }
            Ok(_) => None,
            Err(e) => Some(format!("{pod}: {e}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Facts {
        Facts {
            phase: Phase::Ready,
            validated: true,
            unsafe_reason: None,
            client_connections: Some(0),
            force: false,
        }
    }

    use CutoverStage::*;

    #[test]
    fn target_primary_needs_ready_and_a_clean_validation() {
        assert_eq!(decide(TargetPrimary, Mirror, &ready()), Ok(TargetPrimary));
        let validating = Facts {
            phase: Phase::Validating,
            ..ready()
        };
        assert_eq!(
            decide(TargetPrimary, Mirror, &validating).map_err(|r| r.reason),
            Err("NotReady")
        );
        let unvalidated = Facts {
            validated: false,
            ..ready()
        };
        assert_eq!(
            decide(TargetPrimary, Mirror, &unvalidated).map_err(|r| r.reason),
            Err("NotValidated")
        );
        let behind = Facts {
            unsafe_reason: Some("c-1: 5 spooled writes".into()),
            ..ready()
        };
        assert_eq!(
            decide(TargetPrimary, ShadowReads, &behind).map_err(|r| r.reason),
            Err("Unsafe")
        );
    }

    #[test]
    fn going_back_is_always_allowed_but_never_out_of_done() {
        let unvalidated = Facts {
            validated: false,
            ..ready()
        };
        assert_eq!(decide(Mirror, TargetPrimary, &unvalidated), Ok(Mirror));
        assert_eq!(
            decide(ShadowReads, TargetPrimary, &ready()),
            Ok(ShadowReads)
        );
        assert_eq!(
            decide(Mirror, Done, &ready()).map_err(|r| r.reason),
            Err("AlreadyDone")
        );
        assert_eq!(decide(Done, Done, &ready()), Ok(Done));
    }

    #[test]
    fn done_waits_for_the_clients_to_leave_unless_forced() {
        let connected = Facts {
            client_connections: Some(3),
            ..ready()
        };
        let refusal = decide(Done, TargetPrimary, &connected).unwrap_err();
        assert_eq!(refusal.reason, "ClientsConnected");
        assert!(refusal.message.contains("3 client connections"));
        let unknown = Facts {
            client_connections: None,
            ..ready()
        };
        assert_eq!(
            decide(Done, TargetPrimary, &unknown).map_err(|r| r.reason),
            Err("ClientsUnknown")
        );
        let forced = Facts {
            force: true,
            ..connected
        };
        assert_eq!(decide(Done, TargetPrimary, &forced), Ok(Done));
        assert_eq!(decide(Done, TargetPrimary, &ready()), Ok(Done));
    }

    #[test]
    fn a_proxy_lags_until_it_serves_the_mode_and_the_percentage() {
        let want = ProxySetting {
            mode: "sync",
            shadow_read_percent: 10,
        };
        let state = |mode: &str, pct| {
            Ok(ProxyState {
                mode: mode.into(),
                shadow_read_percent: pct,
                ..ProxyState::default()
            })
        };
        let readings = vec![
            ("c-0".to_owned(), state("sync", 10)),
            ("c-1".to_owned(), state("sync", 0)),
            ("c-2".to_owned(), state("target-primary", 10)),
            ("c-3".to_owned(), Err(ReadError::Timeout)),
        ];
        let lag = lagging(&readings, want);
        assert_eq!(lag.len(), 3, "{lag:?}");
        assert!(lag[0].starts_with("c-1 serves sync with 0%"), "{lag:?}");
    }

    /// Back from `target-primary-async`, a proxy that still owes the source
    /// writes made while the target was primary has not finished the
    /// switch: the source is not whole yet, and the reverse check waits.
    #[test]
    fn a_roll_back_is_not_confirmed_while_a_proxy_owes_the_source() {
        let owing = |mode: &str, records| {
            Ok(ProxyState {
                mode: mode.into(),
                source_spool_records: records,
                source_spool_stalled_seconds: 7,
                ..ProxyState::default()
            })
        };
        let back = ProxySetting {
            mode: "async",
            shadow_read_percent: 0,
        };
        let readings = vec![
            ("c-0".to_owned(), owing("async", 0)),
            ("c-1".to_owned(), owing("async", 12)),
        ];
        let lag = lagging(&readings, back);
        assert_eq!(
            lag,
            vec!["c-1 still owes the source 12 writes made while the target was primary, none replayed for 7s"]
        );
        // While the target is primary, owing the source is the normal state.
        let primary = ProxySetting {
            mode: "target-primary-async",
            shadow_read_percent: 0,
        };
        let readings = vec![("c-1".to_owned(), owing("target-primary-async", 12))];
        assert!(lagging(&readings, primary).is_empty());
    }

    #[test]
    fn the_target_primary_mode_follows_the_write_mode() {
        let spec: crate::crd::CassandraMigrationSpec = serde_json::from_value(serde_json::json!({
            "source": {"statefulSet": "cassandra"},
            "target": {"contactPoints": ["10.0.0.2:9042"], "localDatacenter": "dc1"},
        }))
        .expect("a spec");
        let mut cm = CassandraMigration::new("m", spec);
        cm.spec.proxy.write_mode = WriteMode::Sync;
        assert_eq!(
            proxy_setting(CutoverStage::TargetPrimary, &cm).mode,
            "target-primary"
        );
        cm.spec.proxy.write_mode = WriteMode::Async;
        assert_eq!(
            proxy_setting(CutoverStage::TargetPrimary, &cm).mode,
            "target-primary-async"
        );
        assert_eq!(
            proxy_setting(CutoverStage::Done, &cm).mode,
            "target-primary-async"
        );
        assert_eq!(proxy_setting(CutoverStage::Mirror, &cm).mode, "async");
    }
}
