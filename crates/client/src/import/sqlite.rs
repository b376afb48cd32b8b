//! Opening macOS SQLite databases (`chat.db`, `AddressBook-v22.abcddb`) so that they are never
//! modified and only the columns an importer names can be read.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::{FileKind, ImportError, ImportOptions};

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Most tables a database may list before we stop looking (real ones have a few dozen).
const MAX_TABLES: usize = 10_000;

/// A `(table, column)` pair an importer may read. Every other column is refused by SQLite
/// itself (see [`open_read_only`]).
pub(crate) type Column = (&'static str, &'static str);

/// Opens `path` read-only and returns the connection after checking that it is an SQLite
/// database with every table in `allowed`.
///
/// - `SQLITE_OPEN_READ_ONLY` and a `file:…?mode=ro` URI: SQLite will not write the file. We do
///   not use `immutable=1`, which would ignore the write-ahead log of a database that Messages
///   has open and so miss its newest rows.
/// - `PRAGMA query_only` as a second lock, and `trusted_schema = OFF` so that nothing in a
///   hostile file's schema runs functions on our behalf.
/// - An authorizer that lets statements read only the `allowed` columns: a `SELECT *`, or any
///   statement naming `message.text`, `attributedBody`, `subject` or an attachment table, fails to
///   prepare. What the importer cannot read it cannot leak.
pub(crate) fn open_read_only(
    path: &Path,
    kind: FileKind,
    opts: &ImportOptions,
    allowed: &'static [Column],
) -> Result<Connection, ImportError> {
    let io = |source| ImportError::Io { kind, source };
    let metadata = std::fs::metadata(path).map_err(io)?;
    if !metadata.is_file() {
        return Err(ImportError::WrongKind {
            expected: kind,
            reason: "not a regular file".into(),
        });
    }
    if metadata.len() > opts.max_database_bytes {
        return Err(ImportError::TooLarge {
            kind,
            limit: opts.max_database_bytes,
        });
    }
    let mut magic = [0u8; 16];
    {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut filled = 0;
        while filled < magic.len() {
            let n = file.read(&mut magic[filled..]).map_err(io)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
    }
    if &magic != SQLITE_MAGIC {
        return Err(ImportError::WrongKind {
            expected: kind,
            reason: "not an SQLite database".into(),
        });
    }

    let absolute = std::path::absolute(path).map_err(io)?;
    let uri = format!(
        "file:{}?mode=ro",
        percent_encode(absolute.as_os_str().as_encoded_bytes())
    );
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(uri, flags).map_err(|e| db_error(kind, e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| db_error(kind, e))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| db_error(kind, e))?;
    conn.pragma_update(None, "trusted_schema", false)
        .map_err(|e| db_error(kind, e))?;

    let tables = table_names(&conn).map_err(|e| db_error(kind, e))?;
    let needed: BTreeSet<&str> = allowed.iter().map(|(table, _)| *table).collect();
    for &table in &needed {
        if !tables.contains(&table.to_ascii_lowercase()) {
            return Err(ImportError::WrongKind {
                expected: kind,
                reason: format!("it has no `{table}` table"),
            });
        }
    }
    // SQLite names columns to the authorizer as the file's schema declares them (a query's
    // `ROWID` is reported under the name of the table's INTEGER PRIMARY KEY column), and
    // rusqlite panics on a name that is not UTF-8: inside its callback, which turns the panic
    // into an error, but the panic hook still runs and a `panic = "abort"` build aborts. A
    // hostile or corrupt schema gets a clear error instead, before the authorizer is installed.
    for &table in &needed {
        if !column_names_are_utf8(&conn, table).map_err(|e| db_error(kind, e))? {
            return Err(ImportError::WrongKind {
                expected: kind,
                reason: format!("a column name of the `{table}` table is not UTF-8"),
            });
        }
    }

    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        authorize(allowed, ctx.action)
    }))
    .map_err(|e| db_error(kind, e))?;
    Ok(conn)
}

/// The authorizer: plain `SELECT`s of allowed columns, nothing else (no functions, no pragmas,
/// no writes, no `ATTACH`).
fn authorize(allowed: &[Column], action: AuthAction<'_>) -> Authorization {
    match action {
        AuthAction::Select => Authorization::Allow,
        AuthAction::Read {
            table_name,
            column_name,
        } if allowed.iter().any(|(table, column)| {
            table.eq_ignore_ascii_case(table_name) && column.eq_ignore_ascii_case(column_name)
        }) =>
        {
            Authorization::Allow
        }
        _ => Authorization::Deny,
    }
}

/// Lowercased names of the database's ordinary tables (views and virtual tables do not count:
/// an importer reads real tables only).
fn table_names(conn: &Connection) -> rusqlite::Result<BTreeSet<String>> {
    let mut stmt =
        conn.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' LIMIT ?1")?;
    let limit = i64::try_from(MAX_TABLES).unwrap_or(i64::MAX);
    let mut rows = stmt.query([limit])?;
    let mut names = BTreeSet::new();
    while let Some(row) = rows.next()? {
        let name = match row.get_ref(0)? {
            ValueRef::Text(t) if t.len() <= 256 => String::from_utf8_lossy(t).to_ascii_lowercase(),
            _ => continue,
        };
        let is_virtual = match row.get_ref(1)? {
            ValueRef::Text(sql) => sql
                .get(..20)
                .is_some_and(|head| head.eq_ignore_ascii_case(b"CREATE VIRTUAL TABLE")),
            _ => false,
        };
        if !is_virtual {
            names.insert(name);
        }
    }
    Ok(names)
}

