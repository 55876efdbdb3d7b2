//! The on-disk spool of target writes that could not be delivered in
//! `async` mode. Records are appended to one log file and replayed in order
//! by a single replayer; the replay position lives in a small head file, so
//! a restarted proxy resumes where it stopped. A replayed record may be sent
//! twice after a crash, which is harmless: every spooled write carries its
//! client-side timestamp, so a second copy changes nothing (counters are
//! never spooled for this reason).
//!
//! Record layout: `[u32 LE length][u32 LE crc32][payload]`, payload:
//! `version u8, opcode u8, flags u8, keyspace [string], prepared count u16,
//! prepared × (id [short bytes], keyspace [string], query [long string]),
//! body (rest)`. An empty keyspace string means none.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};

use super::segment::crc32;
use super::wire::{put_long_string, put_short_bytes, put_string, Reader, WireError};

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
    pub statements: Vec<SpooledStatement>,
    /// Body with source ids and the pinned timestamp.
    pub body: Bytes,
}

impl SpoolRecord {
    fn encode(&self) -> BytesMut {
        let mut p = BytesMut::with_capacity(self.body.len() + 64);
        p.put_u8(self.version);
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
        let version = r.u8()?;
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

#[derive(Debug)]
struct SpoolFiles {
    log: File,
    /// Offset of the next record to replay.
    head: u64,
    /// End of the log (next append offset).
    tail: u64,
    records: u64,
    unsynced: bool,
}

/// The spool: append at the tail, replay from the head.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limit: u64,
    files: Mutex<SpoolFiles>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, resuming from the saved head.
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
                records: 0,
                unsynced: false,
            }),
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
                    // A torn last record (crash mid-write) is dropped, loudly.
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

    /// Appends a record; refuses when the spool would exceed its limit.
    pub fn append(&self, record: &SpoolRecord) -> Result<(), SpoolError> {
        let payload = record.encode();
        let mut frame = BytesMut::with_capacity(payload.len() + 8);
        frame.put_u32_le(payload.len() as u32);
        frame.put_u32_le(crc32(&payload));
        frame.put_slice(&payload);
        let mut f = self.lock();
        let used = f.tail - f.head;
        if used + frame.len() as u64 > self.limit {
            return Err(SpoolError::Full {
                bytes: used,
                limit: self.limit,
            });
        }
        f.log.write_all(&frame).map_err(|e| self.io(e))?;
        f.tail += frame.len() as u64;
        f.records += 1;
        f.unsynced = true;
        Ok(())
    }

    /// Reads the record at `offset`: the record and the next offset, or
    /// `None` at the tail.
    fn read_at(&self, offset: u64) -> Result<Option<(SpoolRecord, u64)>, SpoolError> {
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
        let mut file = File::open(self.dir.join(LOG)).map_err(|e| self.io(e))?;
        file.seek(SeekFrom::Start(offset)).map_err(|e| self.io(e))?;
        let mut head = [0u8; 8];
        file.read_exact(&mut head).map_err(|e| self.io(e))?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if offset + 8 + len > tail {
            return Err(SpoolError::Corrupt {
                offset,
                reason: "record runs past the end of the log".into(),
            });
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact(&mut payload).map_err(|e| self.io(e))?;
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

    /// Offset of the oldest record not yet replayed.
    pub fn head(&self) -> u64 {
        self.lock().head
    }

    /// The record at `offset` (the head, or an offset a previous read
    /// returned), with the offset of the record after it, which is what
    /// `ack` takes.
    pub fn read(&self, offset: u64) -> Result<Option<(SpoolRecord, u64)>, SpoolError> {
        match self.read_at(offset) {
            Err(SpoolError::Corrupt { offset, reason }) => {
                // A torn last record (crash mid-write) is dropped, loudly.
                tracing::error!(offset, reason, "dropping corrupt spool tail");
                let mut f = self.lock();
                f.tail = offset;
                let _ = f.log.set_len(offset);
                Ok(None)
            }
            other => other,
        }
    }

    /// Marks everything before `next`, `records` records, as delivered;
    /// empties the files when all is delivered.
    pub fn ack(&self, next: u64, records: u64) -> Result<(), SpoolError> {
        let mut f = self.lock();
        f.head = next.min(f.tail);
        f.records = f.records.saturating_sub(records);
        if f.head == f.tail {
            f.log.set_len(0).map_err(|e| self.io(e))?;
            f.head = 0;
            f.tail = 0;
            f.records = 0;
        }
        let head = f.head;
        drop(f);
        self.save_head(head)
    }

    fn save_head(&self, head: u64) -> Result<(), SpoolError> {
        let tmp = self.dir.join(format!("{HEAD}.tmp"));
        std::fs::write(&tmp, head.to_string()).map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, self.dir.join(HEAD)).map_err(|e| self.io(e))
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
                spool.append(&record(i)).unwrap();
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
            spool.append(&record(i)).unwrap();
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

    #[test]
    fn refuses_when_full_and_drops_torn_tail() {
        let dir = temp_dir("full");
        let spool = Spool::open(&dir, 300).unwrap();
        spool.append(&record(1)).unwrap();
        assert!(matches!(
            spool
                .append(&record(2))
                .and_then(|_| spool.append(&record(3))),
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
