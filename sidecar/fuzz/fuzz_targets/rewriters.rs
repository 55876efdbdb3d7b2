//! Arbitrary bodies into everything that reads or edits a message: the
//! request parsers and timestamp injection, the statement classifier, the
//! system-table row and event rewriters, the PREPARED result parser, the
//! BEGIN BATCH splitter and the proxy's value splicing for now()/uuid().
#![no_main]

use bytes::Bytes;
use ferry_sidecar::proxy::bound::{bind_nondeterministic, splice_values};
use ferry_sidecar::proxy::classify::{batch_statements, classify};
use ferry_sidecar::proxy::frame::{opcode, Frame};
use ferry_sidecar::proxy::peers::{rewrite_event, rewrite_rows, RuntimeFile};
use ferry_sidecar::proxy::prepared::parse_prepared_result;
use ferry_sidecar::proxy::result::{lwt_applied, rows_section};
use ferry_sidecar::proxy::request::{parse_batch, parse_execute, parse_prepare, parse_query, with_timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let version = 3 + (selector % 3);
    let flags = selector & 0x0E;
    let body = Bytes::copy_from_slice(rest);
    let frame = |op| Frame {
        version,
        response: false,
        flags,
        stream: 0,
        opcode: op,
        body: body.clone(),
    };
    if let Ok(q) = parse_query(&frame(opcode::QUERY)) {
        let _ = classify(q.query);
        if !q.params.has_timestamp() {
            let edited = frame(opcode::QUERY);
            let edited = Frame {
                body: with_timestamp(&edited.body, &q.params, 1),
                ..edited
            };
            assert!(parse_query(&edited).map(|q| q.params.has_timestamp()).unwrap_or(false));
        }
    }
    let _ = parse_prepare(&frame(opcode::PREPARE));
    let _ = parse_execute(&frame(opcode::EXECUTE));
    if let Ok(b) = parse_batch(&frame(opcode::BATCH)) {
        if !b.params.has_timestamp() {
            let _ = with_timestamp(&body, &b.params, 1);
        }
    }
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = classify(text);
        let _ = RuntimeFile::parse(text);
        // Every statement of a batch text is a slice of it, in order.
        let mut end = 0;
        for b in batch_statements(text) {
            assert!(b.span.0 >= end && b.span.0 <= b.span.1 && b.span.1 <= text.len());
            assert!(text.is_char_boundary(b.span.0) && text.is_char_boundary(b.span.1));
            end = b.span.1;
        }
        // The markers the proxy fills, spliced into values sections cut
        // from the same bytes: never a panic, and a result that reads back.
        if let Some((_, bound)) = bind_nondeterministic(text) {
            for cut in [0, rest.len() / 2, rest.len()] {
                if let Ok(values) = splice_values(Some(&rest[..cut]), &bound, 1_700_000_000_000_000) {
                    let n = u16::from_be_bytes([values[0], values[1]]) as usize;
                    assert!(n >= bound.len());
                }
                let _ = splice_values(None, &bound, 0);
            }
        }
    }
    let map = RuntimeFile::parse("127.0.0.1 127.0.0.2:9042\n[::1] [::2]:9042\n")
        .map(|f| f.peers)
        .unwrap_or_default();
    let _ = rewrite_rows(flags, &body, version, &map, None);
    let _ = rewrite_event(flags, &body, &map);
    let _ = parse_prepared_result(flags, &body, version);
    let result = Frame {
        version,
        response: true,
        flags,
        stream: 0,
        opcode: opcode::RESULT,
        body: body.clone(),
    };
    let _ = rows_section(&result);
    let _ = lwt_applied(&result);
});
