//! Reading a proxy's `/state` (what it still owes the target, how its
//! spool drains) from its admin port, and the decisions made from it: may
//! this pod be evicted, and does mirroring keep up. The reading is
//! [`ferry_sidecar::proxy::state::ProxyState`], the type the proxy
//! serves; the decisions are pure, so they are unit tested here.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_sidecar::proxy::state::ProxyState;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// How long one reading may take, connection included.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest `/state` body accepted.
const MAX_BODY: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no answer within {}s", READ_TIMEOUT.as_secs())]
    Timeout,
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0}")]
    Status(hyper::StatusCode),
    #[error("body: {0}")]
    Body(String),
    #[error("not a proxy state: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads the proxy state served at `admin` (the pod's IP and the proxy's
/// admin port).
pub async fn read(admin: SocketAddr) -> Result<ProxyState, ReadError> {
    tokio::time::timeout(READ_TIMEOUT, read_unbounded(admin))
        .await
        .map_err(|_| ReadError::Timeout)?
}

async fn read_unbounded(admin: SocketAddr) -> Result<ProxyState, ReadError> {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(ReadError::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let request = Request::get("/state")
        .header(hyper::header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| ReadError::Body(e.to_string()))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ReadError::Body(e.to_string()))?
        .to_bytes();
    driver.abort();
    if !status.is_success() {
        return Err(ReadError::Status(status));
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Why a pod whose proxy is in `reading` must not be evicted yet, if it
/// must not. A proxy that owes the target writes keeps its pod: the spool
/// is in the pod and would go with it. A proxy that cannot be read while
/// the kubelet finds it ready keeps it too (it is running, so it may owe
/// writes; a network policy or a wrong port must be fixed, not guessed
/// around). A proxy that is not ready (crashing, not started) drains
/// nothing by waiting: its pod may go, and its preStop hook still tries.
pub fn eviction_hold(
    pod: &str,
    sidecar_ready: bool,
    reading: &Result<ProxyState, ReadError>,
) -> Option<String> {
    match reading {
        Ok(state) if state.owed() == 0 => None,
        Ok(state) if state.source_spool_records > 0 => Some(format!(
            "the proxy of {pod} still owes {} writes ({} spooled for the target, {} for the source, {} in flight){}",
            state.owed(),
            state.spool_records,
            state.source_spool_records,
            state.mirrors_in_flight,
            stall_detail(state)
        )),
        Ok(state) => Some(format!(
            "the proxy of {pod} still owes the target {} writes ({} spooled, {} in flight){}",
            state.owed(),
            state.spool_records,
            state.mirrors_in_flight,
            stall_detail(state)
        )),
        Err(e) if sidecar_ready => Some(format!(
            "cannot read what the proxy of {pod} owes the target: {e}"
        )),
        Err(_) => None,
    }
}

/// The proxies whose spool has held writes for `after` without one of
/// them reaching the target, each with why: mirroring is behind, and the
/// target lacks writes the applications were told succeeded.
pub fn behind(
    readings: &[(String, Result<ProxyState, ReadError>)],
    after: Duration,
) -> Vec<String> {
    readings
        .iter()
        .filter_map(|(pod, reading)| {
            let state = reading.as_ref().ok()?;
            (state.spool_records > 0 && state.spool_stalled_seconds >= after.as_secs()).then(|| {
                format!(
                    "{pod}: {} spooled writes{}",
                    state.spool_records,
                    stall_detail(state)
                )
            })
        })
        .collect()
}

fn stall_detail(state: &ProxyState) -> String {
    let mut detail = String::new();
    if state.spool_stalled_seconds > 0 {
        detail += &format!(", none replayed for {}s", state.spool_stalled_seconds);
    }
    if !state.target_reachable {
        detail += ", target unreachable";
    }
    if let Some(e) = &state.last_replay_error {
        detail += &format!(", last replay error: {e}");
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owing(records: u64, stalled: u64) -> Result<ProxyState, ReadError> {
        Ok(ProxyState {
            mode: "async".into(),
            source_reachable: true,
            target_reachable: records == 0,
            spool_records: records,
            spool_stalled_seconds: stalled,
            last_replay_error: (records > 0).then(|| "target down".to_owned()),
            ..ProxyState::default()
        })
    }

    #[test]
    fn a_pod_whose_proxy_owes_writes_is_held() {
        assert_eq!(eviction_hold("c-1", true, &owing(0, 0)), None);
        let hold = eviction_hold("c-1", true, &owing(12, 40)).expect("held");
        assert!(hold.contains("owes the target 12 writes"), "{hold}");
        assert!(hold.contains("target down"), "{hold}");
        let in_flight = Ok(ProxyState {
            mirrors_in_flight: 2,
            ..ProxyState::default()
        });
        assert!(eviction_hold("c-1", true, &in_flight).is_some());
    }

    #[test]
    fn an_unreadable_proxy_holds_its_pod_only_while_it_runs() {
        let unreadable = || Err(ReadError::Timeout);
        assert!(eviction_hold("c-1", true, &unreadable()).is_some());
        assert_eq!(eviction_hold("c-1", false, &unreadable()), None);
    }

    #[test]
    fn only_a_spool_stalled_long_enough_is_behind() {
        let readings = vec![
            ("c-0".to_owned(), owing(0, 0)),
            ("c-1".to_owned(), owing(5, 30)),
            ("c-2".to_owned(), owing(7, 200)),
            ("c-3".to_owned(), Err(ReadError::Timeout)),
        ];
        let behind = behind(&readings, Duration::from_secs(120));
        assert_eq!(behind.len(), 1, "{behind:?}");
        assert!(behind[0].starts_with("c-2: 7 spooled writes"), "{behind:?}");
    }
}