/// Whether every column name `table` declares is valid UTF-8.
fn column_names_are_utf8(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let mut rows = stmt.query([table])?;
    while let Some(row) = rows.next()? {
        if let ValueRef::Text(name) = row.get_ref(0)?
            && std::str::from_utf8(name).is_err()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Maps SQLite errors: "not a database" means the file is of the wrong kind; a statement that
/// cannot be prepared against this schema (a missing column) likewise; anything else is a
/// database error.
pub(crate) fn db_error(kind: FileKind, error: rusqlite::Error) -> ImportError {
    use rusqlite::ErrorCode;
    match error.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => ImportError::WrongKind {
            expected: kind,
            reason: "not an SQLite database".into(),
        },
        _ => ImportError::Database {
            kind,
            source: Box::new(error),
        },
    }
}

/// Prepares one of the importer's statements; a failure here means the schema lacks a column
/// the importer needs, i.e. the file is not the database it claims to be.
pub(crate) fn prepare<'c>(
    conn: &'c Connection,
    kind: FileKind,
    sql: &str,
) -> Result<rusqlite::Statement<'c>, ImportError> {
    conn.prepare(sql).map_err(|e| match &e {
        rusqlite::Error::SqlInputError { msg, .. } if msg.starts_with("no such column") => {
            ImportError::WrongKind {
                expected: kind,
                reason: "a table lacks a column the importer reads".into(),
            }
        }
        _ => db_error(kind, e),
    })
}

/// An integer column, accepting integers and integral reals; anything else is `None`.
pub(crate) fn int(value: ValueRef<'_>) -> Option<i64> {
    match value {
        ValueRef::Integer(i) => Some(i),
        ValueRef::Real(r) if r.is_finite() && r.fract() == 0.0 && r.abs() < 9.0e18 => {
            Some(r as i64)
        }
        _ => None,
    }
}

/// A text column of at most `max` bytes of valid UTF-8; anything else is `None`.
pub(crate) fn text(value: ValueRef<'_>, max: usize) -> Option<&str> {
    match value {
        ValueRef::Text(t) if t.len() <= max => std::str::from_utf8(t).ok(),
        _ => None,
    }
}

/// Percent-encodes a path for an SQLite URI (`?`, `#`, `%` and anything unusual).
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_paths_escape_query_and_fragment_characters() {
        assert_eq!(
            percent_encode(b"/a b/c?d#e%f.db"),
            "/a%20b/c%3Fd%23e%25f.db"
        );
        assert_eq!(percent_encode("/é".as_bytes()), "/%C3%A9");
    }

    /// Found by the `imessage` fuzz target (`fuzz/corpus/imessage/crash-non-utf8-rowid-column`):
    /// `SELECT c.ROWID FROM chat AS c` reaches the authorizer with the name of `chat`'s INTEGER
    /// PRIMARY KEY column, here `R\xe1WID`, on which rusqlite panics.
    #[test]
    fn a_column_name_that_is_not_utf8_is_refused_before_the_authorizer_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = kith_testkit::apple_db::sqlite_file(
            dir.path(),
            "chat.db",
            "CREATE TABLE chat (ROWID INTEGER PRIMARY KEY, style INTEGER);
             INSERT INTO chat VALUES (1, 45);
             PRAGMA writable_schema = ON;",
        );
        let sql: &[u8] = b"CREATE TABLE chat (R\xe1WID INTEGER PRIMARY KEY, style INTEGER)";
        conn.execute(
            "UPDATE sqlite_master SET sql = CAST(?1 AS TEXT) WHERE name = 'chat'",
            [sql],
        )
        .unwrap();
        drop(conn);

        const ALLOWED: &[Column] = &[("chat", "ROWID"), ("chat", "style")];
        let opts = ImportOptions::default();
        let result = open_read_only(&path, FileKind::MessagesDatabase, &opts, ALLOWED);
        assert!(
            matches!(result, Err(ImportError::WrongKind { ref reason, .. }) if reason.contains("UTF-8")),
            "{:?}",
            result.err()
        );
    }

    #[test]
    fn authorizer_allows_only_listed_columns_and_plain_selects() {
        const ALLOWED: &[Column] = &[("message", "date")];
        let read = |table_name, column_name| AuthAction::Read {
            table_name,
            column_name,
        };
        assert_eq!(
            authorize(ALLOWED, read("message", "date")),
            Authorization::Allow
        );
        assert_eq!(
            authorize(ALLOWED, read("MESSAGE", "Date")),
            Authorization::Allow
        );
        assert_eq!(
            authorize(ALLOWED, read("message", "text")),
            Authorization::Deny
        );
        assert_eq!(authorize(ALLOWED, AuthAction::Select), Authorization::Allow);
        assert_eq!(
            authorize(
                ALLOWED,
                AuthAction::Function {
                    function_name: "load_extension"
                }
            ),
            Authorization::Deny
        );
    }
}
