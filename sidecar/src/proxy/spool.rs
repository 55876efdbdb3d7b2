//! The on-disk spool of target writes that could not be delivered in
//! `async` mode. Records are appended to one log file and replayed in order
//! by a single replayer; the replay position lives in a small head file, so
//! a restarted proxy resumes where it stopped. A replayed record may be sent
//! twice after a crash, which is harmless: every spooled write carries its
//! client-side timestamp, so a second copy changes nothing (counters are
//! never spooled for this reason).
//!
//! Record layout: `[u32 LE length][u32 LE crc32][payload]`, payload:
//! `version u8, [accepted at: u64 ms since the epoch, when version has bit
//! 0x80], opcode u8, flags u8, keyspace [string], prepared count u16,
//! prepared × (id [short bytes], keyspace [string], query [long string]),
//! body (rest)`. An empty keyspace string means none. Records written
//! before the accepted time was kept have no 0x80 bit, and are read as
//! they were.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::Frame;
use super::segment::crc32;
use super::wire::{put_long_string, put_short_bytes, put_string, Reader, WireError};

/// The bit of a record's first byte that says an accepted time follows.
const ACCEPTED_AT: u8 = 0x80;

const LOG: &str = "spool.log";
const HEAD: &str = "spool.head";

/// A prepared statement a spooled request refers to, with what is needed
/// to prepare it again on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledStatement {
    pub source_id: Bytes,
    pub keyspace: Option<String>,
    pub query: String,
}

/// One request waiting for the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub version: u8,
    pub opcode: u8,
    pub flags: u8,
    /// The connection's keyspace when the write was made.
    pub keyspace: Option<String>,
    /// When the proxy took the write (ms since the epoch), the moment its
    /// TTLs started counting on the source; the replay takes the time since
    /// off them (`mirror::spooled_ttl`).
    pub accepted_at_millis: Option<u64>,
    pub statements: Vec<SpooledStatement>,
    /// Body with source ids and the pinned timestamp.
    pub body: Bytes,
}

impl SpoolRecord {
    /// The record as the request frame it was, to be read again.
    pub fn request_frame(&self) -> Frame {
        Frame {
            version: self.version,
            response: false,
            flags: self.flags,
            stream: 0,
            opcode: self.opcode,
            body: self.body.clone(),
        }
    }

    fn encode(&self) -> BytesMut {
        let mut p = BytesMut::with_capacity(self.body.len() + 64);
        match self.accepted_at_millis {
            Some(at) => {
                p.put_u8(self.version | ACCEPTED_AT);
                p.put_u64(at);
            }
            None => p.put_u8(self.version),
        }
        p.put_u8(self.opcode);
        p.put_u8(self.flags);
        put_string(&mut p, self.keyspace.as_deref().unwrap_or(""));
        p.put_u16(self.statements.len() as u16);
        for s in &self.statements {
            put_short_bytes(&mut p, &s.source_id);
            put_string(&mut p, s.keyspace.as_deref().unwrap_or(""));
            put_long_string(&mut p, &s.query);
        }
        p.put_slice(&self.body);
        p
    }

    fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let first = r.u8()?;
        let version = first & !ACCEPTED_AT;
        let accepted_at_millis = if first & ACCEPTED_AT != 0 {
            Some(r.i64()? as u64)
        } else {
            None
        };
        let opcode = r.u8()?;
        let flags = r.u8()?;
        let ks = r.string()?;
        let n = r.u16()?;
        let mut statements = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let id = Bytes::copy_from_slice(r.short_bytes()?);
            let sks = r.string()?;
            let query = r.long_string()?.to_owned();
            statements.push(SpooledStatement {
                source_id: id,
                keyspace: (!sks.is_empty()).then(|| sks.to_owned()),
                query,
            });
        }
        let body = Bytes::copy_from_slice(r.take(r.remaining())?);
        Ok(Self {
            version,
            opcode,
            flags,
            keyspace: (!ks.is_empty()).then(|| ks.to_owned()),
            accepted_at_millis,
            statements,
            body,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool is full ({bytes} of {limit} bytes)")]
    Full { bytes: u64, limit: u64 },
    #[error("spool record at offset {offset} is corrupt: {reason}")]
    Corrupt { offset: u64, reason: String },
}

/// A place in the spool: an offset in the log as it was in one `epoch`.
/// The log starts again at offset 0 each time the spool empties; the epoch
/// tells a position taken before that from one in the new log, so a stale
/// read can never land inside a record appended since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    epoch: u64,
    offset: u64,
}

