//! `PutRoster` and `GetRoster`.
//!
//! A new roster must have a greater version (else `ROSTER_ROLLBACK`) and verify with the stored
//! roster as its predecessor: signed by the current account key, or by a rotation signed by it
//! (else `ROSTER_INVALID`). Verification runs outside the account lock; the swap re-checks that
//! the predecessor is still current.
//!
//! A roster that removes a device ends that device's stream at its `final_seq`. The swap
//! happens under the same account lock as every push, and is refused with `STREAM_AHEAD` if the
//! removed device's stream already holds an envelope past `final_seq` (its signer saw less than
//! the relay stored). The device is then fenced for [`FENCE`]: its pushes are refused with
//! `DEVICE_FENCED`, so the signer can pull the stream to its end and sign again without racing
//! a device that keeps pushing. Once the roster is swapped, the device's pushes are refused as
//! removed: no envelope of a removed device past `final_seq` is ever stored (§4).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kith_protocol::limits::MAX_ROSTER_BYTES;
use kith_protocol::proto::{self, ErrorCode, PutRoster, RosterResponse, response};
use prost::Message;

use super::{Reply, authorized, durable, ok, respond};
use crate::error::RequestError;
use crate::state::{Account, Conn, Shared, pseudonym};
use crate::store::StoreError;
use kith_protocol::roster::VerifiedRoster;

/// How long a device stays fenced after a roster removing it was refused with `STREAM_AHEAD`:
/// ample for its signer to pull and sign again, short enough that a signer that gave up does
/// not keep the device from pushing for long.
pub(crate) const FENCE: Duration = Duration::from_secs(60);

/// The version a signed roster claims, read before verifying so a rollback gets its own code.
fn claimed_version(bytes: &[u8]) -> Result<u64, RequestError> {
    let invalid = |_| RequestError::new(ErrorCode::RosterInvalid, "roster does not decode");
    let signed = proto::SignedRoster::decode(bytes).map_err(invalid)?;
    Ok(proto::RosterBody::decode(signed.body.as_slice())
        .map_err(invalid)?
        .version)
}

pub(crate) async fn put(shared: &Shared, conn: &Conn, req: PutRoster) -> Reply {
    let (account, _device) = authorized(shared, conn)?;
    replace(shared, &account, &req.roster, |_| Ok(())).await?;
    ok()
}

/// Replaces the account's roster with `bytes` if it verifies with the stored roster as its
/// predecessor and passes `check`; durable when it returns.
pub(crate) async fn replace(
    shared: &Shared,
    account: &Account,
    bytes: &[u8],
    check: impl FnOnce(&VerifiedRoster) -> Result<(), RequestError>,
) -> Result<Arc<VerifiedRoster>, RequestError> {
    if bytes.len() > MAX_ROSTER_BYTES {
        return Err(RequestError::new(
            ErrorCode::RosterInvalid,
            "roster too large",
        ));
    }
    let version = claimed_version(bytes)?;
    let current = account.roster();
    if version <= current.version() {
        return Err(RequestError::new(
            ErrorCode::RosterRollback,
            format!("version must exceed the stored {}", current.version()),
        ));
    }
    let next = VerifiedRoster::verify(bytes, Some(&account.id), Some(&current))
        .map_err(|e| RequestError::new(ErrorCode::RosterInvalid, e.to_string()))?;
    let (max_devices, suspended) = {
        let inner = account.lock();
        (
            inner.max_devices(&shared.config.bounds),
            inner.settings.suspended,
        )
    };
    if suspended {
        return Err(super::suspended());
    }
    if next.device_count() > max_devices as usize {
        return Err(RequestError::new(
            ErrorCode::TooManyDevices,
            format!("the account may have at most {max_devices} devices"),
        ));
    }
    check(&next)?;
    let next = Arc::new(next);
    {
        let mut inner = account.lock();
        if inner.deleted {
            return Err(RequestError::account_deleted());
        }
        if !Arc::ptr_eq(&inner.roster, &current) {
            return Err(RequestError::new(
                ErrorCode::RosterRollback,
                "the roster changed meanwhile; fetch it and retry",
            ));
        }
        // Devices this roster removes must not have pushed past their final_seq.
        for gone in next
            .removed()
            .filter(|gone| !current.is_removed(&gone.device_id()))
        {
            let device = gone.device_id();
            let head = inner.streams.get(&device).map_or(0, |meta| meta.last_seq);
            if head > gone.final_seq() {
                inner.fenced.insert(device, Instant::now() + FENCE);
                return Err(RequestError::new(
                    ErrorCode::StreamAhead,
                    format!(
                        "a removed device's stream is at seq {head}, past its final_seq {}; \
                         pull it and sign the roster again",
                        gone.final_seq()
                    ),
                ));
            }
        }
        let final_seqs: Vec<_> = next
            .removed()
            .filter(|gone| !current.is_removed(&gone.device_id()))
            .map(|gone| (gone.device_id(), gone.final_seq()))
            .collect();
        match shared.store.put_roster_checked(
            &account.id,
            next.encoded(),
            next.version(),
            &final_seqs,
        ) {
            Ok(()) => {}
            Err(StoreError::Moved) => {
                // Another relay on the same database changed the roster or a stream first.
                drop(inner);
                shared.accounts.reload(shared.store.as_ref(), account)?;
                return Err(RequestError::new(
                    ErrorCode::RosterRollback,
                    "the roster changed meanwhile; fetch it and retry",
                ));
            }
            Err(err) => return Err(RequestError::storage(err)),
        }
        // A removed device is never woken again (docs/PROTOCOL.md §12.1).
        for (device, _) in &final_seqs {
            shared
                .store
                .remove_push_target(&account.id, device)
                .map_err(RequestError::storage)?;
        }
        inner.roster = next.clone();
        // A removed device is refused as removed from now on; its fence has done its work.
        inner.fenced.retain(|device, _| !next.is_removed(device));
    }
    durable(shared).await?;
    {
        let mut inner = account.lock();
        inner.roster_durable = inner.roster_durable.max(next.version());
    }
    tracing::info!(account = %pseudonym(account.id.as_bytes()), version, "roster updated");
    Ok(next)
}

/// The account's current roster, once it is durable. A roster still waiting for its group
/// commit could be lost in a crash, and a device that had seen it would then be served an
/// older one: a rollback it must refuse. So serving it waits for that commit (in practice a
/// few milliseconds, and only right after a roster change).
pub(crate) async fn durable_roster(
    shared: &Shared,
    account: &Account,
) -> Result<Arc<VerifiedRoster>, RequestError> {
    let (roster, durable_version) = {
        let inner = account.lock();
        (inner.roster.clone(), inner.roster_durable)
    };
    if roster.version() > durable_version {
        // The roster's write returned before it became the account's roster, so before this.
        durable(shared).await?;
        let mut inner = account.lock();
        inner.roster_durable = inner.roster_durable.max(roster.version());
    }
    Ok(roster)
}

pub(crate) async fn get(shared: &Shared, conn: &Conn) -> Reply {
    let (account, _device) = authorized(shared, conn)?;
    let roster = durable_roster(shared, &account).await?;
    respond(response::Kind::Roster(RosterResponse {
        roster: roster.encoded().to_vec(),
    }))
}
