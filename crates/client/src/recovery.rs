//! The recovery key after account creation: whether the relay's recovery bundle is current
//! ([`Device::recovery_status`]) and replacing the key ([`Device::rotate_recovery_key`]),
//! for a key that was lost or exposed (docs/PROTOCOL.md §6 "Recovery status and rotation").
//!
//! Devices never hold the recovery key, only its sealing material. Each recovery bundle
//! carries its roster version and epoch and that material (encrypted under the epoch's key),
//! signed by the account key ([`kith_protocol::recovery`]), so a device can check the
//! relay's bundle and learn of a rotation made on another device.

use kith_protocol::bundle::AccountBundle;
use kith_protocol::keys::{RecoveryKey, system_rng};
use kith_protocol::proto::{self, request, response};
use kith_protocol::recovery::{
    RecoveryRecord, RecoveryRecordError, inspect_recovery_record, seal_recovery_record,
};
use serde::Serialize;

use crate::device::{Device, RecoveryKeyText};
use crate::error::{ClientError, Result};
use crate::net::{RelayConnection, expect_ok};

/// How often a rotation tries again when another device rotated at the same moment.
const ROTATE_ATTEMPTS: usize = 3;

/// What state the relay's recovery bundle is in, as `kith recovery status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryState {
    /// Sealed with the current account key and the current epoch: the recovery key restores
    /// everything written so far.
    Current,
    /// Sealed for an earlier account key or epoch (by a device of an older version, or one
    /// that could not re-seal it): the recovery key restores the account only as it was then,
    /// or not at all. `kith recovery rotate` seals a current one under a new key.
    Stale,
    /// Sealed by a version that does not say what for: only the recovery key could tell.
    Unverifiable,
    /// The relay holds no recovery bundle for the account.
    Missing,
}

/// The relay's recovery bundle compared with what this device holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryStatus {
    /// The verdict.
    pub state: RecoveryState,
    /// The roster version this device holds.
    pub roster_version: u64,
    /// The epoch this device holds.
    pub epoch: u64,
    /// The roster version the bundle was sealed with, if it says (unverified when stale).
    pub sealed_roster_version: Option<u64>,
    /// The epoch the bundle was sealed for, if it says (unverified when stale).
    pub sealed_epoch: Option<u64>,
    /// Whether this device holds the sealing material of the current recovery key, so that it
    /// re-seals the bundle when it revokes a device.
    pub this_device_can_reseal: bool,
}

impl Device {
    /// Seals the recovery record of the account as this device holds it, with `sealing` or
    /// else this device's material; `None` if it holds none.
    pub(crate) fn seal_recovery_record(
        &self,
        sealing: Option<&kith_protocol::keys::RecoverySealing>,
    ) -> Result<Option<(Vec<u8>, [u8; 32])>> {
        let state = self.state();
        let Some(sealing) = sealing.or(state.recovery.as_ref()) else {
            return Ok(None);
        };
        let bundle = AccountBundle::new(
            state.account_key.clone(),
            state.epochs.clone(),
            state.roster.clone(),
        )?;
        let record = seal_recovery_record(&bundle, sealing, &mut system_rng())?;
        Ok(Some((record, *sealing.lookup_id())))
    }

