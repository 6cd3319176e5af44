//! The bounded reader under the header parser: every read checks the bytes left in the file, and
//! every claimed length is checked against a limit before anything is allocated. Also the sizes
//! and readers of metadata's fixed-width value types.

use std::io::Read;

use super::GgufError;

pub(super) struct Cursor<R> {
    pub(super) reader: R,
    pub(super) remaining: u64,
}

impl<R: Read> Cursor<R> {
    pub(super) fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        if self.remaining < N as u64 {
            return Err(GgufError::Truncated(format!(
                "{N} more bytes needed, {} left",
                self.remaining
            )));
        }
        let mut buf = [0u8; N];
        self.reader.read_exact(&mut buf)?;
        self.remaining -= N as u64;
        Ok(buf)
    }
    pub(super) fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    pub(super) fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// Checks a claimed length against a limit and against what is left in the file.
    fn claim(&self, what: &'static str, claimed: u64, limit: u64) -> Result<(), GgufError> {
        if claimed > limit {
            return Err(GgufError::OverLimit {
                what,
                claimed,
                limit,
            });
        }
        if claimed > self.remaining {
            return Err(GgufError::Truncated(format!(
                "{what} of {claimed} bytes, {} left",
                self.remaining
            )));
        }
        Ok(())
    }

    pub(super) fn string_len(&mut self, limit: u64) -> Result<u64, GgufError> {
        let len = self.u64()?;
        self.claim("a string", len, limit)?;
        Ok(len)
    }

    pub(super) fn string(&mut self, limit: u64) -> Result<Vec<u8>, GgufError> {
        let len = self.string_len(limit)?;
        let mut buf = vec![0u8; len as usize];
        self.reader.read_exact(&mut buf)?;
        self.remaining -= len;
        Ok(buf)
    }

    pub(super) fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        self.claim("skipped data", n, u64::MAX)?;
        let copied = std::io::copy(&mut (&mut self.reader).take(n), &mut std::io::sink())?;
        if copied != n {
            return Err(GgufError::Truncated("file ended early".into()));
        }
        self.remaining -= n;
        Ok(())
    }
}

/// Size of a fixed-width value type, `None` for strings and arrays.
pub(super) fn scalar_size(value_type: u32) -> Result<Option<u64>, GgufError> {
    Ok(match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        8 | 9 => None,
        other => return Err(GgufError::UnknownType(other)),
    })
}

pub(super) enum Value {
    Number(u64),
    Other,
}

pub(super) fn read_scalar<R: Read>(c: &mut Cursor<R>, value_type: u32) -> Result<Value, GgufError> {
    Ok(match value_type {
        0 | 7 => Value::Number(c.bytes::<1>()?[0] as u64),
        1 => Value::Number(i8::from_le_bytes(c.bytes()?).max(0) as u64),
        2 => Value::Number(u16::from_le_bytes(c.bytes()?) as u64),
        3 => Value::Number(i16::from_le_bytes(c.bytes()?).max(0) as u64),
        4 => Value::Number(c.u32()? as u64),
        5 => Value::Number(i32::from_le_bytes(c.bytes()?).max(0) as u64),
        6 => {
            c.bytes::<4>()?;
            Value::Other
        }
        10 => Value::Number(c.u64()?),
        11 => Value::Number(i64::from_le_bytes(c.bytes()?).max(0) as u64),
        12 => {
            c.bytes::<8>()?;
            Value::Other
        }
        other => return Err(GgufError::UnknownType(other)),
    })
}
