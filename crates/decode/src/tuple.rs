//! A decoded row: column names and JSON value fragments packed into one buffer.
//!
//! Each column is stored as its escaped JSON key (`"name"`) immediately followed by its JSON
//! value, so writing an object is a series of copies, and comparing two values (for `diff`) is a
//! byte comparison of PostgreSQL's text forms.

use crate::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Column {
    key_start: u32,
    key_end: u32,
    value_end: u32,
    /// An unchanged TOASTed value (pgoutput `u`): its value is not known.
    unchanged: bool,
}

/// One row image (`old` or `new`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tuple {
    buf: Vec<u8>,
    cols: Vec<Column>,
}

impl Tuple {
    /// An empty row with room for `columns` columns of about `bytes` bytes in all.
    pub fn with_capacity(columns: usize, bytes: usize) -> Tuple {
        Tuple { buf: Vec::with_capacity(bytes), cols: Vec::with_capacity(columns) }
    }

    pub fn len(&self) -> usize {
        self.cols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    /// Appends a column whose key is already escaped (`"name"`, quotes included) and whose value
    /// `write` appends as JSON.
    pub fn push_with(&mut self, key_json: &[u8], write: impl FnOnce(&mut Vec<u8>)) {
        let key_start = self.buf.len() as u32;
        self.buf.extend_from_slice(key_json);
        let key_end = self.buf.len() as u32;
        write(&mut self.buf);
        self.cols.push(Column { key_start, key_end, value_end: self.buf.len() as u32, unchanged: false });
    }

    /// Appends a column by plain name.
    pub fn push_named(&mut self, name: &str, write: impl FnOnce(&mut Vec<u8>)) {
        let key_start = self.buf.len() as u32;
        json::write_str(&mut self.buf, name);
        let key_end = self.buf.len() as u32;
        write(&mut self.buf);
        self.cols.push(Column { key_start, key_end, value_end: self.buf.len() as u32, unchanged: false });
    }

    /// Appends a column whose value is an unchanged TOASTed value, not sent by PostgreSQL.
    pub fn push_unchanged(&mut self, key_json: &[u8]) {
        let key_start = self.buf.len() as u32;
        self.buf.extend_from_slice(key_json);
        let end = self.buf.len() as u32;
        self.cols.push(Column { key_start, key_end: end, value_end: end, unchanged: true });
    }

    /// Keeps only the columns whose name `keep` accepts (unescaped, as in the table).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let keeps: Vec<bool> = (0..self.len())
            .map(|i| {
                let key = self.key(i);
                match serde_json::from_slice::<String>(key) {
                    Ok(name) => keep(&name),
                    Err(_) => true,
                }
            })
            .collect();
        if keeps.iter().all(|&k| k) {
            return;
        }
        let mut kept = Tuple::with_capacity(self.len(), self.buf.len());
        for (i, _) in keeps.iter().enumerate().filter(|(_, &k)| k) {
            kept.push_from(self, i);
        }
        *self = kept;
    }

    /// Appends column `i` of `other`.
    pub fn push_from(&mut self, other: &Tuple, i: usize) {
        let col = other.cols[i];
        let key_start = self.buf.len() as u32;
        self.buf.extend_from_slice(&other.buf[col.key_start as usize..col.value_end as usize]);
        let shift = key_start as i64 - col.key_start as i64;
        self.cols.push(Column {
            key_start,
            key_end: (col.key_end as i64 + shift) as u32,
            value_end: (col.value_end as i64 + shift) as u32,
            unchanged: col.unchanged,
        });
    }

    /// The escaped key of column `i`, quotes included.
    pub fn key(&self, i: usize) -> &[u8] {
        let c = self.cols[i];
        &self.buf[c.key_start as usize..c.key_end as usize]
    }

    /// The JSON value of column `i` (empty for an unchanged TOASTed value).
    pub fn value(&self, i: usize) -> &[u8] {
        let c = self.cols[i];
        &self.buf[c.key_end as usize..c.value_end as usize]
    }

