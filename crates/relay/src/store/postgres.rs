//! The PostgreSQL backend: several relays in front of one database.
//!
//! Driver: the synchronous `postgres` crate (tokio-postgres underneath) on a few worker
//! threads the store owns, each with its own connection. The [`Store`] trait stays synchronous
//! (the relay calls it under an account lock, as it calls sled); a call hands its statement to
//! a worker and waits for the answer, inside `tokio::task::block_in_place` on a multi-threaded
//! runtime so that the runtime's other tasks move to another thread meanwhile. Why not an async
//! trait: every handler would change shape (the account lock is a std mutex held across the
//! write, which is what orders writes), for no gain on the one relay that uses sled; and why
//! not a pool such as deadpool: the worker threads are the pool (a statement cache per
//! connection, reconnection on failure) without another dependency.
//!
//! Layout (schema version 3, see [`MIGRATIONS`]):
//!
//! | table | row |
//! |---|---|
//! | `kith_accounts` | account id, encoded signed roster, its version, bytes of sealed keys, what the operator set (`settings`, [`AccountSettings::encode`]; NULL for the defaults), last active day (since the Unix epoch, 0 for never) |
//! | `kith_streams` | account, device, first seq, last seq, bytes, envelopes: the stream head |
//! | `kith_envelopes` | account, device, first and last seq, packed envelopes (`u32 BE length ‖ bytes`, repeated) |
//! | `kith_sealed_keys` | account, device, epoch, sealed key |
//! | `kith_pairing` | slot id, account, expiry, bundle |
//! | `kith_recovery` | lookup id, account (unique), bundle |
//! | `kith_tokens` | SHA-256 of an unused registration token |
//! | `kith_push_targets` | account, device, push-gateway token (schema version 2) |
//! | `kith_schema` | migrations applied |
//!
//! A push is one transaction: it locks the account row (shared), checks the roster version
//! the relay authorised it against, moves the stream head by compare-and-set from
//! `first_seq - 1` to the new last seq, inserts the batch packed into rows of up to
//! `value_bytes` (one row per push in practice: PostgreSQL sees the row rate, not the envelope
//! rate) and issues `NOTIFY kith_relay` for the other relays. Every connection sets
//! `synchronous_commit = on`: a call returns once its transaction is committed and durable,
//! so [`Store::flush`] has nothing left to do and pulls (another transaction) only ever see
//! committed envelopes. A roster is replaced under an exclusive lock of the account row, only
//! by a higher version, and only if no stream it ends is past its `final_seq`.
//! The envelope column is stored uncompressed (`STORAGE EXTERNAL`): ciphertext does not
//! compress.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kith_protocol::ids::{AccountId, DeviceId};
use postgres::{Client, NoTls, Statement};
use tokio::sync::mpsc;

use super::{
    AccountSettings, Exported, LoadedAccount, ReadEnd, Store, StoreChange, StoreError, StoreFuture,
    StoreStats, StreamMeta,
};
use crate::state::lock;

/// The channel every relay on a database listens to.
pub const NOTIFY_CHANNEL: &str = "kith_relay";
/// `pg_advisory_xact_lock` key serialising migrations of relays starting at once ("kith").
const MIGRATION_LOCK: i64 = 0x6b69_7468;
/// Rows of a stream read per round trip.
const READ_ROWS: i64 = 16;

/// The versioned schema migrations, applied in order, each once, in one transaction each.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE kith_accounts (
        id bytea PRIMARY KEY,
        roster bytea NOT NULL,
        roster_version bigint NOT NULL,
        sealed_key_bytes bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE kith_streams (
        account bytea NOT NULL,
        device bytea NOT NULL,
        first_seq bigint NOT NULL,
        last_seq bigint NOT NULL,
        bytes bigint NOT NULL,
        envelopes bigint NOT NULL,
        PRIMARY KEY (account, device)
    );
    CREATE TABLE kith_envelopes (
        account bytea NOT NULL,
        device bytea NOT NULL,
        first_seq bigint NOT NULL,
        last_seq bigint NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (account, device, first_seq)
    );
    ALTER TABLE kith_envelopes ALTER COLUMN data SET STORAGE EXTERNAL;
    CREATE TABLE kith_sealed_keys (
        account bytea NOT NULL,
        device bytea NOT NULL,
        epoch bigint NOT NULL,
        sealed bytea NOT NULL,
        PRIMARY KEY (account, device, epoch)
    );
    CREATE TABLE kith_pairing (
        slot bytea PRIMARY KEY,
        account bytea NOT NULL,
        expires_at_ms bigint NOT NULL,
        bundle bytea NOT NULL
    );
    CREATE INDEX kith_pairing_account ON kith_pairing (account);
    CREATE INDEX kith_pairing_expiry ON kith_pairing (expires_at_ms);
    CREATE TABLE kith_recovery (
        lookup bytea PRIMARY KEY,
        account bytea NOT NULL UNIQUE,
        bundle bytea NOT NULL
    );
    CREATE TABLE kith_tokens (hash bytea PRIMARY KEY);",
    ),
    (
        2,
        "CREATE TABLE kith_push_targets (
        account bytea NOT NULL,
        device bytea NOT NULL,
        token bytea NOT NULL,
        PRIMARY KEY (account, device)
    );",
    ),
    (
        3,
        "ALTER TABLE kith_accounts ADD COLUMN settings bytea;
    ALTER TABLE kith_accounts ADD COLUMN active_day integer NOT NULL DEFAULT 0;",
    ),
];

/// The schema version this code reads and writes: the last migration's.
pub fn schema_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

fn backend(err: postgres::Error) -> StoreError {
    // The server's message names tables and constraints, never a value: bytea parameters are
    // not echoed into error texts.
    match err.as_db_error() {
        Some(db) => StoreError::Backend(format!("postgresql: {}", db.message())),
        None => StoreError::Backend(format!("postgresql: {err}")),
    }
}

impl From<postgres::Error> for StoreError {
    fn from(err: postgres::Error) -> Self {
        backend(err)
    }
}

/// Seqs, sizes and times in `bigint` columns. The relay never stores a seq or size near
/// 2^63 (seqs grow by one from 1); a bound given by a client (a cursor) saturates.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt("negative integer"))
}

/// Epochs come from clients and may use all 64 bits: stored flipped in the sign bit, which
/// keeps their order in a signed column.
fn epoch_col(epoch: u64) -> i64 {
    (epoch ^ (1 << 63)) as i64
}

fn epoch_of(col: i64) -> u64 {
    (col as u64) ^ (1 << 63)
}

fn account_of(bytes: &[u8]) -> Result<AccountId, StoreError> {
    AccountId::from_slice(bytes).map_err(|_| StoreError::Corrupt("account id"))
}

fn settings_of(bytes: Option<&[u8]>) -> Result<AccountSettings, StoreError> {
    bytes.map_or(Ok(AccountSettings::default()), AccountSettings::decode)
}