    /// The account's recovery record on the relay (authenticated), `None` if it has none.
    async fn own_recovery_record(
        &self,
        connection: &RelayConnection,
    ) -> Result<Option<proto::RecoveryBundle>> {
        let answer = connection
            .request(request::Kind::GetRecoveryBundle(proto::GetRecoveryBundle {
                lookup_id: Vec::new(),
            }))
            .await;
        match answer {
            Ok(response::Kind::RecoveryBundle(found)) => Ok(Some(found)),
            Ok(_) => {
                Err(crate::net::NetError::Protocol("expected a recovery bundle".into()).into())
            }
            Err(e) if e.relay_code() == Some(proto::ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the account's record and, if the current account key signed it and it is sealed
    /// to another recovery key than this device's material (a rotation on another device),
    /// adopts that key's material. Returns the record and what it says, `None` if there is
    /// none.
    pub(crate) async fn learn_recovery_material(
        &self,
        connection: &RelayConnection,
    ) -> Result<
        Option<(
            proto::RecoveryBundle,
            std::result::Result<RecoveryRecord, RecoveryRecordError>,
        )>,
    > {
        let Some(found) = self.own_recovery_record(connection).await? else {
            return Ok(None);
        };
        let Ok(lookup_id) = <[u8; 32]>::try_from(found.lookup_id.as_slice()) else {
            return Err(crate::net::NetError::Protocol(
                "a recovery lookup id of the wrong length".into(),
            )
            .into());
        };
        let read = {
            let state = self.state();
            if found.account_id.as_slice() != state.account_id.as_bytes() {
                return Err(ClientError::RecoveryAccountMismatch);
            }
            inspect_recovery_record(
                &found.bundle,
                &state.account_id,
                &lookup_id,
                state.roster.current_account_key(),
                &state.epochs,
            )
        };
        if let Ok(RecoveryRecord::Signed(info)) = &read
            && let Some(material) = &info.material
        {
            let changed = {
                let mut state = self.state();
                let changed = state.recovery.as_ref() != Some(material);
                if changed {
                    state.recovery = Some(material.clone());
                }
                changed
            };
            if changed {
                tracing::info!("adopted the recovery key another device rotated to");
                self.persist_state()?;
                self.inner.store.flush().await?;
            }
        }
        Ok(Some((found, read)))
    }

    /// [`Device::learn_recovery_material`] on this device's connection. A relay of an older
    /// version, which does not know the request for the account's own bundle (it refuses the
    /// empty lookup id as invalid), has no rotations to learn of: that is no error.
    pub(crate) async fn refresh_recovery_material(&self) -> Result<()> {
        let mut slot = self.inner.connection.lock().await;
        let connection = self.connection(&mut slot).await?.clone();
        drop(slot);
        match self.learn_recovery_material(&connection).await {
            Err(ClientError::Net(e))
                if e.relay_code() == Some(proto::ErrorCode::InvalidRequest) =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Whether the relay's recovery bundle is current: sealed with the roster's current
    /// account key and for the current epoch, so that the recovery key restores everything
    /// written so far. Fetches the roster first; adopts the material of a recovery key that
    /// another device rotated to.
    pub async fn recovery_status(&self) -> Result<RecoveryStatus> {
        let mut slot = self.inner.connection.lock().await;
        let connection = self.connection(&mut slot).await?.clone();
        drop(slot);
        self.refresh_roster(&connection).await?;
        let learned = self.learn_recovery_material(&connection).await?;
        let (roster_version, epoch, holds) = {
            let state = self.state();
            (
                state.roster.version(),
                state.roster.epoch(),
                state.recovery.clone(),
            )
        };
        let mut status = RecoveryStatus {
            state: RecoveryState::Missing,
            roster_version,
            epoch,
            sealed_roster_version: None,
            sealed_epoch: None,
            this_device_can_reseal: false,
        };
        let Some((found, read)) = learned else {
            return Ok(status);
        };
        status.this_device_can_reseal =
            holds.is_some_and(|held| held.lookup_id().as_slice() == found.lookup_id.as_slice());
        match read {
            Ok(RecoveryRecord::Unsigned) => status.state = RecoveryState::Unverifiable,
            Ok(RecoveryRecord::Signed(info)) => {
                status.sealed_roster_version = Some(info.roster_version);
                status.sealed_epoch = Some(info.epoch);
                status.state = if info.epoch == epoch {
                    RecoveryState::Current
                } else {
                    RecoveryState::Stale
                };
            }
            Err(RecoveryRecordError::NotCurrentKey {
                roster_version,
                epoch,
            }) => {
                status.sealed_roster_version = Some(roster_version);
                status.sealed_epoch = Some(epoch);
                status.state = RecoveryState::Stale;
            }
            Err(e) => return Err(ClientError::RecoveryRecord(e)),
        }
        Ok(status)
    }

    /// Replaces the recovery key: a new one, returned to be shown once, to which the account
    /// is sealed now; the relay removes the bundle of the old key in the same step, and every
    /// device seals to the new key from then on (they learn its sealing material from the
    /// signed record), so the old key opens nothing written afterwards.
    pub async fn rotate_recovery_key(&self) -> Result<RecoveryKeyText> {
        self.sync().await?;
        let mut slot = self.inner.connection.lock().await;
        let connection = self.connection(&mut slot).await?.clone();
        drop(slot);
        let key = RecoveryKey::generate(&mut system_rng());
        let sealing = key.sealing();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let replaces = self
                .own_recovery_record(&connection)
                .await?
                .map(|found| found.lookup_id)
                .unwrap_or_default();
            let Some((record, lookup_id)) = self.seal_recovery_record(Some(&sealing))? else {
                return Err(ClientError::InvalidInput(
                    "no recovery material to seal".into(),
                ));
            };
            let put = connection
                .request(request::Kind::PutRecoveryBundle(proto::PutRecoveryBundle {
                    lookup_id: lookup_id.to_vec(),
                    bundle: record,
                    replaces_lookup_id: replaces,
                }))
                .await;
            match put {
                Err(e)
                    if e.relay_code() == Some(proto::ErrorCode::RecoveryRotated)
                        && attempt < ROTATE_ATTEMPTS =>
                {
                    // Another device rotated at the same moment: replace what it stored.
                    continue;
                }
                answer => expect_ok(answer?)?,
            }
            break;
        }
        self.state().recovery = Some(sealing);
        self.persist_state()?;
        self.inner.store.flush().await?;
        Ok(RecoveryKeyText(key.to_text()))
    }
}
