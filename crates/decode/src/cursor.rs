//! A bounds-checked reader over a binary message: every read is checked, nothing panics.

pub(crate) struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    plugin: &'static str,
}

pub(crate) type Read<T> = Result<T, crate::DecodeError>;

impl<'a> Cursor<'a> {
    pub(crate) fn new(data: &'a [u8], plugin: &'static str) -> Self {
        Cursor { data, pos: 0, plugin }
    }

    pub(crate) fn malformed(&self, detail: impl Into<String>) -> crate::DecodeError {
        crate::DecodeError::Malformed { plugin: self.plugin, detail: detail.into() }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Read<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.data.len());
        match end {
            Some(end) => {
                let out = &self.data[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => {
                Err(self.malformed(format!("message ends at byte {} but {} more were expected", self.data.len(), n)))
            }
        }
    }

    fn array<const N: usize>(&mut self) -> Read<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Read<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn i16(&mut self) -> Read<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Read<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Read<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Read<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Read<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated string.
    pub(crate) fn cstr(&mut self) -> Read<&'a str> {
        let rest = &self.data[self.pos..];
        let len = rest.iter().position(|&b| b == 0).ok_or_else(|| self.malformed("unterminated string"))?;
        let s = std::str::from_utf8(&rest[..len]).map_err(|_| self.malformed("string is not UTF-8"))?;
        self.pos += len + 1;
        Ok(s)
    }

    /// A NUL-terminated string, bytes that are not UTF-8 replaced (for what any role may send,
    /// such as a logical message's prefix in a database whose encoding is not UTF-8).
    pub(crate) fn cstr_lossy(&mut self) -> Read<String> {
        let rest = &self.data[self.pos..];
        let len = rest.iter().position(|&b| b == 0).ok_or_else(|| self.malformed("unterminated string"))?;
        let s = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.pos += len + 1;
        Ok(s)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
}