fn device_of(bytes: &[u8]) -> Result<DeviceId, StoreError> {
    DeviceId::from_slice(bytes).map_err(|_| StoreError::Corrupt("device id"))
}

fn id32(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| StoreError::Corrupt("32-byte id"))
}

fn pack(envelopes: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(envelopes.iter().map(|e| e.len() + 4).sum());
    for envelope in envelopes {
        out.extend_from_slice(
            &u32::try_from(envelope.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(envelope);
    }
    out
}

/// The byte ranges of the envelopes packed in a row.
fn unpack(value: &[u8]) -> Result<Vec<std::ops::Range<usize>>, StoreError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < value.len() {
        let len = value
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or(StoreError::Corrupt("envelope length"))? as usize;
        let end = at
            .checked_add(4 + len)
            .filter(|end| *end <= value.len())
            .ok_or(StoreError::Corrupt("envelope body"))?;
        out.push(at + 4..end);
        at = end;
    }
    Ok(out)
}

fn meta_of(row: &postgres::Row) -> Result<StreamMeta, StoreError> {
    Ok(StreamMeta {
        first_seq: uint(row.get("first_seq"))?,
        last_seq: uint(row.get("last_seq"))?,
        bytes: uint(row.get("bytes"))?,
        envelopes: uint(row.get("envelopes"))?,
    })
}

/// A read row whose `data` column (a non-null bytea, checked before wrapping) becomes the
/// bytes of a [`Bytes`] without being copied out of the row: the pulled envelopes are slices
/// of what the driver received, as the embedded store's are slices of what it read.
struct RowData(postgres::Row);

impl AsRef<[u8]> for RowData {
    fn as_ref(&self) -> &[u8] {
        self.0.try_get::<_, &[u8]>(1).unwrap_or_default()
    }
}

/// One worker's connection and its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    fn connect(config: &postgres::Config) -> Result<Self, StoreError> {
        let mut client = config.connect(NoTls)?;
        // Acknowledge only what is durable, whatever the server's default.
        client.batch_execute("SET synchronous_commit = on")?;
        Ok(Self {
            client,
            statements: HashMap::new(),
        })
    }

    /// The prepared statement for `sql` (prepared once per connection).
    fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

type Job = Box<dyn FnOnce(&mut Result<Conn, StoreError>) + Send>;

/// The PostgreSQL store. Cheap to share (`Arc`); the workers stop when it is dropped.
pub struct PostgresStore {
    config: postgres::Config,
    jobs: Mutex<Option<std_mpsc::Sender<Job>>>,
    value_bytes: usize,
    /// Tells notifications of this store's own writes from other relays'.
    origin: String,
    stopping: Arc<AtomicBool>,
    /// Where a redacted description of the database is kept for logs and errors.
    described: String,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.described)
            .finish_non_exhaustive()
    }
}

/// `postgres://user@host:port/db` without the password, for logs.
pub fn describe(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "postgres://{}@{}:{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        ports.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// Whether a store location names PostgreSQL (`postgres://…` or `postgresql://…`).
pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// Applies the migrations `client` has not seen; returns the versions applied now.
fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS kith_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )?;
    let mut tx = client.transaction()?;
    // Relays starting at once: one migrates, the others wait and then find nothing to do.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let found: Option<i32> = tx
        .query_one("SELECT max(version) FROM kith_schema", &[])?
        .get(0);
    let found = found.unwrap_or(0);
    if found > schema_version() {
        return Err(StoreError::SchemaVersion {
            found: found as u32,
            expected: schema_version() as u32,
        });
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO kith_schema (version) VALUES ($1)", &[version])?;
        applied.push(*version);
    }
    tx.commit()?;
    Ok(applied)
}

/// The schema version a database is at (0 if never migrated).
fn stored_version(client: &mut Client) -> Result<i32, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('kith_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let found: Option<i32> = client
        .query_one("SELECT max(version) FROM kith_schema", &[])?
        .get(0);
    Ok(found.unwrap_or(0))
}

/// Runs the migrations on the database at `url` (`kith-relay migrate`); returns the versions
/// applied now.
pub fn run_migrations(url: &str) -> Result<Vec<i32>, StoreError> {
    let config = parse(url)?;
    off_runtime(|| migrate(&mut Conn::connect(&config)?.client))
}

/// Runs `f` on a thread of its own: the synchronous driver blocks on a runtime of its own,
/// which it may not do on a thread that drives the relay's runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Why a connection string asking for TLS is refused.
const NO_TLS: &str = "TLS to PostgreSQL is not supported by this release (sslmode=require, \
     verify-ca, verify-full, sslrootcert): reach the database over a Unix socket or a private \
     network, with sslmode=disable (README.md, \"PostgreSQL\")";

fn parse(url: &str) -> Result<postgres::Config, StoreError> {
    let asks_tls = [
        "sslmode=require",
        "sslmode=verify",
        "sslrootcert",
        "sslcert",
        "sslkey",
    ]
    .iter()
    .any(|option| url.contains(option));
    let config = postgres::Config::from_str(url).map_err(|_| {
        // The driver's message may quote the string, password included: not repeated here.
        StoreError::Backend(if asks_tls {
            NO_TLS.into()
        } else {
            "the PostgreSQL connection string does not parse".into()
        })
    })?;
    // The driver runs without a TLS implementation: `require` would fail at every connection
    // with a message about handshakes; say what to do instead, once, at start-up.
    if asks_tls || config.get_ssl_mode() == postgres::config::SslMode::Require {
        return Err(StoreError::Backend(NO_TLS.into()));
    }
    Ok(config)
}

/// Waits for a worker's answer without stalling the runtime's other tasks.
fn wait<T>(rx: std_mpsc::Receiver<T>) -> Option<T> {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(|| rx.recv().ok())
    } else {
        rx.recv().ok()
    }
}

impl PostgresStore {
    /// Connects `connections` workers to the database at `url`, runs the schema migrations
    /// it lacks, and packs pushed envelopes into rows of up to `value_bytes`.
    pub fn open(url: &str, connections: usize, value_bytes: usize) -> Result<Self, StoreError> {
        Self::open_inner(url, connections, value_bytes, true)
    }

    /// [`PostgresStore::open`] without migrating: refuses a database whose schema is not the
    /// one this code writes.
    pub fn open_without_migrating(
        url: &str,
        connections: usize,
        value_bytes: usize,
    ) -> Result<Self, StoreError> {
        Self::open_inner(url, connections, value_bytes, false)
    }

    fn open_inner(
        url: &str,
        connections: usize,
        value_bytes: usize,
        run_migrations: bool,
    ) -> Result<Self, StoreError> {
        off_runtime(|| Self::open_here(url, connections, value_bytes, run_migrations))
    }