    /// Whether column `i` is an unchanged TOASTed value.
    pub fn is_unchanged(&self, i: usize) -> bool {
        self.cols[i].unchanged
    }

    /// Whether any column is an unchanged TOASTed value.
    pub fn has_unchanged(&self) -> bool {
        self.cols.iter().any(|c| c.unchanged)
    }

    /// The index of the column with escaped key `key`, trying position `hint` first.
    pub fn find(&self, key: &[u8], hint: usize) -> Option<usize> {
        if hint < self.cols.len() && self.key(hint) == key {
            return Some(hint);
        }
        (0..self.cols.len()).find(|&i| self.key(i) == key)
    }

    /// Writes the row as a JSON object.
    pub fn write_object(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (n, col) in self.cols.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.buf[col.key_start as usize..col.key_end as usize]);
            out.push(b':');
            out.extend_from_slice(&self.buf[col.key_end as usize..col.value_end as usize]);
        }
        out.push(b'}');
    }

    /// Replaces unchanged TOASTed values by their value in `old` when `old` has it, and drops
    /// them otherwise: an unknown value is left out, never reported as null or as changed.
    pub fn fill_unchanged_from(&mut self, old: &Tuple) {
        if !self.has_unchanged() {
            return;
        }
        let mut filled = Tuple::with_capacity(self.len(), self.buf.len());
        for i in 0..self.len() {
            if !self.is_unchanged(i) {
                filled.push_from(self, i);
            } else if let Some(j) = old.find(self.key(i), i).filter(|&j| !old.is_unchanged(j)) {
                filled.push_from(old, j);
            }
        }
        *self = filled;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cols: &[(&str, Option<&str>)]) -> Tuple {
        let mut t = Tuple::default();
        for (name, value) in cols {
            let mut key = Vec::new();
            json::write_str(&mut key, name);
            match value {
                Some(v) => t.push_with(&key, |out| out.extend_from_slice(v.as_bytes())),
                None => t.push_unchanged(&key),
            }
        }
        t
    }

    fn object(t: &Tuple) -> String {
        let mut out = Vec::new();
        t.write_object(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_objects() {
        assert_eq!(object(&row(&[("id", Some("1")), ("n\"ame", Some("\"x\""))])), r#"{"id":1,"n\"ame":"x"}"#);
        assert_eq!(object(&Tuple::default()), "{}");
    }

    #[test]
    fn fills_unchanged_toast_from_old_or_drops_it() {
        let old = row(&[("id", Some("1")), ("big", Some("\"zzz\"")), ("b", Some("2"))]);
        let mut new = row(&[("id", Some("1")), ("big", None), ("b", Some("3"))]);
        new.fill_unchanged_from(&old);
        assert_eq!(object(&new), r#"{"id":1,"big":"zzz","b":3}"#);

        let key_only = row(&[("id", Some("1"))]);
        let mut new = row(&[("id", Some("1")), ("big", None), ("b", Some("3"))]);
        new.fill_unchanged_from(&key_only);
        assert_eq!(object(&new), r#"{"id":1,"b":3}"#);
        assert!(!new.has_unchanged());
    }

    #[test]
    fn finds_by_key() {
        let t = row(&[("a", Some("1")), ("b", Some("2"))]);
        assert_eq!(t.find(b"\"b\"", 1), Some(1));
        assert_eq!(t.find(b"\"b\"", 0), Some(1));
        assert_eq!(t.find(b"\"c\"", 0), None);
        assert_eq!(t.value(1), b"2");
    }

    #[test]
    fn retains_columns_by_name() {
        let mut t = row(&[("id", Some("1")), ("pass\"word", Some("\"x\"")), ("b", Some("2"))]);
        t.retain(|name| name != "pass\"word");
        assert_eq!(object(&t), r#"{"id":1,"b":2}"#);
        t.retain(|_| true);
        assert_eq!(object(&t), r#"{"id":1,"b":2}"#);
    }
}
