//! `kith-relay admin …`: administration of a running relay through its control socket
//! (`crate::control`). Each request is one line of words, each answer one line: `ok ` and a
//! JSON value, or `error: <why>`.
//!
//! | request | answer |
//! |---|---|
//! | `accounts list` | `[{"id", "devices", "bytes", "last_active_day"}]` |
//! | `accounts show ID` | [`AccountView`] |
//! | `accounts suspend ID`, `accounts unsuspend ID` | [`AccountView`] after the change |
//! | `accounts quota ID BYTES DEVICES` (each a number, `default` or `keep`) | [`AccountView`] after the change |
//! | `accounts delete ID` | `{"id", "deleted": true}` |
//! | `tokens create` | `{"token"}` |
//! | `tokens list` | `[{"id"}]` |
//! | `tokens revoke ID` | `{"revoked": "<id>"}` |
//! | `stats` | [`LiveStats`] |
//!
//! `ID` is an account id in hex (64 characters, as `kith account info` prints it) or a unique
//! prefix of at least 8; a token's `ID` is the start of its SHA-256 (as `tokens list` prints
//! it), or the token itself. What an operator can see is what the relay stores: ids, counts,
//! sizes and a day — never contact data, which the relay never has (README, "What the operator
//! can and cannot see").

use std::sync::Arc;

use kith_protocol::ids::AccountId;
use kith_protocol::roster::VerifiedRoster;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::handlers::delete_account::purge;
use crate::state::{Account, AccountEvent, AccountInner, Shared};
use crate::store::AccountSettings;

/// Accounts read from the store per page while listing.
const PAGE: usize = 256;
/// Shortest account id prefix accepted.
const MIN_PREFIX: usize = 8;
/// Hex characters of a token hash shown as its id.
const TOKEN_ID_LEN: usize = 12;

/// One account in `accounts list`: nothing more than this.
#[derive(Debug, Serialize)]
pub struct AccountLine {
    /// Account id (hex).
    pub id: String,
    /// Devices in its roster.
    pub devices: usize,
    /// Bytes stored (envelopes and sealed keys).
    pub bytes: u64,
    /// The last day a device was active (`YYYY-MM-DD`, UTC), if recorded.
    pub last_active_day: Option<String>,
}

/// `accounts show`: what the relay holds about one account.
#[derive(Debug, Serialize)]
pub struct AccountView {
    /// Account id (hex).
    pub id: String,
    /// Devices in its roster.
    pub devices: usize,
    /// Devices it may have.
    pub devices_max: u32,
    /// Whether `devices_max` was set for this account (else the relay's default).
    pub devices_max_set: bool,
    /// Bytes stored (envelopes and sealed keys).
    pub bytes: u64,
    /// Bytes it may store.
    pub bytes_quota: u64,
    /// Whether `bytes_quota` was set for this account.
    pub bytes_quota_set: bool,
    /// Envelopes stored.
    pub envelopes: u64,
    /// Device streams written.
    pub streams: usize,
    /// Version of its roster.
    pub roster_version: u64,
    /// The last day a device was active (`YYYY-MM-DD`, UTC), if recorded.
    pub last_active_day: Option<String>,
    /// Whether its devices are refused.
    pub suspended: bool,
}

/// `stats`: the store's totals and what the running relay holds.
#[derive(Debug, Serialize)]
pub struct LiveStats {
    /// Accounts.
    pub accounts: u64,
    /// Device streams.
    pub streams: u64,
    /// Envelopes stored.
    pub envelopes: u64,
    /// Envelope bytes stored.
    pub bytes: u64,
    /// Pairing slots.
    pub pairing_slots: u64,
    /// Recovery bundles.
    pub recovery_bundles: u64,
    /// Unused registration tokens (store and inbox).
    pub registration_tokens: u64,
    /// Open QUIC connections.
    pub connections: usize,
    /// Subscriptions being served.
    pub subscriptions: usize,
    /// Accounts held in memory.
    pub accounts_in_memory: usize,
}

