//! `Push`: appends a batch to the authenticated device's own stream.
//!
//! Every envelope's header must name the authenticated account and device (`WRONG_STREAM`) and
//! the seqs must be consecutive. The first seq must be at most last + 1 (`SEQ_GAP`); envelopes
//! at seqs already stored must be byte-identical (an identical retransmit is acknowledged
//! again, a different one is `SEQ_CONFLICT`). The ack is sent only once the batch is durable,
//! and pulls serve the batch only from then on.
//! A push may also start past last + 1 when its first envelope is a snapshot: the device
//! restarts its stream there (a device healing a relay that lost part of its stream, whose own
//! copy begins at its last snapshot, docs/PROTOCOL.md §9.1); the older envelopes are dropped, as
//! a truncation before the snapshot would. Any other gap is `SEQ_GAP`.
//! A device that a pending revocation fenced is refused with `DEVICE_FENCED` (see
//! `handlers::roster`); a removed device with `DEVICE_REMOVED`, under the same lock that swaps
//! the roster, so nothing is stored past a removed device's `final_seq`.
//! Signatures are the clients' to check: the relay cannot forge or read, only order and store.

use std::time::Instant;

use bytes::Bytes;
use kith_protocol::proto::{ErrorCode, PayloadKind, PushAck, response};

use super::{Reply, authorized, check_device, durable, respond};
use crate::error::RequestError;
use crate::state::{AccountEvent, Conn, Shared};
use crate::store::{StoreError, StreamMeta};
use crate::wire::Push;
use kith_protocol::envelope::peek_header;

pub(crate) async fn handle(shared: &Shared, conn: &Conn, req: Push) -> Reply {
    let (account, device) = authorized(shared, conn)?;
    let limits = &shared.config.limits;
    let envelopes = req.envelopes;
    if envelopes.is_empty() {
        return Err(RequestError::invalid("empty push"));
    }
    if envelopes.len() > limits.max_batch_envelopes as usize {
        return Err(RequestError::new(
            ErrorCode::BatchTooLarge,
            format!("at most {} envelopes per push", limits.max_batch_envelopes),
        ));
    }
    let mut first_seq = 0;
    let mut starts_with_snapshot = false;
    for (i, envelope) in envelopes.iter().enumerate() {
        if envelope.len() > limits.max_envelope_bytes as usize {
            return Err(RequestError::new(
                ErrorCode::EnvelopeTooLarge,
                format!("envelope {i} exceeds {} bytes", limits.max_envelope_bytes),
            ));
        }
        let header = peek_header(envelope).map_err(|_| {
            RequestError::new(
                ErrorCode::Malformed,
                format!("envelope {i} does not decode"),
            )
        })?;
        if header.account_id != account.id || header.device_id != device {
            return Err(RequestError::new(
                ErrorCode::WrongStream,
                format!("envelope {i} names another account or device"),
            ));
        }
        if i == 0 {
            if header.seq == 0 {
                return Err(RequestError::invalid("seqs start at 1"));
            }
            first_seq = header.seq;
            starts_with_snapshot = header.kind == PayloadKind::Snapshot;
        } else if header.seq != first_seq.saturating_add(i as u64) {
            return Err(RequestError::invalid(format!(
                "envelope {i} is not consecutive"
            )));
        }
    }
    let last_seq = first_seq + (envelopes.len() as u64 - 1);
    // Another relay on the same database may have moved the stream or the roster on since
    // this one read them: the store then refuses the write, and the push is decided again on
    // what is stored now.
    let mut attempts = 0;
    let appended = loop {
        attempts += 1;
        let mut inner = account.lock();
        if inner.deleted {
            return Err(RequestError::new(
                ErrorCode::UnknownAccount,
                "the account was deleted",
            ));
        }
        check_device(&inner.roster, &device)?;
        if inner.is_fenced(&device, Instant::now()) {
            return Err(RequestError::new(
                ErrorCode::DeviceFenced,
                "a revocation of this device is under way; retry later",
            ));
        }
        let mut meta = inner.streams.get(&device).copied().unwrap_or_default();
        if first_seq > meta.last_seq + 1 {
            if !starts_with_snapshot {
                return Err(RequestError::new(
                    ErrorCode::SeqGap,
                    format!("next seq is {}", meta.last_seq + 1),
                ));
            }
            meta = restart_stream(shared, &mut inner, &account.id, &device, meta)?;
        }
        let overlap = if first_seq <= meta.last_seq {
            (meta.last_seq.min(last_seq) - first_seq + 1) as usize
        } else {
            0
        };
        if overlap > 0 {
            check_retransmit(
                shared,
                &account.id,
                &device,
                first_seq,
                &envelopes[..overlap],
            )?;
        }
        let fresh = &envelopes[overlap..];
        if fresh.is_empty() {
            break false;
        } else {
            let fresh_bytes: u64 = fresh.iter().map(|e| e.len() as u64).sum();
            let quota = inner.max_bytes(limits);
            if inner.bytes_used() + fresh_bytes > quota {
                return Err(RequestError::new(
                    ErrorCode::QuotaExceeded,
                    format!("the account's quota of {quota} bytes is used up"),
                ));
            }
            let from = first_seq + overlap as u64;
            let next = StreamMeta {
                first_seq: if meta.envelopes == 0 {
                    from
                } else {
                    meta.first_seq
                },
                last_seq,
                bytes: meta.bytes + fresh_bytes,
                envelopes: meta.envelopes + fresh.len() as u64,
            };
            let refs: Vec<&[u8]> = fresh.iter().map(|e| &e[..]).collect();
            let roster_version = inner.roster.version();
            match shared.store.append_checked(
                &account.id,
                &device,
                from,
                &refs,
                &next,
                roster_version,
            ) {
                Ok(()) => {}
                Err(StoreError::Moved) if attempts < 3 => {
                    drop(inner);
                    shared.accounts.reload(shared.store.as_ref(), &account)?;
                    continue;
                }
                Err(err) => return Err(RequestError::storage(err)),
            }
            // Until the group commit confirms this write, pulls serve the stream only up to
            // what was durable before it (docs/PROTOCOL.md §12).
            inner.durable_until.entry(device).or_insert(meta.last_seq);
            inner.streams.insert(device, next);
            inner.envelope_bytes += fresh_bytes;
            inner.envelopes += fresh.len() as u64;
            break true;
        }
    };
    durable(shared).await?;
    // Everything written before the commit is durable, this batch (fresh or retransmitted)
    // included.
    account.lock().made_durable(&device, last_seq);
    if appended {
        account.notify(AccountEvent::Pushed { device, last_seq });
    }
    respond(response::Kind::PushAck(PushAck { last_seq }))
}