    fn open_here(
        url: &str,
        connections: usize,
        value_bytes: usize,
        run_migrations: bool,
    ) -> Result<Self, StoreError> {
        let config = parse(url)?;
        let described = describe(&config);
        let mut first = Conn::connect(&config)
            .map_err(|err| StoreError::Backend(format!("connecting to {described}: {err}")))?;
        if run_migrations {
            let applied = migrate(&mut first.client)?;
            if !applied.is_empty() {
                tracing::info!(?applied, database = %described, "schema migrations applied");
            }
        } else {
            let found = stored_version(&mut first.client)?;
            if found != schema_version() {
                return Err(StoreError::SchemaVersion {
                    found: found as u32,
                    expected: schema_version() as u32,
                });
            }
        }
        let (tx, rx) = std_mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        let mut first = Some(first);
        for i in 0..connections.max(1) {
            let rx = rx.clone();
            let config = config.clone();
            let mut conn: Result<Conn, StoreError> = match first.take() {
                Some(conn) => Ok(conn),
                None => Conn::connect(&config),
            };
            let worker = std::thread::Builder::new()
                .name(format!("kith-pg-{i}"))
                .spawn(move || {
                    loop {
                        let job = lock(&rx).recv();
                        let Ok(job) = job else { return };
                        // A connection that broke (server restart, network) is made again
                        // for the next statement; the statement that saw it break failed.
                        if conn.as_ref().map_or(true, |c| c.client.is_closed()) {
                            conn = Conn::connect(&config);
                        }
                        job(&mut conn);
                    }
                })
                .map_err(|e| StoreError::Backend(format!("starting a worker: {e}")))?;
            workers.push(worker);
        }
        let mut origin = [0u8; 8];
        getrandom::fill(&mut origin)
            .map_err(|e| StoreError::Backend(format!("no randomness: {e}")))?;
        Ok(Self {
            config,
            jobs: Mutex::new(Some(tx)),
            value_bytes,
            origin: hex::encode(origin),
            stopping: Arc::new(AtomicBool::new(false)),
            described,
            workers: Mutex::new(workers),
        })
    }

    /// A redacted description of the database (no password).
    pub fn database(&self) -> &str {
        &self.described
    }

    /// Runs `f` on a worker's connection and returns its result.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std_mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => f(conn),
                Err(err) => Err(err.clone()),
            };
            let _ = tx.send(result);
        });
        lock(&self.jobs)
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the store is closed".into()))?
            .send(job)
            .map_err(|_| StoreError::Backend("the store's workers stopped".into()))?;
        wait(rx).unwrap_or_else(|| Err(StoreError::Backend("a store worker stopped".into())))
    }

    fn notify_payload(&self, kind: char, account: &AccountId, rest: &str) -> String {
        format!(
            "{} {kind} {}{rest}",
            self.origin,
            hex::encode(account.as_bytes())
        )
    }

    /// Deletes every row the schema holds (tests and `migrate-store` into a fresh database
    /// use it; never called by the relay).
    pub fn wipe(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            conn.client.batch_execute(
                "TRUNCATE kith_accounts, kith_streams, kith_envelopes, kith_sealed_keys,
                 kith_pairing, kith_recovery, kith_tokens",
            )?;
            Ok(())
        })
    }

    /// Bytes the database takes on disk (`pg_database_size`), for `kith-relay bench`.
    pub fn database_bytes(&self) -> Result<u64, StoreError> {
        self.run(|conn| {
            let size: i64 = conn
                .client
                .query_one("SELECT pg_database_size(current_database())", &[])?
                .get(0);
            uint(size)
        })
    }

    /// One append transaction; `roster_version` is the expected roster version when the
    /// caller wants it checked, `import` lets a copied stream start past seq 1.
    #[allow(clippy::too_many_arguments)]
    fn append_inner(
        &self,
        account: &AccountId,
        device: &DeviceId,
        first_seq: u64,
        envelopes: &[&[u8]],
        meta: &StreamMeta,
        roster_version: Option<u64>,
        import: bool,
    ) -> Result<(), StoreError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        // Rows of up to `value_bytes` of packed envelopes, at least one envelope each.
        let mut rows: Vec<(i64, i64, Vec<u8>)> = Vec::new();
        let mut start = 0usize;
        while start < envelopes.len() {
            let mut end = start + 1;
            let mut size = envelopes[start].len() + 4;
            while end < envelopes.len() && size + envelopes[end].len() + 4 <= self.value_bytes {
                size += envelopes[end].len() + 4;
                end += 1;
            }
            rows.push((
                int(first_seq + start as u64),
                int(first_seq + end as u64 - 1),
                pack(&envelopes[start..end]),
            ));
            start = end;
        }
        let (a, d) = (account.as_bytes().to_vec(), device.as_bytes().to_vec());
        let meta = *meta;
        let payload = self.notify_payload(
            'P',
            account,
            &format!(" {} {}", hex::encode(device.as_bytes()), meta.last_seq),
        );
        self.run(move |conn| {
            let lock_account =
                conn.statement("SELECT roster_version FROM kith_accounts WHERE id = $1 FOR SHARE")?;
            let advance = conn.statement(
                "UPDATE kith_streams SET first_seq = $3, last_seq = $4, bytes = $5, envelopes = $6
                 WHERE account = $1 AND device = $2 AND last_seq = $7",
            )?;
            let start = conn.statement(
                "INSERT INTO kith_streams (account, device, first_seq, last_seq, bytes, envelopes)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )?;
            let insert = conn.statement(
                "INSERT INTO kith_envelopes (account, device, first_seq, last_seq, data)
                 VALUES ($1, $2, $3, $4, $5)",
            )?;
            let notify = conn.statement("SELECT pg_notify($1, $2)")?;
            let mut tx = conn.client.transaction()?;
            if let Some(expected) = roster_version {
                let found: Option<i64> = tx.query_opt(&lock_account, &[&a])?.map(|row| row.get(0));
                if found != Some(int(expected)) {
                    return Err(StoreError::Moved);
                }
            }
            let head = [
                &a as &(dyn postgres::types::ToSql + Sync),
                &d,
                &int(meta.first_seq),
                &int(meta.last_seq),
                &int(meta.bytes),
                &int(meta.envelopes),
            ];
            // The compare-and-set on the stream head: from `first_seq - 1`, or a new stream
            // (an imported one may start past 1).
            let moved = if first_seq == 1 || import {
                tx.execute(&start, &head)?
            } else {
                0
            };
            if moved == 0 {
                let expected = int(first_seq - 1);
                let mut params = head.to_vec();
                params.push(&expected);
                if tx.execute(&advance, &params)? == 0 {
                    return Err(StoreError::Moved);
                }
            }
            for (from, to, data) in &rows {
                tx.execute(&insert, &[&a, &d, from, to, data])?;
            }
            tx.query(&notify, &[&NOTIFY_CHANNEL, &payload])?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Up to [`READ_ROWS`] of a stream's rows with envelopes after `after_seq`, none of
    /// them starting past `until`.
    fn read_rows(
        &self,
        account: &AccountId,
        device: &DeviceId,
        after_seq: u64,
        until: u64,
    ) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let (a, d) = (account.as_bytes().to_vec(), device.as_bytes().to_vec());
        self.run(move |conn| {
            let read = conn.statement(
                "SELECT first_seq, data FROM kith_envelopes
                 WHERE account = $1 AND device = $2 AND last_seq > $3 AND first_seq <= $4
                 ORDER BY first_seq LIMIT $5",
            )?;
            conn.client
                .query(&read, &[&a, &d, &int(after_seq), &int(until), &READ_ROWS])?
                .into_iter()
                .map(|row| {
                    let first = uint(row.try_get(0)?)?;
                    // Checked here, so that `RowData` only ever finds a bytea.
                    row.try_get::<_, &[u8]>(1)?;
                    Ok((first, Bytes::from_owner(RowData(row))))
                })
                .collect()
        })
    }

    /// Starts the thread that hears other relays' notifications.
    fn listen(&self, tx: mpsc::UnboundedSender<StoreChange>) -> Result<(), StoreError> {
        let config = self.config.clone();
        let origin = self.origin.clone();
        let stopping = self.stopping.clone();
        let client = off_runtime(|| -> Result<Client, StoreError> {
            let mut client = Conn::connect(&config)?.client;
            client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))?;
            Ok(client)
        })?;
        std::thread::Builder::new()
            .name("kith-pg-listen".into())
            .spawn(move || {
                let mut client = Some(client);
                while !stopping.load(Ordering::Relaxed) && !tx.is_closed() {
                    let Some(c) = client.as_mut() else {
                        std::thread::sleep(Duration::from_millis(500));
                        match Conn::connect(&config).and_then(|mut c| {
                            c.client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))?;
                            Ok(c.client)
                        }) {
                            Ok(c) => {
                                client = Some(c);
                                // What was said while nobody listened is lost: reread.
                                let _ = tx.send(StoreChange::Resync);
                            }
                            Err(err) => tracing::warn!(error = %err, "listening again failed"),
                        }
                        continue;
                    };
                    let mut broken = false;
                    {
                        let mut notifications = c.notifications();
                        let mut iter = notifications.timeout_iter(Duration::from_millis(250));
                        loop {
                            use postgres::fallible_iterator::FallibleIterator;
                            match iter.next() {
                                Ok(Some(n)) => {
                                    if let Some(change) = parse_change(n.payload(), &origin) {
                                        let _ = tx.send(change);
                                    }
                                }
                                Ok(None) => break,
                                Err(err) => {
                                    tracing::warn!(error = %err, "lost the notification connection");
                                    broken = true;
                                    break;
                                }
                            }
                        }
                    }
                    if broken || c.is_closed() {
                        client = None;
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the listener: {e}")))?;
        Ok(())
    }
}

/// A notification's change, unless it is this store's own (or does not parse).
fn parse_change(payload: &str, own: &str) -> Option<StoreChange> {
    let mut parts = payload.split(' ');
    let origin = parts.next()?;
    if origin == own {
        return None;
    }
    let kind = parts.next()?;
    let account = AccountId::from_slice(&hex::decode(parts.next()?).ok()?).ok()?;
    Some(match kind {
        "P" => StoreChange::Pushed {
            account,
            device: DeviceId::from_slice(&hex::decode(parts.next()?).ok()?).ok()?,
            last_seq: parts.next()?.parse().ok()?,
        },
        "C" => StoreChange::Changed { account },
        "D" => StoreChange::Deleted { account },
        "S" => StoreChange::PairingPut,
        _ => return None,
    })
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        // Closing the job channel ends the workers once their current statement is done.
        lock(&self.jobs).take();
        for worker in lock(&self.workers).drain(..) {
            let _ = worker.join();
        }
    }
}