/// Answers one admin request line.
pub(crate) async fn answer(shared: &Shared, line: &str) -> Result<serde_json::Value, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["accounts", "list"] => json(list(shared)),
        ["accounts", "show", id] => json(show(shared, &resolve(shared, id)?)),
        ["accounts", "suspend", id] => json(
            change(shared, id, |s| AccountSettings {
                suspended: true,
                ..s
            })
            .await,
        ),
        ["accounts", "unsuspend", id] => json(
            change(shared, id, |s| AccountSettings {
                suspended: false,
                ..s
            })
            .await,
        ),
        ["accounts", "quota", id, bytes, devices] => {
            let bytes = quota(bytes, "bytes")?;
            let devices = quota(devices, "devices")?
                .map(|d| {
                    d.map(|d| u32::try_from(d).map_err(|_| "devices: too large".to_string()))
                        .transpose()
                })
                .transpose()?;
            json(
                change(shared, id, |s| AccountSettings {
                    max_bytes: bytes.unwrap_or(s.max_bytes),
                    max_devices: devices.unwrap_or(s.max_devices),
                    ..s
                })
                .await,
            )
        }
        ["accounts", "delete", id] => json(delete(shared, id).await),
        ["tokens", "create"] => json(create_token(shared).await),
        ["tokens", "list"] => json(token_ids(shared).map(|ids| {
            ids.into_iter()
                .map(|id| serde_json::json!({ "id": id }))
                .collect::<Vec<_>>()
        })),
        ["tokens", "revoke", id] => json(revoke_token(shared, id).await),
        ["stats"] => json(stats(shared)),
        _ => Err(format!(
            "unknown admin request `{line}` (see `kith-relay admin --help`)"
        )),
    }
}

fn json(value: Result<impl Serialize, String>) -> Result<serde_json::Value, String> {
    serde_json::to_value(value?).map_err(|e| e.to_string())
}

/// A quota argument: a number, `default` (the relay's limit) or `keep` (unchanged, `None`).
fn quota(word: &str, what: &str) -> Result<Option<Option<u64>>, String> {
    match word {
        "keep" => Ok(None),
        "default" => Ok(Some(None)),
        _ => word
            .parse()
            .map(|n| Some(Some(n)))
            .map_err(|_| format!("{what}: `{word}` is neither a number nor `default`")),
    }
}

/// `YYYY-MM-DD` of a day since the Unix epoch.
pub fn day_string(day: u32) -> String {
    chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .map_or_else(|| day.to_string(), |t| t.format("%Y-%m-%d").to_string())
}

/// The account an id or unique id prefix names.
fn resolve(shared: &Shared, word: &str) -> Result<AccountId, String> {
    let word = word.to_ascii_lowercase();
    if word.len() == 2 * AccountId::LEN {
        let bytes = hex::decode(&word).map_err(|_| "an account id is hex".to_string())?;
        return AccountId::from_slice(&bytes).map_err(|_| "not an account id".to_string());
    }
    if word.len() < MIN_PREFIX || !word.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "give an account id in hex, or at least {MIN_PREFIX} of its first characters"
        ));
    }
    let mut found = Vec::new();
    each_account_id(shared, |id| {
        if hex::encode(id.as_bytes()).starts_with(&word) {
            found.push(id);
        }
        found.len() < 2
    })?;
    match found.as_slice() {
        [id] => Ok(*id),
        [] => Err(format!("no account starts with {word}")),
        _ => Err(format!(
            "more than one account starts with {word}: give more of its id"
        )),
    }
}

