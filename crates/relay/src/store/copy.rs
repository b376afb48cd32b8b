//! Copying a whole store into another (`kith-relay migrate-store`): sled to PostgreSQL and
//! back, or any [`Store`] into any other, then verifying the copy.
//!
//! The copy reads the source through [`Store::export`] and [`Store::read_stream`] and writes
//! through the destination's ordinary methods, so the destination's own rules apply (a
//! PostgreSQL stream head moves by compare-and-set). Verification reads both stores again and
//! compares every roster, every stream head (first and last seq, bytes, envelopes), a SHA-256
//! of every stream's envelopes, and the sealed keys, pairing slots, recovery bundles and
//! registration tokens.

use std::collections::BTreeMap;

use kith_protocol::ids::{AccountId, DeviceId};
use sha2::{Digest, Sha256};

use super::{Exported, ReadEnd, Store, StoreError, StreamMeta};

/// Envelopes written per call while copying a stream.
const CHUNK_ENVELOPES: usize = 1024;
/// Bytes of envelopes written per call while copying a stream (at least one envelope).
const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// What a copy moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Accounts.
    pub accounts: u64,
    /// Device streams.
    pub streams: u64,
    /// Envelopes.
    pub envelopes: u64,
    /// Envelope bytes.
    pub envelope_bytes: u64,
    /// Sealed keys, pairing slots, recovery bundles and tokens.
    pub other: u64,
}

/// Why a copy could not be made or does not match its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The destination already holds data: a copy goes into an empty store only.
    #[error("the destination is not empty ({0} accounts, {1} tokens): copy into an empty store")]
    NotEmpty(u64, u64),
    /// The copy differs from its source.
    #[error("verification failed: {0}")]
    Mismatch(String),
}

/// Everything of a store that verification compares, with each stream's envelopes digested.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    rosters: BTreeMap<AccountId, Vec<u8>>,
    streams: BTreeMap<(AccountId, DeviceId), (StreamMeta, [u8; 32])>,
    other: Vec<Exported>,
}

fn summarize(store: &dyn Store) -> Result<Summary, StoreError> {
    let mut summary = Summary::default();
    let mut heads = Vec::new();
    store.export(&mut |item| {
        match item {
            Exported::Account { account, roster } => {
                summary.rosters.insert(account, roster);
            }
            Exported::Stream {
                account,
                device,
                meta,
            } => heads.push((account, device, meta)),
            other => summary.other.push(other),
        }
        Ok(())
    })?;
    for (account, device, meta) in heads {
        let mut digest = Sha256::new();
        let mut count = 0u64;
        store.read_stream(&account, &device, 0, &mut |seq, envelope| {
            digest.update(seq.to_be_bytes());
            digest.update((envelope.len() as u64).to_be_bytes());
            digest.update(envelope);
            count += 1;
            true
        })?;
        summary
            .streams
            .insert((account, device), (meta, digest.finalize().into()));
        if count != meta.envelopes {
            return Err(StoreError::Corrupt(
                "a stream's envelopes differ from its head",
            ));
        }
    }
    summary.other.sort_by_key(|item| format!("{item:?}"));
    Ok(summary)
}

/// Copies a stream's envelopes in chunks: the first chunk starts the stream, the others
/// append, each with the stream's head as of its end; the last one's head is `meta`.
fn copy_stream(
    from: &dyn Store,
    to: &dyn Store,
    account: &AccountId,
    device: &DeviceId,
    meta: &StreamMeta,
) -> Result<(), StoreError> {
    let mut chunk: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut chunk_bytes = 0usize;
    let mut written = StreamMeta {
        first_seq: meta.first_seq,
        ..StreamMeta::default()
    };
    let flush = |chunk: &mut Vec<(u64, Vec<u8>)>, written: &mut StreamMeta| {
        let Some(&(first, _)) = chunk.first() else {
            return Ok(());
        };
        let refs: Vec<&[u8]> = chunk.iter().map(|(_, e)| e.as_slice()).collect();
        let started = written.envelopes > 0;
        written.last_seq = first + chunk.len() as u64 - 1;
        written.envelopes += chunk.len() as u64;
        written.bytes += refs.iter().map(|e| e.len() as u64).sum::<u64>();
        if written.first_seq == 0 {
            written.first_seq = first;
        }
        let head = if written.envelopes == meta.envelopes {
            *meta
        } else {
            *written
        };
        if started {
            to.append(account, device, first, &refs, &head)?;
        } else {
            to.import_stream(account, device, first, &refs, &head)?;
        }
        chunk.clear();
        Ok::<(), StoreError>(())
    };
    let mut failed = None;
    let mut after = 0;
    loop {
        let end = from.read_stream(account, device, after, &mut |seq, envelope| {
            if (chunk.len() == CHUNK_ENVELOPES || chunk_bytes + envelope.len() > CHUNK_BYTES)
                && !chunk.is_empty()
            {
                return false;
            }
            chunk_bytes += envelope.len();
            chunk.push((seq, envelope.to_vec()));
            after = seq;
            true
        })?;
        if let Err(err) = flush(&mut chunk, &mut written) {
            failed = Some(err);
            break;
        }
        chunk_bytes = 0;
        if end == ReadEnd::Complete {
            break;
        }
    }
    if let Some(err) = failed {
        return Err(err);
    }
    if written.envelopes == 0 && meta.last_seq > 0 {
        // A stream whose envelopes were all truncated: its head alone.
        to.import_stream(account, device, meta.first_seq, &[], meta)?;
    }
    Ok(())
}