impl Store for PostgresStore {
    fn load_account(&self, account: &AccountId) -> Result<Option<LoadedAccount>, StoreError> {
        let a = account.as_bytes().to_vec();
        self.run(move |conn| {
            // One statement, so one snapshot (the roster and the stream heads as of one
            // moment) in one round trip: the account's row first, then one per stream. Every
            // pull of a relay sharing the database reads it.
            let load = conn.statement(
                "SELECT 0 AS kind, roster, sealed_key_bytes, settings, NULL::bytea AS device,
                        0::bigint AS first_seq, 0::bigint AS last_seq, 0::bigint AS bytes,
                        0::bigint AS envelopes
                 FROM kith_accounts WHERE id = $1
                 UNION ALL
                 SELECT 1, NULL, 0, NULL, device, first_seq, last_seq, bytes, envelopes
                 FROM kith_streams WHERE account = $1
                 ORDER BY kind",
            )?;
            let rows = conn.client.query(&load, &[&a])?;
            let Some(row) = rows.first().filter(|row| row.get::<_, i32>(0) == 0) else {
                return Ok(None);
            };
            let mut loaded = LoadedAccount {
                roster: row.get(1),
                streams: Vec::with_capacity(rows.len() - 1),
                sealed_key_bytes: uint(row.get(2))?,
                settings: settings_of(row.get(3))?,
            };
            for row in &rows[1..] {
                loaded
                    .streams
                    .push((device_of(row.get::<_, &[u8]>(4))?, meta_of(row)?));
            }
            Ok(Some(loaded))
        })
    }

