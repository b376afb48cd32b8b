//! `PutPairingSlot` and `TakePairingSlot`: a one-shot mailbox for the link bundle.
//!
//! An account's device puts the sealed bundle under a slot id derived from the pairing secret;
//! the new device, which cannot authenticate yet, takes it once. Slots expire after the
//! configured TTL. Takes are rate-limited per source address.
//!
//! A take may ask to wait (`wait_ms`, capped at [`MAX_TAKE_WAIT`]) for a slot that is not there
//! yet: the new device holds one request open while a person copies the link code to another
//! device, instead of polling. A wait costs one lookup of the per-address budget however long
//! it lasts, so a device can wait for minutes within the budget that stops enumeration.

use std::time::Duration;

use kith_protocol::limits::MAX_BUNDLE_BYTES;
use kith_protocol::proto::{ErrorCode, PairingSlot, PutPairingSlot, TakePairingSlot, response};

use super::{Reply, authorized, check_lookup_budget, durable, id32, ok, respond};
use crate::error::RequestError;
use crate::state::{Conn, Shared, now_ms};

pub(crate) async fn put(shared: &Shared, conn: &Conn, req: PutPairingSlot) -> Reply {
    let (account, _device) = authorized(shared, conn)?;
    let slot_id = id32(&req.slot_id, "slot_id")?;
    if req.bundle.is_empty() || req.bundle.len() > MAX_BUNDLE_BYTES {
        return Err(RequestError::invalid("bundle size out of range"));
    }
    let limits = &shared.config.bounds;
    let now = now_ms();
    let live = shared
        .store
        .count_pairing_slots(&account.id, now)
        .map_err(RequestError::storage)?;
    if live >= limits.max_pairing_slots_per_account as usize {
        return Err(RequestError::new(
            ErrorCode::QuotaExceeded,
            "too many live pairing slots",
        ));
    }
    let ttl = u64::try_from(limits.pairing_slot_ttl.as_millis()).unwrap_or(u64::MAX);
    let put = shared
        .store
        .put_pairing_slot(
            &slot_id,
            &account.id,
            now.saturating_add(ttl),
            &req.bundle,
            now,
        )
        .map_err(RequestError::storage)?;
    if !put {
        return Err(RequestError::new(
            ErrorCode::SlotExists,
            "the pairing slot is in use",
        ));
    }
    durable(shared).await?;
    shared
        .pairing_puts
        .send_modify(|puts| *puts = puts.wrapping_add(1));
    ok()
}

/// The longest a take waits for its slot to be filled: well under the client's request timeout
/// and the connection's idle timeout (kept alive by the client), short enough that a relay
/// shutdown or a lost client frees the request soon.
pub const MAX_TAKE_WAIT: Duration = Duration::from_secs(20);

pub(crate) async fn take(shared: &Shared, conn: &Conn, req: TakePairingSlot) -> Reply {
    check_lookup_budget(shared, conn)?;
    let slot_id = id32(&req.slot_id, "slot_id")?;
    let wait = Duration::from_millis(u64::from(req.wait_ms)).min(MAX_TAKE_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut puts = shared.pairing_puts.subscribe();
    let mut shutdown = shared.shutdown.clone();
    loop {
        // Marked seen before the lookup: a put after it wakes the wait below.
        puts.borrow_and_update();
        if let Some(bundle) = shared
            .store
            .take_pairing_slot(&slot_id, now_ms())
            .map_err(RequestError::storage)?
        {
            durable(shared).await?;
            return respond(response::Kind::PairingSlot(PairingSlot { bundle }));
        }
        tokio::select! {
            changed = puts.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
            _ = shutdown.changed() => {
                return Err(RequestError::new(
                    ErrorCode::ShuttingDown,
                    "the relay is shutting down",
                ));
            }
        }
    }
    Err(RequestError::new(
        ErrorCode::NotFound,
        "no such pairing slot",
    ))
}