/// Passes every stored account id to `each` until it returns `false`.
fn each_account_id(shared: &Shared, mut each: impl FnMut(AccountId) -> bool) -> Result<(), String> {
    let mut after = None;
    loop {
        let page = shared
            .store
            .account_ids(after.as_ref(), PAGE)
            .map_err(|e| e.to_string())?;
        for id in &page {
            if !each(*id) {
                return Ok(());
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(*last),
            _ => return Ok(()),
        }
    }
}

/// What the relay holds of an account: the one in memory (newest), else the stored one, read
/// without caching it (a listing must not push the accounts in use out of memory).
fn view(shared: &Shared, id: &AccountId) -> Result<Option<AccountView>, String> {
    let limits = &shared.config.bounds;
    let day = shared
        .store
        .active_day(id)
        .map_err(|e| e.to_string())?
        .map(day_string);
    if let Some(account) = shared.accounts.cached(id) {
        let inner = account.lock();
        if inner.deleted {
            return Ok(None);
        }
        return Ok(Some(AccountView {
            id: hex::encode(id.as_bytes()),
            devices: inner.roster.device_count(),
            devices_max: inner.max_devices(limits),
            devices_max_set: inner.settings.max_devices.is_some(),
            bytes: inner.bytes_used(),
            bytes_quota: inner.max_bytes(limits),
            bytes_quota_set: inner.settings.max_bytes.is_some(),
            envelopes: inner.envelopes,
            streams: inner.streams.len(),
            roster_version: inner.roster.version(),
            last_active_day: day,
            suspended: inner.settings.suspended,
        }));
    }
    let Some(loaded) = shared.store.load_account(id).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let roster = VerifiedRoster::verify(&loaded.roster, Some(id), None)
        .map_err(|e| format!("the stored roster does not verify: {e}"))?;
    let settings = loaded.settings;
    Ok(Some(AccountView {
        id: hex::encode(id.as_bytes()),
        devices: roster.device_count(),
        devices_max: settings
            .max_devices
            .unwrap_or(limits.max_devices_per_account),
        devices_max_set: settings.max_devices.is_some(),
        bytes: loaded.streams.iter().map(|(_, m)| m.bytes).sum::<u64>() + loaded.sealed_key_bytes,
        bytes_quota: settings.max_bytes.unwrap_or(limits.max_account_bytes),
        bytes_quota_set: settings.max_bytes.is_some(),
        envelopes: loaded.streams.iter().map(|(_, m)| m.envelopes).sum(),
        streams: loaded.streams.len(),
        roster_version: roster.version(),
        last_active_day: day,
        suspended: settings.suspended,
    }))
}

fn list(shared: &Shared) -> Result<Vec<AccountLine>, String> {
    let mut ids = Vec::new();
    each_account_id(shared, |id| {
        ids.push(id);
        true
    })?;
    let mut lines = Vec::with_capacity(ids.len());
    for id in ids {
        // Deleted since it was listed: left out.
        if let Some(view) = view(shared, &id)? {
            lines.push(AccountLine {
                id: view.id,
                devices: view.devices,
                bytes: view.bytes,
                last_active_day: view.last_active_day,
            });
        }
    }
    Ok(lines)
}

fn show(shared: &Shared, id: &AccountId) -> Result<AccountView, String> {
    view(shared, id)?.ok_or_else(|| "no such account".to_string())
}

/// The account, loaded into memory (a change must reach the copy requests use).
fn loaded(shared: &Shared, id: &AccountId) -> Result<Arc<Account>, String> {
    shared
        .accounts
        .get(shared.store.as_ref(), id)
        .map_err(|e| e.message.to_string())?
        .ok_or_else(|| "no such account".to_string())
}

/// Writes to a live account: resolved from `word`, loaded into memory (a change must reach
/// the copy requests use), under the store's write barrier and the account's lock. Refuses a
/// deleted account. The caller then waits for [`Shared::commit`] to make the write durable.
async fn write_live_account<T>(
    shared: &Shared,
    word: &str,
    write: impl FnOnce(&AccountId, &mut AccountInner) -> Result<T, String>,
) -> Result<(AccountId, Arc<Account>, T), String> {
    let id = resolve(shared, word)?;
    let _writing = shared.write_barrier.read().await;
    let account = loaded(shared, &id)?;
    let written = {
        let mut inner = account.lock();
        if inner.deleted {
            return Err("no such account".into());
        }
        write(&id, &mut inner)?
    };
    Ok((id, account, written))
}

/// Changes what the operator set for an account: stored, then in memory, under the account's
/// lock, so every request after the answer sees it.
async fn change(
    shared: &Shared,
    word: &str,
    f: impl FnOnce(AccountSettings) -> AccountSettings,
) -> Result<AccountView, String> {
    let (id, _, ()) = write_live_account(shared, word, |id, inner| {
        let settings = f(inner.settings);
        if !shared
            .store
            .put_account_settings(id, &settings)
            .map_err(|e| e.to_string())?
        {
            return Err("no such account".into());
        }
        inner.settings = settings;
        tracing::info!(
            account = %crate::state::pseudonym(id.as_bytes()),
            suspended = settings.suspended,
            "account settings changed by the operator"
        );
        Ok(())
    })
    .await?;
    shared.commit.durable().await.map_err(|e| e.to_string())?;
    show(shared, &id)
}

async fn delete(shared: &Shared, word: &str) -> Result<serde_json::Value, String> {
    let (id, account, ()) = write_live_account(shared, word, |id, inner| {
        purge(shared, id, inner).map_err(|e| e.message.to_string())
    })
    .await?;
    account.notify(AccountEvent::Deleted);
    shared.commit.durable().await.map_err(|e| e.to_string())?;
    tracing::info!(account = %crate::state::pseudonym(id.as_bytes()), "account deleted by the operator");
    Ok(serde_json::json!({ "id": hex::encode(id.as_bytes()), "deleted": true }))
}

async fn create_token(shared: &Shared) -> Result<serde_json::Value, String> {
    let (token, hash) = new_token()?;
    {
        let _writing = shared.write_barrier.read().await;
        shared
            .store
            .add_registration_token(&hash)
            .map_err(|e| e.to_string())?;
    }
    shared.commit.durable().await.map_err(|e| e.to_string())?;
    Ok(serde_json::json!({ "token": token, "id": &hex::encode(hash)[..TOKEN_ID_LEN] }))
}

/// A new registration token (128 random bits as hex) and its SHA-256, all the relay keeps.
pub fn new_token() -> Result<(String, [u8; 32]), String> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| format!("no randomness: {e}"))?;
    let token = hex::encode(raw);
    let hash = Sha256::digest(token.as_bytes()).into();
    Ok((token, hash))
}