    fn create_account(&self, account: &AccountId, roster: &[u8]) -> Result<bool, StoreError> {
        let (a, roster) = (account.as_bytes().to_vec(), roster.to_vec());
        // The relay stores only rosters it verified; bytes that do not decode (tests of the
        // store alone) count as version 0.
        let version = roster_version(&roster).unwrap_or(0);
        self.run(move |conn| {
            let insert = conn.statement(
                "INSERT INTO kith_accounts (id, roster, roster_version) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )?;
            Ok(conn
                .client
                .execute(&insert, &[&a, &roster, &int(version)])?
                == 1)
        })
    }

    fn put_roster(&self, account: &AccountId, roster: &[u8]) -> Result<(), StoreError> {
        let version = roster_version(roster)?;
        self.put_roster_checked(account, roster, version, &[])
    }

    fn put_roster_checked(
        &self,
        account: &AccountId,
        roster: &[u8],
        version: u64,
        final_seqs: &[(DeviceId, u64)],
    ) -> Result<(), StoreError> {
        let (a, roster) = (account.as_bytes().to_vec(), roster.to_vec());
        let final_seqs: Vec<(Vec<u8>, i64)> = final_seqs
            .iter()
            .map(|(d, s)| (d.as_bytes().to_vec(), int(*s)))
            .collect();
        let payload = self.notify_payload('C', account, "");
        self.run(move |conn| {
            let lock_account = conn
                .statement("SELECT roster_version FROM kith_accounts WHERE id = $1 FOR UPDATE")?;
            let head = conn.statement(
                "SELECT last_seq FROM kith_streams WHERE account = $1 AND device = $2",
            )?;
            let update = conn.statement(
                "UPDATE kith_accounts SET roster = $2, roster_version = $3 WHERE id = $1",
            )?;
            let notify = conn.statement("SELECT pg_notify($1, $2)")?;
            let mut tx = conn.client.transaction()?;
            let stored: i64 = tx
                .query_opt(&lock_account, &[&a])?
                .map(|row| row.get(0))
                .ok_or(StoreError::Moved)?;
            // Rosters only advance.
            if stored >= int(version) {
                return Err(StoreError::Moved);
            }
            for (device, final_seq) in &final_seqs {
                if let Some(row) = tx.query_opt(&head, &[&a, device])?
                    && row.get::<_, i64>(0) > *final_seq
                {
                    return Err(StoreError::Moved);
                }
            }
            tx.execute(&update, &[&a, &roster, &int(version)])?;
            tx.query(&notify, &[&NOTIFY_CHANNEL, &payload])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn append(
        &self,
        account: &AccountId,
        device: &DeviceId,
        first_seq: u64,
        envelopes: &[&[u8]],
        meta: &StreamMeta,
    ) -> Result<(), StoreError> {
        self.append_inner(account, device, first_seq, envelopes, meta, None, false)
    }

    fn append_checked(
        &self,
        account: &AccountId,
        device: &DeviceId,
        first_seq: u64,
        envelopes: &[&[u8]],
        meta: &StreamMeta,
        roster_version: u64,
    ) -> Result<(), StoreError> {
        self.append_inner(
            account,
            device,
            first_seq,
            envelopes,
            meta,
            Some(roster_version),
            false,
        )
    }

    fn import_stream(
        &self,
        account: &AccountId,
        device: &DeviceId,
        first_seq: u64,
        envelopes: &[&[u8]],
        meta: &StreamMeta,
    ) -> Result<(), StoreError> {
        if envelopes.is_empty() {
            // A stream whose envelopes were all truncated: its head alone.
            let (a, d, meta) = (
                account.as_bytes().to_vec(),
                device.as_bytes().to_vec(),
                *meta,
            );
            return self.run(move |conn| {
                conn.client.execute(
                    "INSERT INTO kith_streams (account, device, first_seq, last_seq, bytes, envelopes)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    &[
                        &a,
                        &d,
                        &int(meta.first_seq),
                        &int(meta.last_seq),
                        &int(meta.bytes),
                        &int(meta.envelopes),
                    ],
                )?;
                Ok(())
            });
        }
        self.append_inner(account, device, first_seq, envelopes, meta, None, true)
    }

    fn read_stream(
        &self,
        account: &AccountId,
        device: &DeviceId,
        after_seq: u64,
        sink: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<ReadEnd, StoreError> {
        self.read_stream_bytes(account, device, after_seq, &mut |seq, envelope| {
            sink(seq, &envelope)
        })
    }

    fn read_stream_bytes(
        &self,
        account: &AccountId,
        device: &DeviceId,
        after_seq: u64,
        sink: &mut dyn FnMut(u64, Bytes) -> bool,
    ) -> Result<ReadEnd, StoreError> {
        self.read_stream_until(account, device, after_seq, u64::MAX, sink)
    }

    fn read_stream_until(
        &self,
        account: &AccountId,
        device: &DeviceId,
        after_seq: u64,
        until: u64,
        sink: &mut dyn FnMut(u64, Bytes) -> bool,
    ) -> Result<ReadEnd, StoreError> {
        let mut cursor = after_seq;
        while cursor < until {
            let rows = self.read_rows(account, device, cursor, until)?;
            // Fewer rows than asked for: none is left up to `until` (no further round trip).
            let last_read = rows.len() < READ_ROWS as usize;
            let before = cursor;
            for (first, data) in rows {
                for (seq, range) in (first..).zip(unpack(&data)?) {
                    if seq > until {
                        return Ok(ReadEnd::Complete);
                    }
                    if seq > cursor {
                        if !sink(seq, data.slice(range)) {
                            return Ok(ReadEnd::More);
                        }
                        cursor = seq;
                    }
                }
            }
            if last_read {
                break;
            }
            if cursor == before {
                // Rows claiming envelopes past the cursor that they do not hold: reading
                // again would find the same rows.
                return Err(StoreError::Corrupt(
                    "envelope row shorter than its seq range",
                ));
            }
        }
        Ok(ReadEnd::Complete)
    }

    fn truncate(
        &self,
        account: &AccountId,
        device: &DeviceId,
        before_seq: u64,
    ) -> Result<StreamMeta, StoreError> {
        let (a, d) = (account.as_bytes().to_vec(), device.as_bytes().to_vec());
        let payload = self.notify_payload('C', account, "");
        self.run(move |conn| {
            let mut tx = conn.client.transaction()?;
            let Some(row) = tx.query_opt(
                "SELECT first_seq, last_seq, bytes, envelopes FROM kith_streams
                 WHERE account = $1 AND device = $2 FOR UPDATE",
                &[&a, &d],
            )?
            else {
                return Ok(StreamMeta::default());
            };
            let mut meta = meta_of(&row)?;
            if before_seq <= meta.first_seq {
                return Ok(meta);
            }
            let rows = tx.query(
                "DELETE FROM kith_envelopes WHERE account = $1 AND device = $2 AND first_seq < $3
                 RETURNING first_seq, last_seq, data",
                &[&a, &d, &int(before_seq)],
            )?;
            for row in rows {
                let first = uint(row.get(0))?;
                let last = uint(row.get(1))?;
                let data: &[u8] = row.get(2);
                let mut kept: Option<(u64, usize)> = None;
                for (seq, range) in (first..).zip(unpack(data)?) {
                    if seq < before_seq {
                        meta.bytes = meta.bytes.saturating_sub(range.len() as u64);
                        meta.envelopes = meta.envelopes.saturating_sub(1);
                    } else {
                        kept.get_or_insert((seq, range.start - 4));
                    }
                }
                // The tail of a row that straddles `before_seq` stays, as a row of its own.
                if let Some((from, at)) = kept {
                    tx.execute(
                        "INSERT INTO kith_envelopes (account, device, first_seq, last_seq, data)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[&a, &d, &int(from), &int(last), &&data[at..]],
                    )?;
                }
            }
            meta.first_seq = if meta.envelopes == 0 { 0 } else { before_seq };
            tx.execute(
                "UPDATE kith_streams SET first_seq = $3, bytes = $4, envelopes = $5
                 WHERE account = $1 AND device = $2",
                &[
                    &a,
                    &d,
                    &int(meta.first_seq),
                    &int(meta.bytes),
                    &int(meta.envelopes),
                ],
            )?;
            tx.query("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &payload])?;
            tx.commit()?;
            Ok(meta)
        })
    }

    fn put_sealed_key(
        &self,
        account: &AccountId,
        device: &DeviceId,
        epoch: u64,
        sealed: &[u8],
    ) -> Result<u64, StoreError> {
        let (a, d, sealed) = (
            account.as_bytes().to_vec(),
            device.as_bytes().to_vec(),
            sealed.to_vec(),
        );
        let payload = self.notify_payload('C', account, "");
        self.run(move |conn| {
            let mut tx = conn.client.transaction()?;
            let old: i64 = tx
                .query_opt(
                    "SELECT length(sealed)::bigint FROM kith_sealed_keys
                     WHERE account = $1 AND device = $2 AND epoch = $3 FOR UPDATE",
                    &[&a, &d, &epoch_col(epoch)],
                )?
                .map_or(0, |row| row.get(0));
            tx.execute(
                "INSERT INTO kith_sealed_keys (account, device, epoch, sealed) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (account, device, epoch) DO UPDATE SET sealed = excluded.sealed",
                &[&a, &d, &epoch_col(epoch), &sealed],
            )?;
            tx.execute(
                "UPDATE kith_accounts SET sealed_key_bytes = greatest(sealed_key_bytes - $2, 0) + $3
                 WHERE id = $1",
                &[&a, &old, &(sealed.len() as i64)],
            )?;
            tx.query("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &payload])?;
            tx.commit()?;
            uint(old)
        })
    }

    fn sealed_keys(
        &self,
        account: &AccountId,
        device: &DeviceId,
        min_epoch: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let (a, d) = (account.as_bytes().to_vec(), device.as_bytes().to_vec());
        self.run(move |conn| {
            Ok(conn
                .client
                .query(
                    "SELECT sealed FROM kith_sealed_keys
                     WHERE account = $1 AND device = $2 AND epoch >= $3 ORDER BY epoch",
                    &[&a, &d, &epoch_col(min_epoch)],
                )?
                .iter()
                .map(|row| row.get(0))
                .collect())
        })
    }

    fn put_pairing_slot(
        &self,
        slot_id: &[u8; 32],
        account: &AccountId,
        expires_at_ms: u64,
        bundle: &[u8],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let (s, a, bundle) = (
            slot_id.to_vec(),
            account.as_bytes().to_vec(),
            bundle.to_vec(),
        );
        let payload = self.notify_payload('S', account, "");
        self.run(move |conn| {
            let mut tx = conn.client.transaction()?;
            // Inserted, or replacing an expired slot; a live one stays.
            let put = tx.execute(
                "INSERT INTO kith_pairing (slot, account, expires_at_ms, bundle)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (slot) DO UPDATE SET account = excluded.account,
                     expires_at_ms = excluded.expires_at_ms, bundle = excluded.bundle
                 WHERE kith_pairing.expires_at_ms <= $5",
                &[&s, &a, &int(expires_at_ms), &bundle, &int(now_ms)],
            )? == 1;
            if put {
                // A new device may be waiting for this slot on another relay.
                tx.query("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &payload])?;
            }
            tx.commit()?;
            Ok(put)
        })
    }

    fn take_pairing_slot(
        &self,
        slot_id: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let s = slot_id.to_vec();
        self.run(move |conn| {
            let row = conn.client.query_opt(
                "DELETE FROM kith_pairing WHERE slot = $1 RETURNING expires_at_ms, bundle",
                &[&s],
            )?;
            Ok(row.and_then(|row| (row.get::<_, i64>(0) > int(now_ms)).then(|| row.get(1))))
        })
    }

    fn count_pairing_slots(&self, account: &AccountId, now_ms: u64) -> Result<usize, StoreError> {
        let a = account.as_bytes().to_vec();
        self.run(move |conn| {
            let n: i64 = conn
                .client
                .query_one(
                    "SELECT count(*) FROM kith_pairing WHERE account = $1 AND expires_at_ms > $2",
                    &[&a, &int(now_ms)],
                )?
                .get(0);
            Ok(n as usize)
        })
    }

    fn expire_pairing_slots(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.run(move |conn| {
            Ok(conn.client.execute(
                "DELETE FROM kith_pairing WHERE expires_at_ms <= $1",
                &[&int(now_ms)],
            )? as usize)
        })
    }

    fn put_recovery_bundle(
        &self,
        lookup_id: &[u8; 32],
        account: &AccountId,
        bundle: &[u8],
    ) -> Result<bool, StoreError> {
        let (l, a, bundle) = (
            lookup_id.to_vec(),
            account.as_bytes().to_vec(),
            bundle.to_vec(),
        );
        self.run(move |conn| {
            let mut tx = conn.client.transaction()?;
            // Claim the lookup id: free, or already this account's.
            let owner: Option<Vec<u8>> = tx
                .query_opt(
                    "SELECT account FROM kith_recovery WHERE lookup = $1 FOR UPDATE",
                    &[&l],
                )?
                .map(|row| row.get(0));
            if owner.as_ref().is_some_and(|owner| *owner != a) {
                return Ok(false);
            }
            tx.execute(
                "DELETE FROM kith_recovery WHERE account = $1 AND lookup <> $2",
                &[&a, &l],
            )?;
            tx.execute(
                "INSERT INTO kith_recovery (lookup, account, bundle) VALUES ($1, $2, $3)
                 ON CONFLICT (lookup) DO UPDATE SET bundle = excluded.bundle",
                &[&l, &a, &bundle],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn recovery_bundle(
        &self,
        lookup_id: &[u8; 32],
    ) -> Result<Option<(AccountId, Vec<u8>)>, StoreError> {
        let l = lookup_id.to_vec();
        self.run(move |conn| {
            match conn.client.query_opt(
                "SELECT account, bundle FROM kith_recovery WHERE lookup = $1",
                &[&l],
            )? {
                Some(row) => Ok(Some((account_of(row.get::<_, &[u8]>(0))?, row.get(1)))),
                None => Ok(None),
            }
        })
    }

    fn recovery_lookup_id(&self, account: &AccountId) -> Result<Option<[u8; 32]>, StoreError> {
        let a = account.as_bytes().to_vec();
        self.run(move |conn| {
            match conn
                .client
                .query_opt("SELECT lookup FROM kith_recovery WHERE account = $1", &[&a])?
            {
                Some(row) => <[u8; 32]>::try_from(row.get::<_, &[u8]>(0))
                    .map(Some)
                    .map_err(|_| StoreError::Corrupt("recovery lookup id")),
                None => Ok(None),
            }
        })
    }

    fn put_push_target(
        &self,
        account: &AccountId,
        device: &DeviceId,
        token: &[u8],
    ) -> Result<(), StoreError> {
        let (a, d, t) = (
            account.as_bytes().to_vec(),
            device.as_bytes().to_vec(),
            token.to_vec(),
        );
        self.run(move |conn| {
            conn.client.execute(
                "INSERT INTO kith_push_targets (account, device, token) VALUES ($1, $2, $3)
                 ON CONFLICT (account, device) DO UPDATE SET token = EXCLUDED.token",
                &[&a, &d, &t],
            )?;
            Ok(())
        })
    }

    fn remove_push_target(&self, account: &AccountId, device: &DeviceId) -> Result<(), StoreError> {
        let (a, d) = (account.as_bytes().to_vec(), device.as_bytes().to_vec());
        self.run(move |conn| {
            conn.client.execute(
                "DELETE FROM kith_push_targets WHERE account = $1 AND device = $2",
                &[&a, &d],
            )?;
            Ok(())
        })
    }

    fn push_targets(&self, account: &AccountId) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError> {
        let a = account.as_bytes().to_vec();
        self.run(move |conn| {
            conn.client
                .query(
                    "SELECT device, token FROM kith_push_targets WHERE account = $1",
                    &[&a],
                )?
                .iter()
                .map(|row| {
                    let device = DeviceId::from_slice(row.get::<_, &[u8]>(0))
                        .map_err(|_| StoreError::Corrupt("push target device"))?;
                    Ok((device, row.get(1)))
                })
                .collect()
        })
    }

    fn add_registration_token(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        let t = token_hash.to_vec();
        self.run(move |conn| {
            conn.client.execute(
                "INSERT INTO kith_tokens (hash) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&t],
            )?;
            Ok(())
        })
    }

    fn consume_registration_token(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError> {
        let t = token_hash.to_vec();
        self.run(move |conn| {
            Ok(conn
                .client
                .execute("DELETE FROM kith_tokens WHERE hash = $1", &[&t])?
                == 1)
        })
    }

    fn delete_account(&self, account: &AccountId) -> Result<(), StoreError> {
        let a = account.as_bytes().to_vec();
        let payload = self.notify_payload('D', account, "");
        self.run(move |conn| {
            let mut tx = conn.client.transaction()?;
            // The account row first: pushes and roster changes of other relays wait for it,
            // then find the account gone.
            tx.execute("DELETE FROM kith_accounts WHERE id = $1", &[&a])?;
            for table in [
                "DELETE FROM kith_streams WHERE account = $1",
                "DELETE FROM kith_envelopes WHERE account = $1",
                "DELETE FROM kith_sealed_keys WHERE account = $1",
                "DELETE FROM kith_pairing WHERE account = $1",
                "DELETE FROM kith_recovery WHERE account = $1",
                "DELETE FROM kith_push_targets WHERE account = $1",
            ] {
                tx.execute(table, &[&a])?;
            }
            tx.query("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &payload])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn put_account_settings(
        &self,
        account: &AccountId,
        settings: &AccountSettings,
    ) -> Result<bool, StoreError> {
        let (a, encoded) = (account.as_bytes().to_vec(), settings.encode().to_vec());
        // Other relays holding the account read it again (and so its settings).
        let payload = self.notify_payload('C', account, "");
        self.run(move |conn| {
            let mut tx = conn.client.transaction()?;
            let updated = tx.execute(
                "UPDATE kith_accounts SET settings = $2 WHERE id = $1",
                &[&a, &encoded],
            )? == 1;
            if updated {
                tx.query("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &payload])?;
            }
            tx.commit()?;
            Ok(updated)
        })
    }

    fn mark_active(&self, account: &AccountId, day: u32) -> Result<(), StoreError> {
        let (a, day) = (
            account.as_bytes().to_vec(),
            i32::try_from(day).unwrap_or(i32::MAX),
        );
        self.run(move |conn| {
            let update =
                conn.statement("UPDATE kith_accounts SET active_day = $2 WHERE id = $1")?;
            conn.client.execute(&update, &[&a, &day])?;
            Ok(())
        })
    }

    fn active_day(&self, account: &AccountId) -> Result<Option<u32>, StoreError> {
        let a = account.as_bytes().to_vec();
        self.run(move |conn| {
            let row = conn
                .client
                .query_opt("SELECT active_day FROM kith_accounts WHERE id = $1", &[&a])?;
            Ok(row
                .and_then(|row| u32::try_from(row.get::<_, i32>(0)).ok())
                .filter(|&day| day > 0))
        })
    }

    fn account_ids(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountId>, StoreError> {
        let after = after.map_or_else(Vec::new, |a| a.as_bytes().to_vec());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            conn.client
                .query(
                    "SELECT id FROM kith_accounts WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&after, &limit],
                )?
                .iter()
                .map(|row| account_of(row.get::<_, &[u8]>(0)))
                .collect()
        })
    }

    fn registration_tokens(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        self.run(|conn| {
            conn.client
                .query("SELECT hash FROM kith_tokens ORDER BY hash", &[])?
                .iter()
                .map(|row| {
                    <[u8; 32]>::try_from(row.get::<_, &[u8]>(0))
                        .map_err(|_| StoreError::Corrupt("token hash"))
                })
                .collect()
        })
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.run(|conn| {
            let row = conn.client.query_one(
                "SELECT (SELECT count(*) FROM kith_accounts),
                        (SELECT count(*) FROM kith_streams),
                        (SELECT coalesce(sum(envelopes), 0)::bigint FROM kith_streams),
                        (SELECT coalesce(sum(bytes), 0)::bigint FROM kith_streams),
                        (SELECT count(*) FROM kith_pairing),
                        (SELECT count(*) FROM kith_recovery),
                        (SELECT count(*) FROM kith_tokens)",
                &[],
            )?;
            Ok(StoreStats {
                accounts: uint(row.get(0))?,
                streams: uint(row.get(1))?,
                envelopes: uint(row.get(2))?,
                envelope_bytes: uint(row.get(3))?,
                pairing_slots: uint(row.get(4))?,
                recovery_bundles: uint(row.get(5))?,
                registration_tokens: uint(row.get(6))?,
            })
        })
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        // Every write committed (synchronous_commit on) before it returned.
        Box::pin(async { Ok(()) })
    }

    fn changes(&self) -> Option<mpsc::UnboundedReceiver<StoreChange>> {
        let (tx, rx) = mpsc::unbounded_channel();
        match self.listen(tx) {
            Ok(()) => Some(rx),
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for other relays' changes");
                None
            }
        }
    }

    fn export(
        &self,
        sink: &mut dyn FnMut(Exported) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // Page by key so that a large database is never held in memory at once.
        let mut after: Vec<u8> = Vec::new();
        loop {
            let from = after.clone();
            type Row = (Vec<u8>, Vec<u8>, Option<Vec<u8>>, i32);
            let accounts: Vec<Row> = self.run(move |conn| {
                Ok(conn
                    .client
                    .query(
                        "SELECT id, roster, settings, active_day FROM kith_accounts
                         WHERE id > $1 ORDER BY id LIMIT 256",
                        &[&from],
                    )?
                    .iter()
                    .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
                    .collect())
            })?;
            let Some((last, ..)) = accounts.last() else {
                break;
            };
            after = last.clone();
            for (id, roster, settings, active_day) in accounts {
                let account = account_of(&id)?;
                sink(Exported::Account { account, roster })?;
                if settings.is_some() || active_day != 0 {
                    sink(Exported::Settings {
                        account,
                        settings: settings_of(settings.as_deref())?,
                        active_day: u32::try_from(active_day)
                            .map_err(|_| StoreError::Corrupt("active day"))?,
                    })?;
                }
                let a = id.clone();
                let (streams, keys) = self.run(move |conn| {
                    let streams = conn.client.query(
                        "SELECT device, first_seq, last_seq, bytes, envelopes FROM kith_streams
                         WHERE account = $1 ORDER BY device",
                        &[&a],
                    )?;
                    let streams = streams
                        .iter()
                        .map(|row| Ok((device_of(row.get::<_, &[u8]>(0))?, meta_of(row)?)))
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    let keys = conn.client.query(
                        "SELECT device, epoch, sealed FROM kith_sealed_keys
                         WHERE account = $1 ORDER BY device, epoch",
                        &[&a],
                    )?;
                    let keys = keys
                        .iter()
                        .map(|row| {
                            Ok((
                                device_of(row.get::<_, &[u8]>(0))?,
                                epoch_of(row.get(1)),
                                row.get::<_, Vec<u8>>(2),
                            ))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    Ok((streams, keys))
                })?;
                for (device, meta) in streams {
                    sink(Exported::Stream {
                        account,
                        device,
                        meta,
                    })?;
                }
                for (device, epoch, sealed) in keys {
                    sink(Exported::SealedKey {
                        account,
                        device,
                        epoch,
                        sealed,
                    })?;
                }
            }
        }
        let (slots, bundles, tokens) = self.run(|conn| {
            let mut export =
                |sql: &str, row_to_item: fn(&postgres::Row) -> Result<Exported, StoreError>| {
                    conn.client
                        .query(sql, &[])?
                        .iter()
                        .map(row_to_item)
                        .collect::<Result<Vec<_>, StoreError>>()
                };
            let slots = export(
                "SELECT slot, account, expires_at_ms, bundle FROM kith_pairing ORDER BY slot",
                |row| {
                    Ok(Exported::PairingSlot {
                        slot_id: id32(row.get::<_, &[u8]>(0))?,
                        account: account_of(row.get::<_, &[u8]>(1))?,
                        expires_at_ms: uint(row.get(2))?,
                        bundle: row.get(3),
                    })
                },
            )?;
            let bundles = export(
                "SELECT lookup, account, bundle FROM kith_recovery ORDER BY lookup",
                |row| {
                    Ok(Exported::RecoveryBundle {
                        lookup_id: id32(row.get::<_, &[u8]>(0))?,
                        account: account_of(row.get::<_, &[u8]>(1))?,
                        bundle: row.get(2),
                    })
                },
            )?;
            let tokens = export("SELECT hash FROM kith_tokens ORDER BY hash", |row| {
                Ok(Exported::Token {
                    token_hash: id32(row.get::<_, &[u8]>(0))?,
                })
            })?;
            Ok((slots, bundles, tokens))
        })?;
        for item in slots.into_iter().chain(bundles).chain(tokens) {
            sink(item)?;
        }
        Ok(())
    }
}

/// The version a signed roster claims (the relay verified it before storing it).
fn roster_version(bytes: &[u8]) -> Result<u64, StoreError> {
    use prost::Message;
    let signed = kith_protocol::proto::SignedRoster::decode(bytes)
        .map_err(|_| StoreError::Corrupt("roster does not decode"))?;
    Ok(
        kith_protocol::proto::RosterBody::decode(signed.body.as_slice())
            .map_err(|_| StoreError::Corrupt("roster body does not decode"))?
            .version,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_rows_unpack_and_refuse_truncation() {
        let packed = pack(&[b"ab", b"", b"cde"]);
        let ranges = unpack(&packed).unwrap();
        let got: Vec<&[u8]> = ranges.iter().map(|r| &packed[r.clone()]).collect();
        assert_eq!(got, vec![&b"ab"[..], b"", b"cde"]);
        assert!(matches!(
            unpack(&packed[..packed.len() - 1]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(unpack(&[0, 0]), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn epochs_keep_their_order_in_a_signed_column() {
        let epochs = [0u64, 1, 1 << 62, (1 << 63) - 1, 1 << 63, u64::MAX];
        for pair in epochs.windows(2) {
            assert!(epoch_col(pair[0]) < epoch_col(pair[1]));
            assert_eq!(epoch_of(epoch_col(pair[0])), pair[0]);
        }
    }

    #[test]
    fn notifications_of_others_parse_and_own_ones_are_skipped() {
        let account = AccountId::from_bytes([7; 32]);
        let device = DeviceId::from_bytes([8; 16]);
        let payload = format!(
            "aa P {} {} 42",
            hex::encode(account.as_bytes()),
            hex::encode(device.as_bytes())
        );
        assert_eq!(
            parse_change(&payload, "bb"),
            Some(StoreChange::Pushed {
                account,
                device,
                last_seq: 42
            })
        );
        assert_eq!(parse_change(&payload, "aa"), None);
        assert_eq!(parse_change("bb P zz", "aa"), None);
        assert_eq!(
            parse_change(&format!("bb D {}", hex::encode(account.as_bytes())), "aa"),
            Some(StoreChange::Deleted { account })
        );
        assert_eq!(
            parse_change(&format!("bb S {}", hex::encode(account.as_bytes())), "aa"),
            Some(StoreChange::PairingPut)
        );
    }

    #[test]
    fn descriptions_never_hold_the_password() {
        let config = parse("postgres://kith:s3cret@db.example:5433/relay").unwrap();
        let text = describe(&config);
        assert_eq!(text, "postgres://kith@db.example:5433/relay");
        assert!(!text.contains("s3cret"));
        let err = parse("postgres://kith:s3cret@db.example:notaport/relay").unwrap_err();
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn a_connection_string_asking_for_tls_is_refused_with_what_to_do() {
        for url in [
            "postgres://kith:s3cret@db.example/relay?sslmode=require",
            "postgres://kith:s3cret@db.example/relay?sslmode=verify-full",
            "postgres://kith@db.example/relay?sslmode=verify-ca&sslrootcert=/etc/ca.pem",
            "host=db.example user=kith sslmode=require",
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(
                err.contains("TLS to PostgreSQL is not supported"),
                "{url}: {err}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
        // Plain connections, the default `prefer` included (it falls back to plain), parse.
        for url in [
            "postgres://kith@db.example/relay",
            "postgres://kith@db.example/relay?sslmode=disable",
            "postgres://kith@db.example/relay?sslmode=prefer",
            "postgres://kith@%2Fvar%2Frun%2Fpostgresql/kith",
            "postgres:///kith?host=/var/run/postgresql&user=kith",
            "postgres://kith@db1,db2/kith?target_session_attrs=read-write&connect_timeout=10",
        ] {
            parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }
}
