//! The schemas of the macOS databases the importers read, for tests and fuzz targets that build
//! such databases of their own.

#[cfg(feature = "sqlite")]
use std::path::{Path, PathBuf};

/// Creates the SQLite file `name` in `dir` and runs `sql` in it: the file's path and the
/// connection, still open (drop it before an importer reads the file, or keep writing).
#[cfg(feature = "sqlite")]
pub fn sqlite_file(dir: &Path, name: &str, sql: &str) -> (PathBuf, rusqlite::Connection) {
    let path = dir.join(name);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(sql).unwrap();
    (path, conn)
}

/// The tables of macOS Messages' `chat.db` the importer reads, plus the ones it must not
/// (`attachment` and its join: a file name is private).
pub const CHAT_DB_SCHEMA: &str = "
CREATE TABLE handle (ROWID INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, id TEXT NOT NULL,
  country TEXT, service TEXT NOT NULL, uncanonicalized_id TEXT, person_centric_id TEXT,
  UNIQUE (id, service));
CREATE TABLE message (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL,
  text TEXT, handle_id INTEGER DEFAULT 0, subject TEXT, attributedBody BLOB, service TEXT,
  date INTEGER, is_from_me INTEGER DEFAULT 0, associated_message_type INTEGER DEFAULT 0,
  item_type INTEGER DEFAULT 0, group_title TEXT);
CREATE TABLE chat (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL,
  style INTEGER, chat_identifier TEXT, service_name TEXT, display_name TEXT);
CREATE TABLE chat_handle_join (chat_id INTEGER, handle_id INTEGER, UNIQUE(chat_id, handle_id));
CREATE TABLE chat_message_join (chat_id INTEGER, message_id INTEGER, message_date INTEGER,
  PRIMARY KEY (chat_id, message_id));
CREATE TABLE attachment (ROWID INTEGER PRIMARY KEY, filename TEXT, transfer_name TEXT);
CREATE TABLE message_attachment_join (message_id INTEGER, attachment_id INTEGER);
";
