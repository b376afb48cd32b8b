//! `PutSealedEpochKeys` and `GetSealedEpochKeys`: epoch secrets sealed to each device, stored
//! per (account, recipient device, epoch). The relay reads only the routing fields; the sealed
//! secret is opaque to it (HPKE with X-Wing, docs/PROTOCOL.md §5).

use kith_protocol::ids::{AccountId, DeviceId};
use kith_protocol::keys::AccountVerifyingKey;
use kith_protocol::proto::{
    ErrorCode, GetSealedEpochKeys, PutSealedEpochKeys, SealedEpochKey, SealedEpochKeys, response,
};
use prost::Message;

use super::{Reply, authorized, durable, ok, respond};
use crate::error::RequestError;
use crate::state::{Conn, Shared};

/// Largest encoded sealed epoch key (X-Wing encapsulation 1120 bytes, a 48-byte ciphertext and
/// ids; with generous room).
const MAX_SEALED_KEY_BYTES: usize = 4096;

pub(crate) async fn put(shared: &Shared, conn: &Conn, req: PutSealedEpochKeys) -> Reply {
    let (account, device) = authorized(shared, conn)?;
    let limits = &shared.config.bounds;
    if req.keys.len() > limits.max_sealed_keys_per_request as usize {
        return Err(RequestError::new(
            ErrorCode::BatchTooLarge,
            "too many sealed keys",
        ));
    }
    let roster = account.roster();
    let staged_key = staged_account_key(&req.staged_account_key)?;
    let mut parsed = Vec::with_capacity(req.keys.len());
    for (i, bytes) in req.keys.iter().enumerate() {
        if bytes.len() > MAX_SEALED_KEY_BYTES {
            return Err(RequestError::invalid(format!(
                "sealed key {i} is too large"
            )));
        }
        let key = SealedEpochKey::decode(bytes.as_slice()).map_err(|_| {
            RequestError::new(
                ErrorCode::Malformed,
                format!("sealed key {i} does not decode"),
            )
        })?;
        let for_account = AccountId::from_slice(&key.account_id).ok();
        if for_account != Some(account.id) {
            return Err(RequestError::new(
                ErrorCode::WrongStream,
                format!("sealed key {i} names another account"),
            ));
        }
        let recipient = DeviceId::from_slice(&key.recipient_device_id)
            .map_err(|_| RequestError::invalid(format!("sealed key {i}: bad recipient id")))?;
        if roster.device(&recipient).is_none() {
            return Err(RequestError::new(
                ErrorCode::UnknownDevice,
                format!("sealed key {i}: recipient not in the roster"),
            ));
        }
        // One epoch ahead is allowed: a revoking device stores the next epoch's keys before
        // the roster that starts it, so no device ever sees an epoch it has no key for.
        if key.epoch == 0 || key.epoch > roster.epoch().saturating_add(1) {
            return Err(RequestError::invalid(format!(
                "sealed key {i}: epoch out of range"
            )));
        }
        parsed.push((recipient, key.epoch, bytes));
    }
    {
        let mut inner = account.lock();
        if inner.deleted {
            return Err(RequestError::account_deleted());
        }
        let added: u64 = parsed.iter().map(|(_, _, b)| b.len() as u64).sum();
        if inner.bytes_used() + added > inner.max_bytes(limits) {
            return Err(RequestError::new(
                ErrorCode::QuotaExceeded,
                "the account's quota is used up",
            ));
        }
        // A key of an epoch that started, held by another device, is replaced only under the
        // account key of that epoch (docs/PROTOCOL.md §5): no member can take a device's key
        // of an epoch away, or swap in a secret of its own, and a removed device (which never
        // holds a later epoch's key) can touch none of them. A key staged for the next epoch
        // belongs to the key that signed it, the next epoch's account key, which only the
        // revoking device holds until the roster names it: it is replaced only by a key that
        // verifies under the `staged_account_key` the request names, under which the stored
        // one verifies too. (An unsigned staged key, stored by a 0.1.0 revoker, stays open.)
        for (i, (recipient, epoch, bytes)) in parsed.iter().enumerate() {
            if *recipient == device {
                continue;
            }
            let stored = shared
                .store
                .sealed_keys(&account.id, recipient, *epoch)
                .map_err(RequestError::storage)?
                .into_iter()
                .find(|held| {
                    kith_protocol::epoch::peek_sealed_epoch_key(held)
                        .is_ok_and(|view| view.epoch == *epoch)
                });
            let Some(stored) = stored else {
                continue;
            };
            if stored.as_slice() == bytes.as_slice() {
                continue;
            }
            let signed = if *epoch > roster.epoch() {
                let stored_signed = kith_protocol::epoch::sealed_epoch_key_is_signed(&stored);
                staged_key.as_ref().is_some_and(|key| {
                    kith_protocol::epoch::verify_sealed_epoch_key_signature(bytes, key).is_ok()
                        && (!stored_signed
                            || kith_protocol::epoch::verify_sealed_epoch_key_signature(
                                &stored, key,
                            )
                            .is_ok())
                }) || !stored_signed && !kith_protocol::epoch::sealed_epoch_key_is_signed(bytes)
            } else {
                roster.epoch_account_key(*epoch).is_some_and(|key| {
                    kith_protocol::epoch::verify_sealed_epoch_key_signature(bytes, key).is_ok()
                })
            };
            if !signed {
                return Err(RequestError::new(
                    ErrorCode::SlotExists,
                    format!(
                        "sealed key {i}: another device holds a key of that epoch; only a \
                         holder of the epoch's account key may replace it"
                    ),
                ));
            }
        }
        for (recipient, epoch, bytes) in parsed {
            let replaced = shared
                .store
                .put_sealed_key(&account.id, &recipient, epoch, bytes)
                .map_err(RequestError::storage)?;
            inner.sealed_key_bytes =
                inner.sealed_key_bytes.saturating_sub(replaced) + bytes.len() as u64;
        }
    }
    durable(shared).await?;
    ok()
}

/// The `staged_account_key` of a request: absent, or a valid Ed25519 key.
fn staged_account_key(bytes: &[u8]) -> Result<Option<AccountVerifyingKey>, RequestError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    AccountVerifyingKey::from_slice(bytes)
        .map(Some)
        .map_err(|_| RequestError::invalid("staged_account_key is not an account key"))
}

pub(crate) fn get(shared: &Shared, conn: &Conn, req: GetSealedEpochKeys) -> Reply {
    let (account, device) = authorized(shared, conn)?;
    let keys = shared
        .store
        .sealed_keys(&account.id, &device, req.min_epoch)
        .map_err(RequestError::storage)?;
    respond(response::Kind::SealedEpochKeys(SealedEpochKeys { keys }))
}
