//! The write policy: what a mirrored write's traits mean for how it is
//! sent. Decided here, in one function, for every kind of write; the
//! connection only carries it out.

use super::classify::WriteTraits;

/// How a mirrored write is sent to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritePolicy {
    /// The proxy sets the request's timestamp, so both clusters store the
    /// same WRITETIME: every write that has none, except a conditional
    /// write (Paxos picks its time and refuses one).
    pub pin_timestamp: bool,
    /// Sending it twice changes nothing, so it may be retried and spooled:
    /// every write but a counter update (`x = x + ?` through QUERY counts
    /// as one: only bound types tell a counter from a list append).
    pub idempotent: bool,
    /// Its effect depends on its order against the client's next writes: a
    /// conditional write, a TRUNCATE, a list write. In async mode it waits
    /// for the target as well while the target is up.
    pub ordered: bool,
    /// A conditional write: the `[applied]` of both answers is compared.
    pub conditional: bool,
}

impl WritePolicy {
    /// The policy of a write with `traits`; `has_timestamp`: the request
    /// already carries one (the client's).
    pub fn of(traits: &WriteTraits, has_timestamp: bool) -> Self {
        let idempotent = !traits.counter;
        Self {
            pin_timestamp: !traits.lwt && !has_timestamp,
            idempotent,
            ordered: idempotent && (traits.lwt || traits.truncate || traits.list_order),
            conditional: traits.lwt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::classify::{classify, StatementClass};

    fn policy(text: &str, has_timestamp: bool) -> WritePolicy {
        match classify(text) {
            StatementClass::Write(mut w) => {
                // As the QUERY path does: without bound types, `x = x + ?`
                // may be a counter.
                w.counter |= w.increment_by_marker;
                WritePolicy::of(&w, has_timestamp)
            }
            other => panic!("{text} is {other:?}"),
        }
    }

    #[test]
    fn every_kind_of_write_has_its_policy() {
        let p = |pin, idempotent, ordered, conditional| WritePolicy {
            pin_timestamp: pin,
            idempotent,
            ordered,
            conditional,
        };
        let cases = [
            (
                "INSERT INTO t (k, v) VALUES (1, 2)",
                false,
                p(true, true, false, false),
            ),
            (
                "INSERT INTO t (k, v) VALUES (1, 2)",
                true,
                p(false, true, false, false),
            ),
            (
                "UPDATE t USING TTL 5 SET v = 1 WHERE k = 1",
                false,
                p(true, true, false, false),
            ),
            (
                "DELETE FROM t WHERE k = 1",
                false,
                p(true, true, false, false),
            ),
            (
                "UPDATE t SET s = s + {1} WHERE k = 1",
                false,
                p(true, true, false, false),
            ),
            (
                "UPDATE t SET l = l + [1] WHERE k = 1",
                false,
                p(true, true, true, false),
            ),
            (
                "UPDATE t SET l = [1] + l WHERE k = 1",
                false,
                p(true, true, true, false),
            ),
            (
                "UPDATE t SET l[0] = 1 WHERE k = 1",
                false,
                p(true, true, true, false),
            ),
            (
                "INSERT INTO t (k, l) VALUES (1, [1, 2])",
                false,
                p(true, true, true, false),
            ),
            (
                "UPDATE c SET n = n + 1 WHERE k = 1",
                false,
                p(true, false, false, false),
            ),
            (
                "UPDATE c SET n = n + ? WHERE k = 1",
                false,
                p(true, false, false, false),
            ),
            (
                "INSERT INTO t (k) VALUES (1) IF NOT EXISTS",
                false,
                p(false, true, true, true),
            ),
            (
                "INSERT INTO t (k) VALUES (1) IF NOT EXISTS",
                true,
                p(false, true, true, true),
            ),
            (
                "UPDATE t SET v = 2 WHERE k = 1 IF v = 1",
                false,
                p(false, true, true, true),
            ),
            ("TRUNCATE t", false, p(true, true, true, false)),
            (
                "BEGIN COUNTER BATCH UPDATE c SET n = n + 1 WHERE k = 1 APPLY BATCH",
                false,
                p(true, false, false, false),
            ),
            (
                "BEGIN BATCH INSERT INTO t (k) VALUES (1) IF NOT EXISTS APPLY BATCH",
                false,
                p(false, true, true, true),
            ),
        ];
        for (text, has_timestamp, expected) in cases {
            assert_eq!(
                policy(text, has_timestamp),
                expected,
                "{text} (client timestamp: {has_timestamp})"
            );
        }
    }
}
