//! One-time migration of the previous release's store (sled, in the same directory).
//!
//! The previous release kept the same six trees in a sled database in `<home>/store`, with
//! values sealed exactly as they are now (same cipher, same associated data, same blinded
//! keys), so migrating copies the sealed bytes as they are: nothing is decrypted, and nothing
//! is ever written in plaintext. The steps, each safe to interrupt:
//!
//! 1. copy every tree into `kith.sqlite3.migrating` (a crash here leaves the sled store as it
//!    was; the next open starts again);
//! 2. rename it to `kith.sqlite3` (atomic: from now on the SQLite store is the store);
//! 3. move the sled files to `<home>/store.sled-backup` (the backup; a crash before this step
//!    is finished is completed on the next open). A person can delete the backup once the
//!    new release works for them.
//!
//! sled holds an exclusive lock on its directory, so a process of the previous release still
//! running on the same home makes the migration fail with a message saying so, and nothing
//! changes.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{
    DB_FILE, FORMAT_VERSION, LocalStoreError, NEXT_ID, SCHEMA, TreeName, ValueCipher, io_error,
    put_sql,
};

/// The suffix of the backup directory, beside the store directory.
pub const BACKUP_SUFFIX: &str = ".sled-backup";

/// The directory the previous release's files are moved to.
pub fn backup_dir(dir: &Path) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "store".into());
    name.push(BACKUP_SUFFIX);
    dir.with_file_name(name)
}

/// Migrates the sled store in `dir` to the SQLite database `path` (see the module docs).
pub(super) fn from_sled(
    dir: &Path,
    path: &Path,
    cipher: &ValueCipher,
) -> Result<(), LocalStoreError> {
    let migrating = path.with_extension("sqlite3.migrating");
    // What an interrupted earlier attempt left, its rollback journal included.
    remove_if_exists(&migrating)?;
    remove_if_exists(&path.with_extension("sqlite3.migrating-journal"))?;
    copy_trees(dir, &migrating, cipher)?;
    std::fs::rename(&migrating, path).map_err(io_error(format!(
        "cannot rename {} to {}",
        migrating.display(),
        path.display()
    )))?;
    sync_dir(dir)?;
    move_sled_files(dir)?;
    tracing::info!(
        backup = %backup_dir(dir).display(),
        "migrated the previous release's local store to SQLite"
    );
    Ok(())
}

/// Moves what is left of a sled store beside `kith.sqlite3` into the backup (step 3; also
/// finishes a migration interrupted during that step).
pub(super) fn move_sled_files(dir: &Path) -> Result<(), LocalStoreError> {
    if !dir.join("conf").is_file() && !dir.join("db").is_file() {
        return Ok(());
    }
    let backup = backup_dir(dir);
    std::fs::create_dir_all(&backup)
        .map_err(io_error(format!("cannot create {}", backup.display())))?;
    let entries =
        std::fs::read_dir(dir).map_err(io_error(format!("cannot list {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_error(format!("cannot list {}", dir.display())))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(DB_FILE) {
            continue;
        }
        let to = backup.join(&name);
        std::fs::rename(entry.path(), &to).map_err(io_error(format!(
            "cannot move {} to {}",
            entry.path().display(),
            to.display()
        )))?;
    }
    sync_dir(&backup)?;
    sync_dir(dir)
}

fn copy_trees(dir: &Path, to: &Path, cipher: &ValueCipher) -> Result<(), LocalStoreError> {
    let sled_error = |e: sled::Error| {
        let text = e.to_string();
        if text.contains("WouldBlock") || text.contains("lock") {
            LocalStoreError::Migration(format!(
                "{} is in use by another process (a `kith` of the previous release, e.g. `kith sync --watch`?): stop it, then run this command again",
                dir.display()
            ))
        } else {
            LocalStoreError::Migration(format!("cannot read {}: {text}", dir.display()))
        }
    };
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(8 * 1024 * 1024)
        .open()
        .map_err(sled_error)?;
    let mut connection = Connection::open(to)?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    let tx = connection.transaction()?;
    tx.execute_batch(SCHEMA)?;
    let mut max_pending: Option<u64> = None;
    for tree in TreeName::ALL {
        let source = db.open_tree(tree.as_str()).map_err(sled_error)?;
        let mut insert = tx.prepare_cached(put_sql(tree))?;
        for item in source.iter() {
            let (key, sealed) = item.map_err(sled_error)?;
            if tree == TreeName::Pending
                && let Ok(bytes) = <[u8; 8]>::try_from(key.as_ref())
            {
                max_pending = max_pending.max(Some(u64::from_be_bytes(bytes)));
            }
            insert.execute(rusqlite::params![key.as_ref(), sealed.as_ref()])?;
        }
    }
    // New pending keys must sort after the migrated ones: continue sled's id generator.
    let next_id = db
        .generate_id()
        .map_err(sled_error)?
        .max(max_pending.map_or(0, |m| m + 1));
    let sealed = cipher.seal(TreeName::Meta, NEXT_ID, &next_id.to_be_bytes());
    tx.execute(put_sql(TreeName::Meta), rusqlite::params![NEXT_ID, sealed])?;
    tx.pragma_update(None, "user_version", FORMAT_VERSION)?;
    tx.commit()?;
    drop(connection);
    drop(db);
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), LocalStoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LocalStoreError::Io {
            context: format!("cannot remove {}", path.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), LocalStoreError> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(format!("cannot sync {}", dir.display())))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