/// Copies everything in `from` into `to`, which must be empty, then verifies the copy.
pub fn copy_store(from: &dyn Store, to: &dyn Store) -> Result<CopyReport, CopyError> {
    let before = to.stats()?;
    if before.accounts > 0 || before.registration_tokens > 0 || before.streams > 0 {
        return Err(CopyError::NotEmpty(
            before.accounts,
            before.registration_tokens,
        ));
    }
    let mut report = CopyReport::default();
    let mut streams = Vec::new();
    from.export(&mut |item| {
        match item {
            Exported::Account { account, roster } => {
                to.create_account(&account, &roster)?;
                report.accounts += 1;
            }
            Exported::Stream {
                account,
                device,
                meta,
            } => streams.push((account, device, meta)),
            Exported::SealedKey {
                account,
                device,
                epoch,
                sealed,
            } => {
                to.put_sealed_key(&account, &device, epoch, &sealed)?;
                report.other += 1;
            }
            Exported::PairingSlot {
                slot_id,
                account,
                expires_at_ms,
                bundle,
            } => {
                to.put_pairing_slot(&slot_id, &account, expires_at_ms, &bundle, 0)?;
                report.other += 1;
            }
            Exported::RecoveryBundle {
                lookup_id,
                account,
                bundle,
            } => {
                to.put_recovery_bundle(&lookup_id, &account, &bundle)?;
                report.other += 1;
            }
            Exported::Token { token_hash } => {
                to.add_registration_token(&token_hash)?;
                report.other += 1;
            }
            Exported::Settings {
                account,
                settings,
                active_day,
            } => {
                to.put_account_settings(&account, &settings)?;
                if active_day > 0 {
                    to.mark_active(&account, active_day)?;
                }
                report.other += 1;
            }
        }
        Ok(())
    })?;
    for (account, device, meta) in &streams {
        copy_stream(from, to, account, device, meta)?;
        report.streams += 1;
        report.envelopes += meta.envelopes;
        report.envelope_bytes += meta.bytes;
    }
    verify(from, to)?;
    Ok(report)
}

/// Compares two stores: every roster, stream head, stream content and the rest.
pub fn verify(a: &dyn Store, b: &dyn Store) -> Result<(), CopyError> {
    let (a, b) = (summarize(a)?, summarize(b)?);
    if a.rosters != b.rosters {
        return Err(CopyError::Mismatch(format!(
            "rosters differ ({} accounts in the source, {} in the copy)",
            a.rosters.len(),
            b.rosters.len()
        )));
    }
    for (key, (meta, digest)) in &a.streams {
        match b.streams.get(key) {
            Some((copied, _)) if copied != meta => {
                return Err(CopyError::Mismatch(format!(
                    "a stream head differs: {meta:?} in the source, {copied:?} in the copy"
                )));
            }
            Some((_, copied)) if copied != digest => {
                return Err(CopyError::Mismatch(
                    "a stream's envelopes differ".to_owned(),
                ));
            }
            Some(_) => {}
            None => return Err(CopyError::Mismatch("a stream is missing".to_owned())),
        }
    }
    if a.streams.len() != b.streams.len() {
        return Err(CopyError::Mismatch("the copy has extra streams".to_owned()));
    }
    if a.other != b.other {
        return Err(CopyError::Mismatch(
            "sealed keys, pairing slots, recovery bundles or tokens differ".to_owned(),
        ));
    }
    Ok(())
}