#[derive(Debug)]
struct SpoolFiles {
    log: File,
    /// Offset of the next record to replay.
    head: u64,
    /// End of the log (next append offset).
    tail: u64,
    /// How many times the log has been emptied since the proxy started.
    epoch: u64,
    /// Bytes promised to writes that the source has taken and that may
    /// still have to be spooled (`Spool::reserve`).
    reserved: u64,
    records: u64,
    unsynced: bool,
}

/// Room in the spool promised to one write; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    spool: std::sync::Arc<Spool>,
    /// Room still promised (0 once the write was appended with it).
    bytes: std::sync::atomic::AtomicU64,
}

impl Reservation {
    /// The room a spooled request can need at most: its body, its
    /// statements' texts and ids, and the record's framing.
    pub fn size_of(body: usize, statements: impl Iterator<Item = usize>) -> u64 {
        (body + statements.map(|s| s + 2 + 2 + 4 + 48).sum::<usize>() + 8 + 8 + 5 + 2 + 48) as u64
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let bytes = *self.bytes.get_mut();
        let mut f = self.spool.lock();
        f.reserved = f.reserved.saturating_sub(bytes);
    }
}

/// The spool: append at the tail, replay from the head.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limit: u64,
    files: Mutex<SpoolFiles>,
    /// A second handle on the log for positioned reads (no seek, no lock).
    reader: File,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, resuming from the saved head.
    /// A torn last record (a crash in the middle of an append) is cut off
    /// here, and only here.
    pub fn open(dir: &Path, limit: u64) -> Result<Self, SpoolError> {
        let io = |source| SpoolError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let log_path = dir.join(LOG);
        let log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(io)?;
        let reader = log.try_clone().map_err(io)?;
        let tail = log.metadata().map_err(io)?.len();
        let head = std::fs::read_to_string(dir.join(HEAD))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
            .min(tail);
        let spool = Self {
            dir: dir.to_owned(),
            limit,
            files: Mutex::new(SpoolFiles {
                log,
                head,
                tail,
                epoch: 0,
                reserved: 0,
                records: 0,
                unsynced: false,
            }),
            reader,
        };
        let records = spool.count_records()?;
        spool.lock().records = records;
        Ok(spool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpoolFiles> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.dir.clone(),
            source,
        }
    }

    fn count_records(&self) -> Result<u64, SpoolError> {
        let mut offset = self.lock().head;
        let mut n = 0;
        loop {
            match self.read_at(offset) {
                Ok(Some((_, next))) => {
                    n += 1;
                    offset = next;
                }
                Ok(None) => return Ok(n),
                Err(SpoolError::Corrupt { offset, reason }) => {
                    tracing::error!(offset, reason, "dropping corrupt spool tail");
                    let mut f = self.lock();
                    f.tail = offset;
                    f.log.set_len(offset).map_err(|e| self.io(e))?;
                    return Ok(n);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Promises room for `bytes` of spool to one write before the source
    /// is sent it, or `None` when the spool cannot promise that much. A
    /// write that holds a reservation always fits when it has to be
    /// spooled: the `reject-writes` policy refuses the application's write
    /// up front instead of dropping it after the source took it.
    pub fn reserve(self: &std::sync::Arc<Self>, bytes: u64) -> Option<Reservation> {
        let mut f = self.lock();
        if (f.tail - f.head) + f.reserved + bytes > self.limit {
            return None;
        }
        f.reserved += bytes;
        Some(Reservation {
            spool: self.clone(),
            bytes: bytes.into(),
        })
    }

    /// Appends a record; refuses when the spool would exceed its limit.
    /// With the write's reservation, the room promised to it is its own.
    pub fn append(
        &self,
        record: &SpoolRecord,
        reservation: Option<&Reservation>,
    ) -> Result<(), SpoolError> {
        let payload = record.encode();
        let mut frame = BytesMut::with_capacity(payload.len() + 8);
        frame.put_u32_le(payload.len() as u32);
        frame.put_u32_le(crc32(&payload));
        frame.put_slice(&payload);
        let mut f = self.lock();
        // The write's own promise becomes the room it takes.
        let mine = reservation.map_or(0, |r| r.bytes.swap(0, std::sync::atomic::Ordering::AcqRel));
        f.reserved = f.reserved.saturating_sub(mine);
        let used = f.tail - f.head + f.reserved;
        if used + frame.len() as u64 > self.limit {
            return Err(SpoolError::Full {
                bytes: used,
                limit: self.limit,
            });
        }
        if let Err(e) = f.log.write_all(&frame) {
            // A part written (a full disk) would shift every later record
            // off the offsets the spool keeps: take it back.
            let tail = f.tail;
            let _ = f.log.set_len(tail);
            return Err(self.io(e));
        }
        f.tail += frame.len() as u64;
        f.records += 1;
        f.unsynced = true;
        Ok(())
    }

    /// Reads the record at `offset`: the record and the next offset, or
    /// `None` at the tail.
    fn read_at(&self, offset: u64) -> Result<Option<(SpoolRecord, u64)>, SpoolError> {
        use std::os::unix::fs::FileExt;
        let tail = self.lock().tail;
        if offset >= tail {
            return Ok(None);
        }
        if offset + 8 > tail {
            return Err(SpoolError::Corrupt {
                offset,
                reason: "torn record header".into(),
            });
        }
        let mut head = [0u8; 8];
        self.reader
            .read_exact_at(&mut head, offset)
            .map_err(|e| self.io(e))?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if offset + 8 + len > tail {
            return Err(SpoolError::Corrupt {
                offset,
                reason: "record runs past the end of the log".into(),
            });
        }
        let mut payload = vec![0u8; len as usize];
        self.reader
            .read_exact_at(&mut payload, offset + 8)
            .map_err(|e| self.io(e))?;
        if crc32(&payload) != crc {
            return Err(SpoolError::Corrupt {
                offset,
                reason: "checksum mismatch".into(),
            });
        }
        let record = SpoolRecord::decode(&payload).map_err(|e| SpoolError::Corrupt {
            offset,
            reason: e.to_string(),
        })?;
        Ok(Some((record, offset + 8 + len)))
    }

    /// Where the oldest record not yet replayed is.
    pub fn head(&self) -> Position {
        let f = self.lock();
        Position {
            epoch: f.epoch,
            offset: f.head,
        }
    }

    /// The record at `at` (the head, or a position a previous read
    /// returned), with the position after it, which is what `ack` takes.
    /// `None` at the tail, and for a position from before the spool last
    /// emptied (the caller starts again at the head). A corrupt record is
    /// an error: while the proxy runs, appends are whole or taken back, so
    /// it means the file was damaged, and cutting it off would also cut
    /// every record after it.
    pub fn read(&self, at: Position) -> Result<Option<(SpoolRecord, Position)>, SpoolError> {
        if at.epoch != self.lock().epoch {
            return Ok(None);
        }
        // An append or an emptying may come between the check and the read;
        // an emptying is caught by the epoch check below, an append only
        // adds after the tail this read sees.
        let read = self.read_at(at.offset)?;
        if at.epoch != self.lock().epoch {
            return Ok(None);
        }
        Ok(read.map(|(record, next)| {
            (
                record,
                Position {
                    epoch: at.epoch,
                    offset: next,
                },
            )
        }))
    }

    /// Marks everything before `next`, `records` records, as delivered;
    /// empties the files when all is delivered. The head file is reset
    /// durably before the log is emptied: a crash in between then replays
    /// old records again (harmless, they carry their timestamps) rather
    /// than resuming at an offset of the old log inside a new record.
    pub fn ack(&self, next: Position, records: u64) -> Result<(), SpoolError> {
        let mut f = self.lock();
        if next.epoch != f.epoch {
            tracing::warn!("acknowledgement of a spool position from before it emptied; ignored");
            return Ok(());
        }
        f.head = next.offset.min(f.tail);
        f.records = f.records.saturating_sub(records);
        if f.head == f.tail {
            self.save_head(0, true)?;
            f.log.set_len(0).map_err(|e| self.io(e))?;
            f.log.sync_all().map_err(|e| self.io(e))?;
            f.head = 0;
            f.tail = 0;
            f.records = 0;
            f.epoch += 1;
            f.unsynced = false;
            return Ok(());
        }
        let head = f.head;
        drop(f);
        self.save_head(head, false)
    }

    /// Writes the head file; `durable` waits until it is on disk.
    fn save_head(&self, head: u64, durable: bool) -> Result<(), SpoolError> {
        let tmp = self.dir.join(format!("{HEAD}.tmp"));
        let mut file = File::create(&tmp).map_err(|e| self.io(e))?;
        file.write_all(head.to_string().as_bytes())
            .map_err(|e| self.io(e))?;
        if durable {
            file.sync_all().map_err(|e| self.io(e))?;
        }
        std::fs::rename(&tmp, self.dir.join(HEAD)).map_err(|e| self.io(e))?;
        if durable {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Flushes appended records to disk.
    pub fn sync(&self) -> Result<(), SpoolError> {
        let mut f = self.lock();
        if f.unsynced {
            f.log.sync_data().map_err(|e| self.io(e))?;
            f.unsynced = false;
        }
        Ok(())
    }

    pub fn records(&self) -> u64 {
        self.lock().records
    }

    pub fn bytes(&self) -> u64 {
        let f = self.lock();
        f.tail - f.head
    }

    pub fn is_empty(&self) -> bool {
        self.bytes() == 0
    }

    pub fn is_full(&self) -> bool {
        self.bytes() + 1024 > self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u8) -> SpoolRecord {
        SpoolRecord {
            version: 4,
            opcode: 0x0A,
            flags: 0,
            keyspace: Some("ks".into()),
            // Both layouts: with the accepted time and (as written before
            // it was kept) without.
            accepted_at_millis: i
                .is_multiple_of(2)
                .then_some(1_700_000_000_000 + u64::from(i)),
            statements: vec![SpooledStatement {
                source_id: Bytes::from(vec![i; 16]),
                keyspace: None,
                query: format!("INSERT INTO t (k) VALUES ({i})"),
            }],
            body: Bytes::from(vec![i; 40]),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ferry-spool-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn replays_in_order_across_reopen() {
        let dir = temp_dir("order");
        {
            let spool = Spool::open(&dir, 1 << 20).unwrap();
            for i in 0..5 {
                spool.append(&record(i), None).unwrap();
            }
            let (first, next) = spool.read(spool.head()).unwrap().unwrap();
            assert_eq!(first, record(0));
            spool.ack(next, 1).unwrap();
            spool.sync().unwrap();
        }
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.records(), 4);
        for i in 1..5 {
            let (r, next) = spool.read(spool.head()).unwrap().unwrap();
            assert_eq!(r, record(i));
            spool.ack(next, 1).unwrap();
        }
        assert!(spool.read(spool.head()).unwrap().is_none());
        assert!(spool.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_ahead_of_the_head_without_moving_it() {
        let dir = temp_dir("ahead");
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        for i in 0..3 {
            spool.append(&record(i), None).unwrap();
        }
        let head = spool.head();
        let (_, second_at) = spool.read(head).unwrap().unwrap();
        let (second, third_at) = spool.read(second_at).unwrap().unwrap();
        assert_eq!(second, record(1));
        let (third, end) = spool.read(third_at).unwrap().unwrap();
        assert_eq!(third, record(2));
        assert!(spool.read(end).unwrap().is_none());
        // Reading ahead acknowledged nothing.
        assert_eq!(spool.head(), head);
        assert_eq!(spool.records(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn big_record(i: u8, body: usize) -> SpoolRecord {
        SpoolRecord {
            body: Bytes::from(vec![i; body]),
            ..record(i)
        }
    }

    /// The replayer reads ahead of the head with a position it keeps. When
    /// the last acknowledgement empties the spool, the log starts again at
    /// offset 0; a record appended right then must not be taken for a torn
    /// tail by a read at the old position (which would cut it off).
    #[test]
    fn a_position_from_before_the_spool_emptied_never_cuts_a_newer_record() {
        let dir = temp_dir("stale");
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(&record(1), None).unwrap();
        let (_, after_first) = spool.read(spool.head()).unwrap().unwrap();
        spool.ack(after_first, 1).unwrap();
        assert!(spool.is_empty());
        // Appended between the acknowledgement and the replayer's next read,
        // longer than the old position.
        spool.append(&big_record(2, 400), None).unwrap();
        // The stale read sees nothing (the replayer then starts at the head).
        assert!(spool.read(after_first).unwrap().is_none());
        assert_eq!(spool.records(), 1);
        let (r, next) = spool.read(spool.head()).unwrap().unwrap();
        assert_eq!(r, big_record(2, 400));
        spool.ack(next, 1).unwrap();
        // And after a restart nothing is left over or lost either.
        spool.append(&record(3), None).unwrap();
        spool.sync().unwrap();
        drop(spool);
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.records(), 1);
        let (r, _) = spool.read(spool.head()).unwrap().unwrap();
        assert_eq!(r, record(3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A crash after the log was emptied and written again, but with the
    /// head file still naming an offset of the old log, must not make the
    /// reopened spool start inside a record and drop it as torn.
    #[test]
    fn the_head_is_durably_reset_before_the_log_is_emptied() {
        let dir = temp_dir("crash");
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        for i in 0..3 {
            spool.append(&record(i), None).unwrap();
        }
        // Acknowledge two: the head file names the third record's offset.
        let (_, second) = spool.read(spool.head()).unwrap().unwrap();
        let (_, third) = spool.read(second).unwrap().unwrap();
        spool.ack(third, 2).unwrap();
        let stale_head = std::fs::read_to_string(dir.join(HEAD)).unwrap();
        let (_, end) = spool.read(third).unwrap().unwrap();
        spool.ack(end, 1).unwrap();
        // The emptying acknowledgement reset the head on disk to 0.
        assert_eq!(std::fs::read_to_string(dir.join(HEAD)).unwrap().trim(), "0");
        assert_ne!(stale_head.trim(), "0");
        spool.append(&big_record(7, 300), None).unwrap();
        spool.sync().unwrap();
        drop(spool);
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.records(), 1);
        let (r, _) = spool.read(spool.head()).unwrap().unwrap();
        assert_eq!(r, big_record(7, 300));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A corrupt record met while the proxy runs is reported, never cut off:
    /// cutting would also cut every record after it.
    #[test]
    fn a_corrupt_record_at_run_time_is_an_error_not_a_truncation() {
        let dir = temp_dir("corrupt");
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(&record(1), None).unwrap();
        spool.append(&record(2), None).unwrap();
        spool.sync().unwrap();
        // Flip a payload byte of the first record behind the spool's back.
        {
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new().write(true).open(dir.join(LOG)).unwrap();
            f.write_all_at(&[0xFF], 12).unwrap();
        }
        assert!(matches!(
            spool.read(spool.head()),
            Err(SpoolError::Corrupt { .. })
        ));
        assert_eq!(spool.records(), 2);
        assert!(spool.bytes() > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Room promised to writes the source took is theirs: a write without
    /// a promise cannot take it, and a promised write always fits.
    #[test]
    fn reserved_room_is_kept_for_the_writes_it_was_promised_to() {
        let dir = temp_dir("reserve");
        let spool = std::sync::Arc::new(Spool::open(&dir, 1_000).unwrap());
        let one = record(1).encode().len() as u64 + 8;
        let promises: Vec<Reservation> = (0..3).map(|_| spool.reserve(one).unwrap()).collect();
        // 3 promised of 1000 bytes: room for at most a few more.
        let mut more = Vec::new();
        while let Some(r) = spool.reserve(one) {
            more.push(r);
        }
        assert!(more.len() < 1_000 / one as usize);
        // Nothing unpromised fits now.
        assert!(matches!(
            spool.append(&record(9), None),
            Err(SpoolError::Full { .. })
        ));
        // Every promised write fits.
        for r in promises.iter().chain(more.iter()) {
            spool.append(&record(1), Some(r)).unwrap();
        }
        drop(promises);
        drop(more);
        assert!(
            spool.reserve(one).is_none(),
            "the spool is full of records now"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Appends racing the drain (the replayer's pattern: read a window
    /// ahead of the head, then acknowledge it, the spool emptying and
    /// starting again many times): every record is read exactly once, in
    /// the order it was appended, and none is cut off.
    #[test]
    fn appends_racing_the_drain_lose_and_repeat_nothing() {
        let dir = temp_dir("race");
        let spool = std::sync::Arc::new(Spool::open(&dir, 1 << 30).unwrap());
        const WRITERS: u64 = 2;
        const EACH: u64 = 5_000;
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let mut r = record(w as u8);
                        // Sizes vary, so a stale offset would land mid-record.
                        r.body = Bytes::from(format!("{w}:{i}:{}", "x".repeat((i % 97) as usize)));
                        spool.append(&r, None).unwrap();
                    }
                })
            })
            .collect();
        let mut seen: Vec<Vec<u64>> = vec![Vec::new(); WRITERS as usize];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while seen.iter().map(Vec::len).sum::<usize>() < (WRITERS * EACH) as usize {
            assert!(std::time::Instant::now() < deadline, "the drain stalled");
            let mut at = spool.head();
            let mut window = 0;
            while window < 64 {
                let Some((r, next)) = spool.read(at).unwrap() else {
                    break;
                };
                let text = String::from_utf8(r.body.to_vec()).unwrap();
                let mut parts = text.split(':');
                let w: usize = parts.next().unwrap().parse().unwrap();
                let i: u64 = parts.next().unwrap().parse().unwrap();
                seen[w].push(i);
                at = next;
                window += 1;
            }
            if window > 0 {
                spool.ack(at, window).unwrap();
            } else {
                std::thread::yield_now();
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        for (w, got) in seen.iter().enumerate() {
            let expected: Vec<u64> = (0..EACH).collect();
            assert_eq!(got, &expected, "writer {w}: every record once, in order");
        }
        assert!(spool.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_when_full_and_drops_torn_tail() {
        let dir = temp_dir("full");
        let spool = Spool::open(&dir, 300).unwrap();
        spool.append(&record(1), None).unwrap();
        assert!(matches!(
            spool
                .append(&record(2), None)
                .and_then(|_| spool.append(&record(3), None)),
            Err(SpoolError::Full { .. })
        ));
        drop(spool);
        // Simulate a crash mid-append.
        let mut f = OpenOptions::new().append(true).open(dir.join(LOG)).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let spool = Spool::open(&dir, 1 << 20);
        // Counting hits the torn record: opening reports it as corrupt.
        match spool {
            Ok(s) => {
                // Records 1 and 2 fit under the limit, 3 did not; the torn tail is gone.
                assert_eq!(s.records(), 2);
                for i in 1..=2 {
                    let (r, next) = s.read(s.head()).unwrap().unwrap();
                    assert_eq!(r, record(i));
                    s.ack(next, 1).unwrap();
                }
                assert!(s.read(s.head()).unwrap().is_none());
            }
            Err(e) => panic!("open failed: {e}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
