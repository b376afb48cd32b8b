//! `Pull`: envelopes after per-device cursors, one page bounded in count and bytes.
//!
//! Streams are read in device-id order; devices absent from the cursors are read from seq 0.
//! The page stops at the first envelope that would exceed a bound (`more = true`); a page
//! always holds at least one envelope when any is pending, so a client always progresses.
//! `streams` describes every stream of the account (first stored seq, last servable seq).
//! A stream is served only up to what is durable: a pull that finds envelopes not yet confirmed
//! joins the next group commit first, and serves them only if it succeeds (docs/PROTOCOL.md §12).
//! A removed device's stream is served only up to the roster's `final_seq` for it.

use std::collections::HashMap;

use bytes::Bytes;
use kith_protocol::ids::DeviceId;
use kith_protocol::limits::{MAX_DEVICES, MAX_REMOVED_DEVICES};
use kith_protocol::proto::{ErrorCode, Pull, StreamInfo};

use super::{Answer, Reply, authorized, durable};
use crate::error::RequestError;
use crate::state::{Conn, Shared};
use crate::store::ReadEnd;
use crate::wire::{PullResponse, StoredEnvelope, pull_frame};

pub(crate) async fn handle(shared: &Shared, conn: &Conn, req: Pull) -> Reply {
    let (account, _device) = authorized(shared, conn)?;
    let limits = &shared.config.bounds;
    let max_envelopes = match req.max_envelopes {
        0 => limits.pull_default_envelopes,
        n => n.min(limits.pull_max_envelopes),
    } as usize;
    let max_bytes = match req.max_bytes {
        0 => limits.pull_max_bytes,
        n => n.min(limits.pull_max_bytes),
    } as usize;
    if req.cursors.len() > MAX_DEVICES + MAX_REMOVED_DEVICES {
        return Err(RequestError::invalid("too many cursors"));
    }
    let mut cursors = HashMap::with_capacity(req.cursors.len());
    for cursor in &req.cursors {
        let device = DeviceId::from_slice(&cursor.device_id)
            .map_err(|_| RequestError::invalid("cursor device_id must be 16 bytes"))?;
        cursors.insert(device, cursor.after_seq);
    }
    // With other relays writing to the same database, what they committed is served too.
    if shared.shared_store {
        shared.accounts.reload(shared.store.as_ref(), &account)?;
    }
    // Envelopes written but not yet known durable (a push waiting for its commit, or one whose
    // commit failed): join the next group commit so that the page may include them. If that
    // commit fails, they stay hidden and the page ends before them.
    let unconfirmed: Vec<(DeviceId, u64)> = {
        let inner = account.lock();
        inner
            .durable_until
            .keys()
            .filter_map(|d| inner.streams.get(d).map(|m| (*d, m.last_seq)))
            .collect()
    };
    if !unconfirmed.is_empty() && durable(shared).await.is_ok() {
        let mut inner = account.lock();
        for (device, seq) in &unconfirmed {
            inner.made_durable(device, *seq);
        }
    }
    // Room for the largest page this request can produce, taken before reading; what the
    // page does not use is given back once it is encoded.
    // First from the account's share, then from the relay's budget, each within `pull_wait`:
    // pages one tenant never reads hold only its own share, and a pull that finds no room is
    // refused as rate-limited (the client retries) rather than left waiting.
    let reserved = shared.pull_page_bytes(max_bytes);
    let permits = u32::try_from(reserved).unwrap_or(u32::MAX);
    let wait = limits.pull_wait;
    let busy = || {
        shared
            .metrics
            .rate_limited(crate::metrics::Limit::PullBudget);
        RequestError::new(ErrorCode::RateLimited, "pull budget exhausted; retry")
    };
    let mut account_permit = tokio::time::timeout(
        wait,
        account.pull_budget.clone().acquire_many_owned(permits),
    )
    .await
    .map_err(|_| busy())?
    .map_err(|_| RequestError::internal("pull budget closed"))?;
    let mut permit =
        tokio::time::timeout(wait, shared.pull_budget.clone().acquire_many_owned(permits))
            .await
            .map_err(|_| busy())?
            .map_err(|_| RequestError::internal("pull budget closed"))?;
    // A removed device's stream ends at its final_seq (docs/PROTOCOL.md §4): nothing past it
    // is served, even if it was stored before this relay refused such rosters.
    let mut streams: Vec<_> = {
        let inner = account.lock();
        inner
            .streams
            .iter()
            .map(|(d, m)| {
                let servable = inner.servable_last_seq(d, m);
                let end = inner
                    .roster
                    .removed_device(d)
                    .map_or(servable, |gone| servable.min(gone.final_seq()));
                (*d, *m, end)
            })
            .collect()
    };
    streams.sort_unstable_by_key(|(device, _, _)| *device);

    let mut page = PullResponse::default();
    let mut bytes = 0usize;
    for &(device, meta, servable) in &streams {
        page.streams.push(StreamInfo {
            device_id: device.as_bytes().to_vec(),
            first_seq: meta.first_seq,
            last_seq: servable,
        });
        let after = cursors.get(&device).copied().unwrap_or(0);
        if page.more || after >= servable {
            continue;
        }
        let device_id = Bytes::copy_from_slice(device.as_bytes());
        // Each read is bounded by the seq where the page's envelope count would be reached
        // (counted from the stream's first stored envelope when the cursor is before it) and
        // by the servable end, so that a store reading packed rows fetches none past the
        // page; the sink still checks every bound. A read that completes short of the
        // servable end without filling the page (envelopes missing below the bound) goes on.
        let mut cursor = after;
        loop {
            let remaining = max_envelopes.saturating_sub(page.envelopes.len()) as u64;
            if remaining == 0 {
                page.more = true;
                break;
            }
            let from = cursor.max(meta.first_seq.saturating_sub(1));
            let until = servable.min(from.saturating_add(remaining));
            let end = shared
                .store
                .read_stream_until(&account.id, &device, cursor, until, &mut |seq, envelope| {
                    let full = page.envelopes.len() >= max_envelopes
                        || (bytes + envelope.len() > max_bytes && !page.envelopes.is_empty());
                    if full {
                        return false;
                    }
                    bytes += envelope.len();
                    page.envelopes.push(StoredEnvelope {
                        device_id: device_id.clone(),
                        seq,
                        envelope,
                    });
                    true
                })
                .map_err(RequestError::storage)?;
            if end == ReadEnd::More {
                page.more = true;
                break;
            }
            if until >= servable {
                break;
            }
            cursor = until;
        }
    }
    let frame = pull_frame(&page);
    shared.metrics.pulled(page.envelopes.len(), bytes);
    drop(page);
    if let Some(unused) = reserved.checked_sub(frame.len()) {
        drop(permit.split(unused));
        drop(account_permit.split(unused));
    }
    Ok(Answer::Frame(frame, Some([account_permit, permit])))
}
