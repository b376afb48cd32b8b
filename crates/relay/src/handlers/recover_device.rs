//! `RecoverDevice`: a device restored from the recovery bundle joins its account.
//!
//! The roster it brings must verify with the stored roster as predecessor — that is, be signed
//! by the current account key, which only the recovery bundle (or a device) holds — and add the
//! device; the device then authenticates the connection exactly as in `CreateAccount`.

use kith_protocol::ids::{AccountId, DeviceId};
use kith_protocol::proto::{self, ErrorCode, RecoverDevice};
use prost::Message;

use super::{Reply, ok, roster, take_challenge, verify_roster_device};
use crate::error::RequestError;
use crate::state::{Conn, Shared, lock, pseudonym};

pub(crate) async fn handle(shared: &Shared, conn: &Conn, req: RecoverDevice) -> Reply {
    let nonce = take_challenge(shared, conn)?;
    let account_id = claimed_account(&req.roster)?;
    let account = shared
        .accounts
        .get(shared.store.as_ref(), &account_id)?
        .ok_or_else(|| RequestError::new(ErrorCode::UnknownAccount, "no such account"))?;
    let device = DeviceId::from_slice(&req.device_id)
        .map_err(|_| RequestError::invalid("device_id must be 16 bytes"))?;
    roster::replace(shared, &account, &req.roster, |next| {
        if account.roster().device(&device).is_some() {
            return Err(RequestError::invalid("the device is already in the roster"));
        }
        verify_roster_device(shared, conn, next, &nonce, &device, &req.signature)
    })
    .await?;
    *lock(&conn.device) = Some((account_id, device));
    tracing::info!(account = %pseudonym(account_id.as_bytes()), "device recovered");
    ok()
}

/// The account a roster names, read before verification to find the stored predecessor.
fn claimed_account(bytes: &[u8]) -> Result<AccountId, RequestError> {
    let invalid = |_| RequestError::new(ErrorCode::RosterInvalid, "roster does not decode");
    let signed = proto::SignedRoster::decode(bytes).map_err(invalid)?;
    let body = proto::RosterBody::decode(signed.body.as_slice()).map_err(invalid)?;
    AccountId::from_slice(&body.account_id)
        .map_err(|_| RequestError::new(ErrorCode::RosterInvalid, "account id must be 32 bytes"))
}
