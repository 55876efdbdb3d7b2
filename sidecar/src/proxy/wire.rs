//! Reading and writing the CQL native protocol's primitive types
//! (`[short]`, `[int]`, `[string]`, `[bytes]`, `[inet]`, ...).
//!
//! The reader never panics on bad input: every read checks the remaining
//! length and returns [`WireError`], so a malformed body from a client turns
//! into a protocol error for that client only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};

/// Why a message body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message body truncated: needed {needed} bytes at offset {offset}, {available} left")]
    Truncated {
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("negative length {length} at offset {offset}")]
    NegativeLength { offset: usize, length: i64 },
    #[error("string at offset {offset} is not UTF-8")]
    NotUtf8 { offset: usize },
    #[error("inet address of {0} bytes (expected 4 or 16)")]
    BadInetLength(usize),
}

/// A cursor over a message body.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Offset of the next byte to read, from the start of the body.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated {
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), WireError> {
        self.take(n).map(|_| ())
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, WireError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i64(&mut self) -> Result<i64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    /// `[string]`: a `[short]` length then UTF-8 bytes.
    pub fn string(&mut self) -> Result<&'a str, WireError> {
        let len = self.u16()? as usize;
        let at = self.pos;
        let raw = self.take(len)?;
        std::str::from_utf8(raw).map_err(|_| WireError::NotUtf8 { offset: at })
    }

    /// `[long string]`: an `[int]` length then UTF-8 bytes.
    pub fn long_string(&mut self) -> Result<&'a str, WireError> {
        let at = self.pos;
        let len = self.i32()?;
        if len < 0 {
            return Err(WireError::NegativeLength {
                offset: at,
                length: len.into(),
            });
        }
        let at = self.pos;
        let raw = self.take(len as usize)?;
        std::str::from_utf8(raw).map_err(|_| WireError::NotUtf8 { offset: at })
    }

    /// `[short bytes]`.
    pub fn short_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    /// `[bytes]` / `[value]`: `None` for null (-1) and unset (-2).
    pub fn bytes(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        let at = self.pos;
        let len = self.i32()?;
        if len < 0 {
            if len == -1 || len == -2 {
                return Ok(None);
            }
            return Err(WireError::NegativeLength {
                offset: at,
                length: len.into(),
            });
        }
        self.take(len as usize).map(Some)
    }

    pub fn string_list(&mut self) -> Result<Vec<&'a str>, WireError> {
        let n = self.u16()?;
        (0..n).map(|_| self.string()).collect()
    }

    pub fn string_map(&mut self) -> Result<Vec<(&'a str, &'a str)>, WireError> {
        let n = self.u16()?;
        (0..n)
            .map(|_| Ok((self.string()?, self.string()?)))
            .collect()
    }

    pub fn string_multimap(&mut self) -> Result<Vec<(&'a str, Vec<&'a str>)>, WireError> {
        let n = self.u16()?;
        (0..n)
            .map(|_| Ok((self.string()?, self.string_list()?)))
            .collect()
    }

    /// `[bytes map]` (custom payloads): skipped, only its extent matters.
    pub fn skip_bytes_map(&mut self) -> Result<(), WireError> {
        let n = self.u16()?;
        for _ in 0..n {
            self.string()?;
            self.bytes()?;
        }
        Ok(())
    }

    /// `[inet]`: one byte of address length, the address, an `[int]` port.
    pub fn inet(&mut self) -> Result<(IpAddr, i32), WireError> {
        let len = self.u8()? as usize;
        let addr = ip_from_bytes(self.take(len)?)?;
        Ok((addr, self.i32()?))
    }
}

/// An address from the 4 or 16 bytes of an `inet` value.
pub fn ip_from_bytes(raw: &[u8]) -> Result<IpAddr, WireError> {
    match raw.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(raw);
            Ok(IpAddr::V6(Ipv6Addr::from(a)))
        }
        n => Err(WireError::BadInetLength(n)),
    }
}

pub fn put_ip(out: &mut BytesMut, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => out.put_slice(&v4.octets()),
        IpAddr::V6(v6) => out.put_slice(&v6.octets()),
    }
}

pub fn ip_len(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    }
}

pub fn put_string(out: &mut BytesMut, s: &str) {
    // Protocol strings are at most u16::MAX bytes; longer ones are cut so the
    // frame stays well-formed (only proxy-made strings go through here).
    let raw = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.put_u16(raw.len() as u16);
    out.put_slice(raw);
}

pub fn put_long_string(out: &mut BytesMut, s: &str) {
    out.put_i32(s.len() as i32);
    out.put_slice(s.as_bytes());
}

pub fn put_short_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

pub fn put_string_map(out: &mut BytesMut, map: &[(String, String)]) {
    out.put_u16(map.len() as u16);
    for (k, v) in map {
        put_string(out, k);
        put_string(out, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_primitives_and_rejects_truncation() {
        let mut b = BytesMut::new();
        put_string(&mut b, "abc");
        b.put_i32(-1);
        b.put_u8(4);
        b.put_slice(&[127, 0, 0, 1]);
        b.put_i32(9042);
        let mut r = Reader::new(&b);
        assert_eq!(r.string().unwrap(), "abc");
        assert_eq!(r.bytes().unwrap(), None);
        let (ip, port) = r.inet().unwrap();
        assert_eq!(ip.to_string(), "127.0.0.1");
        assert_eq!(port, 9042);
        assert!(r.is_empty());
        let mut short = Reader::new(&[0, 5, b'a']);
        assert!(matches!(short.string(), Err(WireError::Truncated { .. })));
        let mut neg = Reader::new(&[0xff, 0xff, 0xff, 0xf0]);
        assert!(matches!(neg.bytes(), Err(WireError::NegativeLength { .. })));
    }
}
