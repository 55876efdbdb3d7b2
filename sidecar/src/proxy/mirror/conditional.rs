//! A conditional write the first cluster applied and the second did not,
//! in the async modes. The client's writes just before it were mirrored in
//! the background, through this proxy or another (drivers spread a
//! client's requests over the nodes), and may not have reached the second
//! cluster yet; its condition read the state they are about to change
//! (stop 28's local CI: `UPDATE ... IF v = 1` right after the row's INSERT
//! applied on the source only). Timestamps cannot order it: Paxos gives a
//! conditional write the time it is applied. So it is sent again after
//! short pauses, until the second cluster applies it or the pauses run
//! out. The client is still waiting for it (ordered writes answer once
//! both clusters have them), so the writes it makes after hearing cannot
//! overtake it. The risk taken: a write another client (or another stream
//! of the same one) makes to the same row within those pauses, after the
//! first cluster applied the conditional write, can reach the second
//! cluster first and be overwritten there by the resend, which Paxos
//! stamps later. A row the second cluster lacks for another reason (not
//! yet backfilled) costs the pauses and is counted as a divergence, as
//! before; the validation repairs it.

use super::*;

/// The pauses before each new attempt: at most 155 ms in all, against the
/// few milliseconds an async mirror takes to land.
const PAUSES_MS: [u64; 5] = [5, 10, 20, 40, 80];

/// Sends `req` (a conditional write `first_side` applied, answered
/// `answer` by the other side) again while the other side's answer says
/// not applied; returns the last answer.
pub async fn until_applied(
    ctx: &ProxyContext,
    toward: Toward,
    link: &TargetLink,
    req: &MirrorRequest,
    first_side: &Frame,
    mut answer: Frame,
) -> Frame {
    if lwt_applied(first_side) != Some(true) {
        return answer;
    }
    for pause in PAUSES_MS {
        if lwt_applied(&answer) != Some(false) || ctx.shutting_down.load(Ordering::Acquire) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let conn = match link.get().await {
            Ok(conn) => conn,
            Err(e) => {
                debug!(error = %e, "no connection to send a conditional write again");
                break;
            }
        };
        ctx.metrics.conditional_resends.inc();
        match send_toward(ctx, toward, &conn, req, false).await {
            Ok(reply) if reply.opcode == opcode::RESULT => answer = reply,
            Ok(reply) => {
                debug!(error = %describe_error(&reply), "a conditional write sent again failed");
                break;
            }
            Err(e) => {
                debug!(error = %e, "a conditional write sent again failed");
                break;
            }
        }
    }
    answer
}