/// Drops every stored envelope of `device` before a push that restarts its stream at a
/// snapshot past its end (docs/PROTOCOL.md §9.1); returns the emptied stream's meta, which the
/// append then replaces. A crash between the two leaves an empty stream that the device fills
/// again at its next sync.
fn restart_stream(
    shared: &Shared,
    inner: &mut crate::state::AccountInner,
    account: &kith_protocol::ids::AccountId,
    device: &kith_protocol::ids::DeviceId,
    meta: StreamMeta,
) -> Result<StreamMeta, RequestError> {
    if meta.envelopes == 0 {
        return Ok(StreamMeta {
            envelopes: 0,
            bytes: 0,
            ..meta
        });
    }
    let after = shared
        .store
        .truncate(account, device, meta.last_seq + 1)
        .map_err(RequestError::storage)?;
    inner.envelope_bytes = inner
        .envelope_bytes
        .saturating_sub(meta.bytes - after.bytes.min(meta.bytes));
    inner.envelopes = inner
        .envelopes
        .saturating_sub(meta.envelopes - after.envelopes.min(meta.envelopes));
    let emptied = StreamMeta {
        first_seq: 0,
        last_seq: meta.last_seq,
        bytes: 0,
        envelopes: 0,
    };
    inner.streams.insert(*device, emptied);
    Ok(emptied)
}

/// Checks that envelopes pushed again at stored seqs are byte-identical to what is stored.
fn check_retransmit(
    shared: &Shared,
    account: &kith_protocol::ids::AccountId,
    device: &kith_protocol::ids::DeviceId,
    first_seq: u64,
    resent: &[Bytes],
) -> Result<(), RequestError> {
    let mut matched = 0usize;
    let mut conflict = false;
    shared
        .store
        .read_stream(account, device, first_seq - 1, &mut |seq, stored| {
            let index = (seq - first_seq) as usize;
            if seq < first_seq || index >= resent.len() {
                return false;
            }
            if stored != &resent[index][..] {
                conflict = true;
                return false;
            }
            matched += 1;
            true
        })
        .map_err(RequestError::storage)?;
    if conflict || matched != resent.len() {
        // A mismatch, or seqs that were truncated and can no longer be compared.
        return Err(RequestError::new(
            ErrorCode::SeqConflict,
            "a different envelope is stored at that seq",
        ));
    }
    Ok(())
}
