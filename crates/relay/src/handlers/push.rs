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
//!
//! Pipelining (docs/PROTOCOL.md §12, "Pipelined pushes"): a device may keep up to
//! [`MAX_PUSHES_IN_FLIGHT`] pushes in flight on one connection, each on its own stream, opened
//! in seq order. Their frames may arrive, and their tasks run, in any order; a push that finds a
//! gap before its first seq waits until every stream its connection opened before it has passed
//! its ordering point (a push: its append, or its refusal; any other request: its decoding),
//! and only then decides `SEQ_GAP`. Appends therefore happen in stream order, each push waits
//! for its own group commit, and since a commit covers every write made before it started, an
//! ack means the pushes before it are durable too. One more push than the window is refused
//! with `PUSH_WINDOW_FULL` before it waits or is stored, unless every stream opened before it
//! has passed (it waits for nothing, and the pushes in the window may be waiting for it).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kith_protocol::proto::{ErrorCode, PayloadKind, PushAck, response};

use super::{Reply, authorized, check_device, durable, respond};
use crate::error::RequestError;
use crate::state::{AccountEvent, Conn, Shared};
use crate::store::{StoreError, StreamMeta};
use crate::wire::Push;
use kith_protocol::envelope::peek_header;

/// Pushes one connection may have between decoding and answer (the window of a pipelining
/// device; `kith-client` keeps 4). One more is `PUSH_WINDOW_FULL`. Below the streams a
/// connection may open (`max_streams_per_connection`, 32), so that a connection can still
/// pull, subscribe and be answered while its window is full.
pub const MAX_PUSHES_IN_FLIGHT: usize = 16;

/// The order of one connection's request streams, as far as pushes need it: which streams
/// (by QUIC stream index, the order the peer opened them in) have passed their ordering point,
/// and how many pushes are in flight. Bounded by the streams in flight (quinn's stream limit).
#[derive(Debug)]
pub(crate) struct PushOrder {
    state: Mutex<OrderState>,
    /// Every stream index below this one has passed its ordering point.
    low: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct OrderState {
    /// Indexes at or above `low` that have passed.
    passed: BTreeSet<u64>,
    /// Pushes decoded and not yet answered.
    in_flight: usize,
}

impl Default for PushOrder {
    fn default() -> Self {
        Self {
            state: Mutex::new(OrderState::default()),
            low: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl PushOrder {
    /// The ordering token of the stream with QUIC index `index`: it passes when dropped.
    pub(crate) fn turn(&self, index: u64) -> Turn<'_> {
        Turn { order: self, index }
    }

    fn pass(&self, index: u64) {
        let mut state = crate::state::lock(&self.state);
        let mut low = *self.low.borrow();
        if index < low {
            return;
        }
        state.passed.insert(index);
        while state.passed.remove(&low) {
            low += 1;
        }
        drop(state);
        self.low.send_if_modified(|at| {
            let moved = *at != low;
            *at = low;
            moved
        });
    }

    /// Counts a push in flight until the slot is dropped; refuses one past the window, unless
    /// it is `next` (every stream opened before it has passed: it waits for nothing, and the
    /// pushes that wait may be waiting for it).
    fn enter(&self, next: bool) -> Result<InFlight<'_>, RequestError> {
        let mut state = crate::state::lock(&self.state);
        if state.in_flight >= MAX_PUSHES_IN_FLIGHT && !next {
            return Err(RequestError::new(
                ErrorCode::PushWindowFull,
                format!("at most {MAX_PUSHES_IN_FLIGHT} pushes in flight per connection"),
            ));
        }
        state.in_flight += 1;
        Ok(InFlight(self))
    }
}

/// A push counted in its connection's window.
struct InFlight<'a>(&'a PushOrder);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut state = crate::state::lock(&self.0.state);
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

/// One request stream's place in its connection's order; passes its ordering point when
/// dropped (or by [`Turn::pass`]).
#[derive(Debug)]
pub(crate) struct Turn<'a> {
    order: &'a PushOrder,
    index: u64,
}

impl Turn<'_> {
    /// Whether a stream opened before this one has not passed its ordering point yet.
    fn earlier_pending(&self) -> bool {
        *self.order.low.borrow() < self.index
    }

    /// Waits until every stream opened before this one has passed its ordering point, at most
    /// `limit` (a stream that stalls is cut by its own request timeout).
    async fn wait_earlier(&self, limit: Duration) {
        let mut low = self.order.low.subscribe();
        let index = self.index;
        let _ = tokio::time::timeout(limit, low.wait_for(|low| *low >= index)).await;
    }

    /// Waits until every stream opened before this one has passed its ordering point (the
    /// caller bounds the wait: its request's deadline).
    pub(crate) async fn until_next(&self) {
        let mut low = self.order.low.subscribe();
        let index = self.index;
        let _ = low.wait_for(|low| *low >= index).await;
    }

    fn pass(self) {}
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.order.pass(self.index);
    }
}

/// Appends a push (docs/PROTOCOL.md §12), one that arrived on a stream of known order (`turn`): a gap before it
/// waits for the pushes its connection sent before it.
pub(crate) async fn handle_ordered(
    shared: &Shared,
    conn: &Conn,
    req: Push,
    turn: Option<Turn<'_>>,
) -> Reply {
    let (account, device) = authorized(shared, conn)?;
    let next = turn.as_ref().is_some_and(|t| !t.earlier_pending());
    let _in_flight = conn.push_order.enter(next)?;
    let limits = &shared.config.bounds;
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
    let mut waited = false;
    let appended = loop {
        if !waited && let Some(waiting) = turn.as_ref().filter(|t| t.earlier_pending()) {
            let gap = {
                let inner = account.lock();
                let stored = inner.streams.get(&device).map_or(0, |m| m.last_seq);
                first_seq > stored + 1
            };
            if gap {
                // A push sent before this one may still fill the gap: decide once it has.
                waiting.wait_earlier(limits.request_timeout).await;
                waited = true;
                continue;
            }
        }
        let mut inner = account.lock();
        if inner.deleted {
            return Err(RequestError::account_deleted());
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
                Err(StoreError::Moved) if attempts < 2 => {
                    attempts += 1;
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
    // Appended (or found stored): the pushes sent after this one may now be decided.
    if let Some(turn) = turn {
        turn.pass();
    }
    durable(shared).await?;
    // Everything written before the commit is durable, this batch (fresh or retransmitted)
    // included.
    account.lock().made_durable(&device, last_seq);
    if appended {
        account.notify(AccountEvent::Pushed { device, last_seq });
        if let Some(waker) = &shared.waker {
            waker.pushed(account.id, device);
        }
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
    super::truncate_stream(shared, inner, account, device, meta, meta.last_seq + 1)?;
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
