//! The password file, as libpq reads it: `PGPASSFILE`, or `~/.pgpass`. Each line is
//! `hostname:port:database:username:password`; `*` matches anything, `\:` and `\\` escape, `#`
//! starts a comment. The first matching line wins. `localhost` also matches a Unix socket
//! connection. As libpq does, a file others can read (mode wider than 0600) is ignored, with a
//! warning, so that a password cannot leak through a careless `chmod`.

use std::path::{Path, PathBuf};

/// What a connection is looked up by.
#[derive(Debug, Clone, Copy)]
pub struct PassKey<'a> {
    /// Host name, address or socket directory.
    pub host: &'a str,
    pub port: u16,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// The file libpq would read: `PGPASSFILE`, else `$HOME/.pgpass`.
pub fn default_file(pgpassfile: Option<&str>, home: Option<&Path>) -> Option<PathBuf> {
    match pgpassfile.filter(|p| !p.is_empty()) {
        Some(file) => Some(PathBuf::from(file)),
        None => home.map(|home| home.join(".pgpass")),
    }
}

/// The password for `key` in the file's `text`, if a line matches.
pub fn lookup(text: &str, key: PassKey<'_>) -> Option<String> {
    let host = if key.host.starts_with('/') { "localhost" } else { key.host };
    let port = key.port.to_string();
    let wanted = [host, port.as_str(), key.dbname, key.user];
    text.lines().filter(|line| !line.trim_start().starts_with('#')).find_map(|line| {
        let fields = split(line)?;
        let matches = fields[..4].iter().zip(wanted).all(|(field, value)| field == "*" || field == value);
        matches.then(|| fields[4].clone())
    })
}

/// The five fields of a line, unescaped; `None` for a line without them.
fn split(line: &str) -> Option<[String; 5]> {
    let mut fields: Vec<String> = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    fields.try_into().ok()
}

/// Why the file was not used.
#[derive(Debug, thiserror::Error)]
pub enum PassFileError {
    #[error("password file {file} is readable by others (mode {mode:o}); it is ignored: chmod 0600 it")]
    TooOpen { file: PathBuf, mode: u32 },
    #[error("cannot read the password file {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
}

/// Reads `file` (a missing file is no password, not an error) and looks `key` up.
pub fn read(file: &Path, key: PassKey<'_>) -> Result<Option<String>, PassFileError> {
    let metadata = match std::fs::metadata(file) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PassFileError::Read { file: file.to_owned(), source }),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PassFileError::TooOpen { file: file.to_owned(), mode });
        }
    }
    let _ = metadata;
    let text = std::fs::read_to_string(file).map_err(|source| PassFileError::Read { file: file.to_owned(), source })?;
    Ok(lookup(&text, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comment
db.example:5432:app:repl:first\\:pass
*:*:app:repl:second
localhost:6543:*:*:socket
*:*:*:odd\\\\user:back\\\\slash
short:line
";

    fn key<'a>(host: &'a str, port: u16, dbname: &'a str, user: &'a str) -> PassKey<'a> {
        PassKey { host, port, dbname, user }
    }

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        assert_eq!(lookup(FILE, key("db.example", 5432, "app", "repl")).as_deref(), Some("first:pass"));
        assert_eq!(lookup(FILE, key("other", 5432, "app", "repl")).as_deref(), Some("second"));
        assert_eq!(lookup(FILE, key("/var/run/postgresql", 6543, "x", "y")).as_deref(), Some("socket"));
        assert_eq!(lookup(FILE, key("h", 1, "d", "odd\\user")).as_deref(), Some("back\\slash"));
        assert_eq!(lookup(FILE, key("h", 1, "d", "nobody")), None);
    }

    #[test]
    fn the_file_comes_from_pgpassfile_or_home() {
        assert_eq!(default_file(Some("/etc/pw"), Some(Path::new("/root"))), Some(PathBuf::from("/etc/pw")));
        assert_eq!(default_file(None, Some(Path::new("/root"))), Some(PathBuf::from("/root/.pgpass")));
        assert_eq!(default_file(Some(""), None), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_ignored_and_a_missing_one_is_no_password() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let file = dir.join("pgpass");
        std::fs::write(&file, "*:*:*:*:pw\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read(&file, key("h", 1, "d", "u")).unwrap_err();
        assert!(err.to_string().contains("chmod 0600"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&file, key("h", 1, "d", "u")).unwrap().as_deref(), Some("pw"));
        assert_eq!(read(&dir.join("missing"), key("h", 1, "d", "u")).unwrap(), None);
    }
}