/// The SHA-256 (hex) of every unused token: in the store, and in the inbox that
/// `kith-relay token create` fills.
fn token_hashes(shared: &Shared) -> Result<Vec<String>, String> {
    let mut hashes: Vec<String> = shared
        .store
        .registration_tokens()
        .map_err(|e| e.to_string())?
        .iter()
        .map(hex::encode)
        .collect();
    if let Ok(entries) = std::fs::read_dir(&shared.token_inbox) {
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str()
                && name.len() == 64
                && name.bytes().all(|b| b.is_ascii_hexdigit())
            {
                hashes.push(name.to_string());
            }
        }
    }
    hashes.sort();
    hashes.dedup();
    Ok(hashes)
}

fn token_ids(shared: &Shared) -> Result<Vec<String>, String> {
    Ok(token_hashes(shared)?
        .into_iter()
        .map(|h| h[..TOKEN_ID_LEN].to_string())
        .collect())
}

async fn revoke_token(shared: &Shared, word: &str) -> Result<serde_json::Value, String> {
    let word = word.to_ascii_lowercase();
    let hashes = token_hashes(shared)?;
    // The token itself (32 hex characters) names its hash; else a prefix of a hash.
    let as_token = hex::encode(Sha256::digest(word.as_bytes()));
    let matching: Vec<&String> = if hashes.contains(&as_token) {
        vec![&as_token]
    } else if word.len() >= 6 {
        hashes.iter().filter(|h| h.starts_with(&word)).collect()
    } else {
        return Err(
            "give a token id (at least 6 characters, from `tokens list`) or the token".into(),
        );
    };
    let hash = match matching.as_slice() {
        [hash] => (*hash).clone(),
        [] => return Err(format!("no unused token {word}")),
        _ => return Err(format!("more than one token starts with {word}")),
    };
    let bytes: [u8; 32] = hex::decode(&hash)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("token hash")?;
    {
        let _writing = shared.write_barrier.read().await;
        shared
            .store
            .consume_registration_token(&bytes)
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(shared.token_inbox.join(&hash));
    }
    shared.commit.durable().await.map_err(|e| e.to_string())?;
    Ok(serde_json::json!({ "revoked": &hash[..TOKEN_ID_LEN] }))
}

fn stats(shared: &Shared) -> Result<LiveStats, String> {
    let totals = shared.store.stats().map_err(|e| e.to_string())?;
    let tokens = token_hashes(shared)?.len() as u64;
    Ok(LiveStats {
        accounts: totals.accounts,
        streams: totals.streams,
        envelopes: totals.envelopes,
        bytes: totals.envelope_bytes,
        pairing_slots: totals.pairing_slots,
        recovery_bundles: totals.recovery_bundles,
        registration_tokens: tokens,
        connections: shared.live.connections.get(),
        subscriptions: shared.live.subscriptions.get(),
        accounts_in_memory: shared.accounts.len(),
    })
}
