//! Healing a relay that is behind (docs/PROTOCOL.md §13.1). The relay is a cache of what the
//! devices hold: a relay restored from an old backup, or one that lost its data, is detected on
//! the next sync and restored from this device's verified copies — its own stream byte for byte
//! (kept since its last snapshot), the roster, the sealed epoch keys and the recovery bundle —
//! and an account the relay no longer knows is created again from the trusted roster.
//!
//! Kept apart from the sync engine's verification path (`sync.rs`): these functions only
//! compare what the relay reports with what this device knows it acknowledged, and upload.

use std::fmt;

use kith_protocol::DeviceId;
use kith_protocol::epoch;
use kith_protocol::keys::system_rng;
use kith_protocol::proto::{self, ErrorCode, request, response};
use kith_protocol::roster::VerifiedRoster;

use crate::device::{Device, meta};
use crate::error::{ClientError, Result};
use crate::net::{NetError, RelayConnection, expect_ok};
use crate::store::TreeName;

/// Envelopes per push request while re-uploading (the relay's default batch limit is larger).
const HEAL_ENVELOPES_PER_PUSH: usize = 64;
/// Envelope bytes per push request while re-uploading.
const HEAL_BYTES_PER_PUSH: usize = 2 * 1024 * 1024;
/// Sealed epoch keys per `PutSealedEpochKeys` while restoring them.
const SEALED_KEYS_PER_PUT: usize = 16;

/// What a sync found missing on the relay and restored. Never empty: a sync that found the
/// relay complete reports `None` ([`crate::SyncReport::healed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayHeal {
    /// The relay did not know the account (it lost its data): it was created again from the
    /// roster this device trusts.
    pub account_recreated: bool,
    /// Seqs `(first, last)` of this device's stream that the relay had acknowledged and lost.
    pub lost_envelopes: Option<(u64, u64)>,
    /// How they were restored.
    pub restored_by: Option<StreamRestore>,
    /// Roster versions `(first, last)` the relay had lost; the trusted roster was stored again.
    pub lost_roster_versions: Option<(u64, u64)>,
    /// Sealed epoch keys stored again (for every present device).
    pub sealed_keys_restored: usize,
    /// Whether the recovery bundle was sealed and stored again.
    pub recovery_bundle_restored: bool,
    /// Whether the relay held envelopes of this device from before its last compaction, and
    /// was asked to drop them again.
    pub compaction_restored: bool,
    /// Streams of removed devices that the relay holds only in part (it lost their tail).
    /// Not an error: this device merged that tail already, and a removed device cannot write
    /// it again (docs/PROTOCOL.md §13.1).
    pub cut_removed_streams: Vec<CutStream>,
    /// Whether this device wrote a snapshot of everything it merged, because the relay lost
    /// the tail of a removed device's stream (devices linked later get it from the snapshot).
    pub snapshot_written: bool,
    /// `kith relay move` left a signed notice on the old relay: the other devices follow the
    /// account to the new relay at their next sync there (docs/PROTOCOL.md §13.1).
    pub move_notice_left: bool,
}

/// Longest relay address a move notice may name.
const MAX_RELAY_ADDRESS: usize = 255;

/// A notice that another device moved the account to another relay, read from the relay this
/// device synced with ([`crate::SyncReport::relay_moved`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayMove {
    /// The device that moved the account.
    pub by: DeviceId,
    /// The new relay's address (`host:port`).
    pub address: String,
    /// The new relay's certificate pin; `None` when it is trusted as the old one was (CA
    /// roots).
    pub cert_sha256: Option<[u8; 32]>,
    /// Whether this device now syncs with the new relay (set by the sync that read it).
    pub followed: bool,
}

impl RelayMove {
    /// Where to sync from now on: the new address, with its pin, or with `current`'s CA roots.
    pub(crate) fn target(&self, current: &crate::net::RelayTarget) -> crate::net::RelayTarget {
        crate::net::RelayTarget {
            address: self.address.clone(),
            trust: match self.cert_sha256 {
                Some(pin) => crate::net::RelayTrust::PinnedSha256(pin),
                None => current.trust.clone(),
            },
        }
    }
}

impl fmt::Display for RelayMove {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device {} moved the account to {}",
            self.by, self.address
        )?;
        if let Some(pin) = self.cert_sha256 {
            write!(f, " (certificate sha256 {})", hex::encode(pin))?;
        }
        if self.followed {
            f.write_str("; this device syncs there from now on")?;
        }
        Ok(())
    }
}

/// The pin of a target (empty when trusted by CA roots), as a move notice carries it.
fn pin_bytes(target: &crate::net::RelayTarget) -> Vec<u8> {
    match &target.trust {
        crate::net::RelayTrust::PinnedSha256(pin) => pin.to_vec(),
        // The key served now; the next key of a pin set is the operator's to announce again.
        crate::net::RelayTrust::PinSet(pins) => {
            pins.first().map(|p| p.to_vec()).unwrap_or_default()
        }
        crate::net::RelayTrust::CaRoots(_) | crate::net::RelayTrust::SystemRoots => Vec::new(),
    }
}

/// How this device restored the part of its own stream that the relay lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRestore {
    /// The same envelopes, byte for byte, at the same seqs.
    ByteForByte {
        /// Envelopes uploaded.
        envelopes: u64,
    },
    /// The stream restarted at this device's last snapshot (kept byte for byte since), the
    /// relay dropping what it still held before it (docs/PROTOCOL.md §9).
    FromLastSnapshot {
        /// The snapshot's first seq.
        at: u64,
        /// Envelopes uploaded.
        envelopes: u64,
    },
    /// This device no longer held the lost envelopes (they were acknowledged before it kept
    /// its own stream): it wrote a new snapshot of its whole state and restarted its stream
    /// there.
    NewSnapshot {
        /// The snapshot's first seq.
        at: u64,
        /// Envelopes uploaded.
        envelopes: u64,
    },
}

/// A removed device's stream that the relay holds only up to `relay_last`, while this device
/// merged it up to `merged`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutStream {
    /// The removed device.
    pub device: DeviceId,
    /// The last seq the relay holds of it (0: none).
    pub relay_last: u64,
    /// The last seq this device verified and merged.
    pub merged: u64,
}

impl RelayHeal {
    fn is_empty(&self) -> bool {
        *self == RelayHeal::default()
    }
}

impl fmt::Display for RelayHeal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.account_recreated {
            parts.push("the relay did not know this account: created it again".into());
        }
        if let Some((first, last)) = self.lost_envelopes {
            let n = last - first + 1;
            let what = if n == 1 {
                format!("the relay lost 1 of this device's envelopes (seq {first})")
            } else {
                format!("the relay lost {n} of this device's envelopes (seq {first}\u{2013}{last})")
            };
            let them = if n == 1 { "it" } else { "them" };
            parts.push(match self.restored_by {
                Some(StreamRestore::ByteForByte { .. }) | None => {
                    format!("{what}; restored {them} byte for byte")
                }
                Some(StreamRestore::FromLastSnapshot { at, envelopes }) => format!(
                    "{what}; restored the stream from this device's last snapshot (seq {at}, {envelopes} envelopes)"
                ),
                Some(StreamRestore::NewSnapshot { at, envelopes }) => format!(
                    "{what}; wrote a snapshot at seq {at} in their place ({envelopes} envelopes)"
                ),
            });
        }
        if let Some((first, last)) = self.lost_roster_versions {
            parts.push(if first == last {
                format!("the relay lost roster version {first}; stored it again")
            } else {
                format!("the relay lost roster versions {first}\u{2013}{last}; stored them again")
            });
        }
        if self.sealed_keys_restored > 0 {
            parts.push(format!(
                "stored {} sealed epoch keys again",
                self.sealed_keys_restored
            ));
        }
        if self.recovery_bundle_restored {
            parts.push("stored the recovery bundle again".into());
        }
        if self.compaction_restored {
            parts.push("dropped this device's history before its last snapshot again".into());
        }
        for cut in &self.cut_removed_streams {
            parts.push(format!(
                "the relay holds removed device {} only up to seq {} (this device merged it to {}; nothing is missing here)",
                cut.device, cut.relay_last, cut.merged
            ));
        }
        if self.snapshot_written {
            parts.push("wrote a snapshot so that devices linked later get that tail".into());
        }
        if self.move_notice_left {
            parts.push(
                "left a signed notice on the old relay: the other devices follow at their next \
                 sync there"
                    .into(),
            );
        }
        f.write_str(&parts.join("; "))
    }
}

/// Key of this device's own envelope `seq` in the meta tree, where releases before 0.2 kept it
/// once the relay acknowledged it (until a compaction made it unnecessary); read still, no
/// longer written (acknowledged envelopes now stay in the outbox).
#[cfg(test)]
pub(crate) fn sent_key(seq: u64) -> Vec<u8> {
    let mut key = meta::SENT_PREFIX.to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn seq_of_sent_key(key: &[u8]) -> Option<u64> {
    let bytes = key.strip_prefix(meta::SENT_PREFIX)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

pub(crate) fn read_u64(value: Option<Vec<u8>>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes)
}

/// What the relay reports of one stream.
#[derive(Debug, Clone, Copy, Default)]
struct RelayStream {
    first_seq: u64,
    last_seq: u64,
}

impl Device {
    /// The highest seq of this device the relay acknowledged.
    pub(crate) fn acked_seq(&self) -> Result<u64> {
        Ok(read_u64(self.inner.store.get(TreeName::Meta, meta::ACKED)?))
    }

    /// Records that the relay acknowledged this device's envelopes up to `last_seq`: those in
    /// the outbox are from then on the copies kept for healing, not envelopes to push. Never
    /// moves `acked` back (another process sharing the store may have recorded more).
    pub(crate) fn record_acked(&self, last_seq: u64) -> Result<()> {
        Ok(self.inner.store.transaction(|tx| {
            let acked = read_u64(tx.get(TreeName::Meta, meta::ACKED)?);
            if last_seq > acked {
                tx.put(TreeName::Meta, meta::ACKED, &last_seq.to_be_bytes())?;
            }
            Ok::<_, crate::store::LocalStoreError>(())
        })?)
    }

    /// Called by the roster refresh with the roster the relay served: if it is older than the
    /// trusted one and the trusted one extends it, the relay lost roster versions (an old
    /// backup); the trusted roster is stored again (the relay checks it against what it holds)
    /// and the lost versions are returned. A served roster that the trusted one does not
    /// extend is an error (a fork), never healed.
    pub(crate) async fn restore_roster_if_behind(
        &self,
        connection: &RelayConnection,
        served: &[u8],
    ) -> Result<Option<(u64, u64)>> {
        let (account, ours) = {
            let state = self.state();
            if served == state.roster.encoded() {
                return Ok(None);
            }
            (state.account_id, state.roster.clone())
        };
        let served = VerifiedRoster::verify(served, Some(&account), None)?;
        if served.version() >= ours.version() {
            return Ok(None);
        }
        // The trusted roster must extend the served one (same key chain, versions increasing,
        // removals kept): otherwise the relay serves a fork, reported as the roster error.
        VerifiedRoster::verify(ours.encoded(), Some(&account), Some(&served))?;
        tracing::warn!(
            relay = served.version(),
            trusted = ours.version(),
            "the relay serves an older roster than this device trusts; storing the trusted one again"
        );
        expect_ok(
            connection
                .request(request::Kind::PutRoster(proto::PutRoster {
                    roster: ours.encoded().to_vec(),
                }))
                .await?,
        )?;
        Ok(Some((served.version() + 1, ours.version())))
    }

    /// Asks `connection`'s relay to create this account with the roster this device trusts,
    /// authenticating as this device.
    async fn create_account_on(
        &self,
        connection: &RelayConnection,
        registration_token: Option<String>,
    ) -> std::result::Result<(), NetError> {
        let (account, roster) = {
            let state = self.state();
            (state.account_id, state.roster.encoded().to_vec())
        };
        connection
            .create_account(
                &account,
                roster,
                &self.inner.secrets.signing_key,
                registration_token,
            )
            .await
    }

    /// Creates the account again on a relay that does not know it (it lost its data), from the
    /// roster this device trusts, and authenticates the connection. `registration_token` is
    /// needed on a relay that admits new accounts by token only. A relay that refuses because
    /// the account was deleted there is [`ClientError::AccountDeleted`].
    pub(crate) async fn recreate_account(
        &self,
        registration_token: Option<String>,
    ) -> Result<RelayConnection> {
        let connection = RelayConnection::connect(&self.relay()).await?;
        match self
            .create_account_on(&connection, registration_token)
            .await
        {
            Ok(()) => {}
            Err(e) if e.relay_code() == Some(ErrorCode::UnknownAccount) => {
                return Err(ClientError::AccountDeleted);
            }
            Err(e) if e.relay_code() == Some(ErrorCode::AccountExists) => {
                // Another device of the account re-created it meanwhile: authenticate.
                let connection = RelayConnection::connect(&self.relay()).await?;
                connection
                    .authenticate(&self.account_id(), &self.inner.secrets.signing_key)
                    .await?;
                return Ok(connection);
            }
            Err(e) if e.relay_code() == Some(ErrorCode::RegistrationClosed) => {
                return Err(ClientError::RebuildNeedsToken);
            }
            Err(e) => return Err(e.into()),
        }
        tracing::warn!(
            "the relay did not know this account; created it again from the trusted roster"
        );
        Ok(connection)
    }

    /// Re-creates this account on a relay that lost it, with a registration token from the
    /// relay's operator (`kith-relay token create`) when the relay admits new accounts by token
    /// only, and heals it. A sync does this by itself on a relay with open registration.
    pub async fn rebuild_account(&self, registration_token: Option<String>) -> Result<RelayHeal> {
        let mut slot = self.inner.connection.lock().await;
        *slot = None;
        let connection = match self.connection(&mut slot).await {
            Ok(c) => c.clone(),
            Err(e) if e.may_be_lost_account() => {
                let c = self.recreate_account(registration_token).await?;
                *slot = Some(c.clone());
                let mut heal = self
                    .heal_relay(&c, None, true, None)
                    .await?
                    .unwrap_or_default();
                heal.account_recreated = true;
                return Ok(heal);
            }
            Err(e) => return Err(e),
        };
        Ok(self
            .heal_relay(&connection, None, false, None)
            .await?
            .unwrap_or_default())
    }

    /// Compares what the relay holds with what this device knows it acknowledged, and
    /// restores what is missing: this device's own stream (byte for byte, from its last
    /// snapshot, or with a new snapshot), and — when the relay lost roster versions or the
    /// whole account — the sealed epoch keys of every present device and the recovery bundle.
    /// Runs before this device pushes (a relay that is behind would refuse the push with a
    /// gap). `None` when nothing was missing. With `sealing` (pending operations being sealed
    /// meanwhile, [`Device::start_sealing`]), a snapshot it seals comes after what that seals.
    pub(crate) async fn heal_relay(
        &self,
        connection: &RelayConnection,
        lost_roster_versions: Option<(u64, u64)>,
        recreated: bool,
        sealing: Option<&mut crate::sync::Sealing>,
    ) -> Result<Option<RelayHeal>> {
        let mut heal = RelayHeal {
            account_recreated: recreated,
            lost_roster_versions,
            ..RelayHeal::default()
        };
        let streams = self.relay_streams(connection).await?;
        let own = streams
            .iter()
            .find(|(d, _)| *d == self.inner.device_id)
            .map(|(_, s)| *s)
            .unwrap_or_default();
        let acked = self.acked_seq()?;
        if own.last_seq < acked {
            heal.lost_envelopes = Some((own.last_seq + 1, acked));
            tracing::warn!(
                relay = own.last_seq,
                acked,
                "the relay lost envelopes of this device it had acknowledged; restoring them"
            );
            heal.restored_by = Some(self.restore_own_stream(connection, own.last_seq).await?);
        }
        let snapshot_at = read_u64(self.inner.store.get(TreeName::Meta, meta::SNAPSHOT_AT)?);
        let own_first = if heal.lost_envelopes.is_some() {
            self.relay_streams(connection)
                .await?
                .iter()
                .find(|(d, _)| *d == self.inner.device_id)
                .map_or(0, |(_, s)| s.first_seq)
        } else {
            own.first_seq
        };
        if snapshot_at > 1 && own_first != 0 && own_first < snapshot_at {
            // A backup from before the last compaction: drop that history again.
            expect_ok(
                connection
                    .request(request::Kind::TruncateStream(proto::TruncateStream {
                        before_seq: snapshot_at,
                    }))
                    .await?,
            )?;
            heal.compaction_restored = true;
        }
        self.note_cut_removed_streams(&streams, &mut heal)?;
        if !heal.cut_removed_streams.is_empty() {
            // Devices linked later can no longer pull that tail from the relay: a snapshot of
            // everything this device merged covers it (docs/PROTOCOL.md §13.1). It is pushed
            // with the rest of the outbox, after what is being sealed.
            if let Some(sealing) = sealing {
                sealing.finish().await?;
            }
            self.seal_full_snapshot_after_outbox()?;
            heal.snapshot_written = true;
        }
        if recreated || lost_roster_versions.is_some() {
            heal.sealed_keys_restored = self.restore_sealed_epoch_keys(connection).await?;
            heal.recovery_bundle_restored = self.put_recovery_bundle(connection).await?;
        }
        Ok((!heal.is_empty()).then_some(heal))
    }

    /// Finds the streams of removed devices that the relay holds only in part, and reports
    /// each cut once (remembered in the meta tree, so that later syncs stay quiet about it).
    fn note_cut_removed_streams(
        &self,
        streams: &[(DeviceId, RelayStream)],
        heal: &mut RelayHeal,
    ) -> Result<()> {
        for device in self.removed_devices() {
            let relay_last = streams
                .iter()
                .find(|(d, _)| *d == device)
                .map_or(0, |(_, s)| s.last_seq);
            let Some((merged, _)) = self.cursor_of(&device)? else {
                continue;
            };
            if relay_last >= merged {
                continue;
            }
            let mut key = meta::CUT_PREFIX.to_vec();
            key.extend_from_slice(device.as_bytes());
            let noted = self.inner.store.get(TreeName::Meta, &key)?;
            if noted.is_some_and(|v| v == relay_last.to_be_bytes()) {
                continue;
            }
            tracing::info!(
                relay_last,
                merged,
                "the relay holds a removed device's stream only in part; not an error"
            );
            self.inner
                .store
                .put(TreeName::Meta, &key, &relay_last.to_be_bytes())?;
            heal.cut_removed_streams.push(CutStream {
                device,
                relay_last,
                merged,
            });
        }
        Ok(())
    }

    fn removed_devices(&self) -> Vec<DeviceId> {
        self.state()
            .roster
            .removed()
            .map(|r| r.device_id())
            .collect()
    }

    /// Every stream the relay holds of this account, as a pull reports them (`first_seq`,
    /// `last_seq`), asking for no envelope.
    async fn relay_streams(
        &self,
        connection: &RelayConnection,
    ) -> Result<Vec<(DeviceId, RelayStream)>> {
        let mut devices: Vec<DeviceId> = {
            let state = self.state();
            state
                .roster
                .devices()
                .map(|d| d.device_id())
                .chain(state.roster.removed().map(|r| r.device_id()))
                .collect()
        };
        if !devices.contains(&self.inner.device_id) {
            devices.push(self.inner.device_id);
        }
        let cursors = devices
            .iter()
            .map(|d| proto::Cursor {
                device_id: d.as_bytes().to_vec(),
                after_seq: u64::MAX,
            })
            .collect();
        let answer = connection
            .request(request::Kind::Pull(proto::Pull {
                cursors,
                max_envelopes: 1,
                max_bytes: 0,
            }))
            .await?;
        let response::Kind::Pull(page) = answer else {
            return Err(NetError::Protocol("expected a pull page".into()).into());
        };
        Ok(page
            .streams
            .iter()
            .filter_map(|s| {
                Some((
                    DeviceId::from_slice(&s.device_id).ok()?,
                    RelayStream {
                        first_seq: s.first_seq,
                        last_seq: s.last_seq,
                    },
                ))
            })
            .collect())
    }

    /// Uploads this device's own envelopes after `relay_last` again: byte for byte when it
    /// kept them all, from its last snapshot when the relay lost more than that, or else with a
    /// new snapshot of its whole state.
    async fn restore_own_stream(
        &self,
        connection: &RelayConnection,
        relay_last: u64,
    ) -> Result<StreamRestore> {
        let acked = self.acked_seq()?;
        let kept = self.kept_envelopes()?;
        let contiguous = kept.windows(2).all(|pair| pair[1].0 == pair[0].0 + 1)
            && kept.last().is_some_and(|(seq, _)| *seq == acked);
        let snapshot_at = read_u64(self.inner.store.get(TreeName::Meta, meta::SNAPSHOT_AT)?);
        let first_kept = kept.first().map(|(seq, _)| *seq);
        if contiguous && first_kept.is_some_and(|first| first <= relay_last + 1) {
            let upload: Vec<_> = kept.into_iter().filter(|(s, _)| *s > relay_last).collect();
            let envelopes = upload.len() as u64;
            self.push_kept(connection, upload).await?;
            return Ok(StreamRestore::ByteForByte { envelopes });
        }
        if contiguous && first_kept == Some(snapshot_at) {
            let envelopes = kept.len() as u64;
            self.push_kept(connection, kept).await?;
            return Ok(StreamRestore::FromLastSnapshot {
                at: snapshot_at,
                envelopes,
            });
        }
        // Nothing kept covers the loss (envelopes acknowledged before this release kept them):
        // a new snapshot of everything this device holds takes their place. Envelopes still in
        // the outbox precede it and are covered by it too.
        let (at, envelopes) = self.seal_full_snapshot_after_outbox()?;
        // Dropped before the push: were they pushed after a crash, the relay (restarted at the
        // snapshot) would refuse them as conflicting with what it truncated.
        self.inner.store.transaction(|tx| {
            for key in tx.keys(TreeName::Outbox)? {
                let seq = u64::from_be_bytes(key.as_slice().try_into().unwrap_or_default());
                if seq < at {
                    tx.remove(TreeName::Outbox, &key)?;
                }
            }
            Ok::<_, crate::store::LocalStoreError>(())
        })?;
        self.push_kept(connection, self.outbox_from(at)?).await?;
        self.forget_sent_before(at)?;
        Ok(StreamRestore::NewSnapshot {
            at,
            envelopes: envelopes as u64,
        })
    }

    /// This device's own envelopes kept since its last snapshot, by seq: the acknowledged ones
    /// in the outbox, and those earlier releases moved to `sent/<seq>` once acknowledged.
    fn kept_envelopes(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        let acked = self.acked_seq()?;
        let mut kept = Vec::new();
        for item in self.inner.store.scan(TreeName::Outbox) {
            let (key, envelope) = item?;
            let Ok(seq) = <[u8; 8]>::try_from(key.as_slice()).map(u64::from_be_bytes) else {
                continue;
            };
            if seq > acked {
                break;
            }
            kept.push((seq, envelope));
        }
        for item in self
            .inner
            .store
            .scan_prefix(TreeName::Meta, meta::SENT_PREFIX)
        {
            let (key, envelope) = item?;
            if let Some(seq) = seq_of_sent_key(&key) {
                kept.push((seq, envelope));
            }
        }
        kept.sort_by_key(|(seq, _)| *seq);
        // A seq in both places (a store shared with an earlier release) is one envelope.
        kept.dedup_by_key(|(seq, _)| *seq);
        Ok(kept)
    }

    /// Outbox envelopes from `at` on (a new snapshot sealed there).
    fn outbox_from(&self, at: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        // Read from `at` on: the outbox also keeps every acknowledged envelope before it.
        for item in self
            .inner
            .store
            .scan_from(TreeName::Outbox, &at.to_be_bytes())
        {
            let (key, envelope) = item?;
            let seq = u64::from_be_bytes(key.as_slice().try_into().unwrap_or_default());
            if seq >= at {
                out.push((seq, envelope));
            }
        }
        Ok(out)
    }

    /// Pushes kept envelopes in order, in bounded batches, and records them acknowledged.
    async fn push_kept(
        &self,
        connection: &RelayConnection,
        envelopes: Vec<(u64, Vec<u8>)>,
    ) -> Result<()> {
        let mut rest = envelopes.as_slice();
        while !rest.is_empty() {
            let mut take = 0;
            let mut bytes = 0;
            while take < rest.len()
                && take < HEAL_ENVELOPES_PER_PUSH
                && (take == 0 || bytes + rest[take].1.len() <= HEAL_BYTES_PER_PUSH)
            {
                bytes += rest[take].1.len();
                take += 1;
            }
            let (batch, tail) = rest.split_at(take);
            let last_seq = batch.last().map_or(0, |(seq, _)| *seq);
            let answer = connection
                .request(request::Kind::Push(proto::Push {
                    envelopes: batch.iter().map(|(_, e)| e.clone()).collect(),
                }))
                .await?;
            let response::Kind::PushAck(ack) = answer else {
                return Err(NetError::Protocol("expected a push ack".into()).into());
            };
            if ack.last_seq < last_seq {
                return Err(NetError::Protocol(format!(
                    "relay acknowledged seq {} of {}",
                    ack.last_seq, last_seq
                ))
                .into());
            }
            // Each is kept where it is (in the outbox, or `sent/<seq>` from an earlier
            // release): acknowledged, it is a kept copy either way.
            self.record_acked(last_seq)?;
            rest = tail;
        }
        Ok(())
    }

    /// Seals every epoch secret this device holds to every present device (from the epoch it
    /// was added in), as the relay lost them with the roster versions or the account; returns
    /// how many were stored. Each is opened and confirmed by its recipient as any sealed key.
    async fn restore_sealed_epoch_keys(&self, connection: &RelayConnection) -> Result<usize> {
        let sealed: Vec<Vec<u8>> = {
            let state = self.state();
            let mut rng = system_rng();
            let mut sealed = Vec::new();
            for device in state.roster.devices() {
                for (number, secret) in state.epochs.iter() {
                    if number < device.added_in_epoch() || number > state.roster.epoch() {
                        continue;
                    }
                    sealed.push(epoch::seal_epoch_key(
                        &state.account_id,
                        &device.device_id(),
                        device.agreement_key(),
                        number,
                        secret,
                        &mut rng,
                    ));
                }
            }
            sealed
        };
        let put = |keys: Vec<Vec<u8>>| async move {
            connection
                .request(request::Kind::PutSealedEpochKeys(
                    proto::PutSealedEpochKeys {
                        keys,
                        staged_account_key: Vec::new(),
                    },
                ))
                .await
                .and_then(expect_ok)
        };
        let slot_exists = |e: &crate::net::NetError| e.relay_code() == Some(ErrorCode::SlotExists);
        let mut count = 0;
        for chunk in sealed.chunks(SEALED_KEYS_PER_PUT) {
            match put(chunk.to_vec()).await {
                Ok(()) => count += chunk.len(),
                // The relay still holds another device's key for one of these slots, which only
                // a holder of that epoch's account key may replace (§5): it did not lose that
                // one. Store the others one by one.
                Err(e) if slot_exists(&e) => {
                    for key in chunk {
                        match put(vec![key.clone()]).await {
                            Ok(()) => count += 1,
                            Err(e) if slot_exists(&e) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(count)
    }

    /// Moves the account to another relay (`kith relay move`): syncs with the current relay
    /// (if it answers), creates the account on `relay` from the trusted roster (or joins it
    /// there if another device moved first), uploads this device's stream, the sealed epoch keys
    /// of every present device and the recovery bundle, then a snapshot of everything this
    /// device merged (so nothing of a device that never moves is missing there), and from then
    /// on syncs with `relay`. Other devices follow with [`Device::set_relay`].
    pub async fn move_to_relay(
        &self,
        relay: crate::net::RelayTarget,
        registration_token: Option<String>,
    ) -> Result<RelayHeal> {
        if let Err(e) = self.sync().await {
            if !e.is_transient() {
                return Err(e);
            }
            tracing::warn!(error = %e, "the current relay cannot be reached; moving from this device's copies");
        }
        let mut slot = self.inner.connection.lock().await;
        // The old relay's connection, if the sync above reached it.
        let old_connection = slot.take();
        let connection = RelayConnection::connect(&relay).await?;
        let created = match self
            .create_account_on(&connection, registration_token)
            .await
        {
            Ok(()) => true,
            Err(e) if e.relay_code() == Some(ErrorCode::AccountExists) => false,
            Err(e) if e.relay_code() == Some(ErrorCode::RegistrationClosed) => {
                return Err(ClientError::RebuildNeedsToken);
            }
            Err(e) => return Err(e.into()),
        };
        let connection = if created {
            connection
        } else {
            // Another device moved first: authenticate there (a new connection, a fresh
            // challenge) and store the trusted roster if that relay's is older.
            let connection = RelayConnection::connect(&relay).await?;
            connection
                .authenticate(&self.account_id(), &self.inner.secrets.signing_key)
                .await?;
            connection
        };
        let lost = if created {
            None
        } else {
            let answer = connection
                .request(request::Kind::GetRoster(proto::GetRoster {}))
                .await?;
            let response::Kind::Roster(served) = answer else {
                return Err(NetError::Protocol("expected a roster".into()).into());
            };
            self.restore_roster_if_behind(&connection, &served.roster)
                .await?
        };
        let mut heal = self
            .heal_relay(&connection, lost, created, None)
            .await?
            .unwrap_or_default();
        heal.account_recreated = created;
        if !created && lost.is_none() {
            // The relay had the account: the other device restored keys and bundle already,
            // but this device's sealed keys may be missing there.
            heal.sealed_keys_restored = self.restore_sealed_epoch_keys(&connection).await?;
        }
        // Tell the other devices, through the old relay while it lives (§13.1): a signed,
        // encrypted notice in this device's stream there, which the new relay gets too (the
        // final sync below heals this device's stream onto it byte for byte).
        if let Some(old) = old_connection {
            let from = self.relay();
            match self.leave_move_notice(&old, &from, &relay).await {
                Ok(()) => heal.move_notice_left = true,
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot leave a move notice on the old relay; point the other devices at \
                     the new one with `kith relay set`"
                ),
            }
        }
        self.seal_full_snapshot_after_outbox()?;
        heal.snapshot_written = true;
        self.persist_relay(&relay)?;
        *slot = Some(connection.clone());
        drop(slot);
        self.sync().await?;
        Ok(heal)
    }

    /// Seals a batch of no operations carrying where the account moved, as this device's next
    /// envelope, and pushes it (with anything else in the outbox) to the old relay.
    async fn leave_move_notice(
        &self,
        old: &RelayConnection,
        from: &crate::net::RelayTarget,
        to: &crate::net::RelayTarget,
    ) -> Result<()> {
        use prost::Message as _;
        let payload = proto::OperationBatch {
            operations: Vec::new(),
            written_at_ms: crate::device::now_ms(),
            relay_moved: Some(proto::RelayMoved {
                from_address: from.address.clone(),
                from_cert_sha256: pin_bytes(from),
                to_address: to.address.clone(),
                to_cert_sha256: pin_bytes(to),
            }),
            // Added when sealed, like every payload's (§4).
            writer_view: None,
        }
        .encode_to_vec();
        self.seal_operations_payload(&payload)?;
        self.push_outbox(old).await?;
        Ok(())
    }

    /// The move notice among `moves` (writer, notice) that this device should follow: the last
    /// one that names the relay this device syncs with as the one left, and another relay as
    /// the new one. A notice read from any other relay (one re-uploaded to the new relay, or
    /// from an earlier move) is history and ignored, as is a malformed one.
    pub(crate) fn relay_move_to_follow(
        &self,
        moves: Vec<(DeviceId, proto::RelayMoved)>,
    ) -> Option<RelayMove> {
        let current = self.relay();
        let current_pin = pin_bytes(&current);
        moves.into_iter().rev().find_map(|(by, moved)| {
            let pin = match moved.to_cert_sha256.len() {
                0 => None,
                32 => Some(<[u8; 32]>::try_from(moved.to_cert_sha256.as_slice()).ok()?),
                _ => return None,
            };
            let well_formed = !moved.to_address.is_empty()
                && moved.to_address.len() <= MAX_RELAY_ADDRESS
                && !moved.to_address.chars().any(char::is_control);
            let names_current = if current_pin.is_empty() {
                moved.from_cert_sha256.is_empty() && moved.from_address == current.address
            } else {
                moved.from_cert_sha256 == current_pin
            };
            let elsewhere =
                moved.to_address != current.address || moved.to_cert_sha256 != current_pin;
            (well_formed && names_current && elsewhere).then_some(RelayMove {
                by,
                address: moved.to_address,
                cert_sha256: pin,
                followed: false,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ContactFields;
    use crate::sync::tests::{device_on_relay, relay_target};

    /// Adds `rounds` contacts to `device`, syncing after each: one envelope each.
    async fn add_and_sync(device: &Device, rounds: usize) {
        for round in 0..rounds {
            let fields = ContactFields {
                name: Some(format!("Ada {round}")),
                ..Default::default()
            };
            device.add_contact(&fields).await.unwrap();
            device.sync().await.unwrap();
        }
    }

    /// A store whose first acknowledged envelopes an earlier release moved to `sent/<seq>`
    /// (sealed for the meta tree) and whose later ones stay in the outbox, as this release
    /// keeps them: both are this device's kept copies, read in one chain, and a relay that
    /// lost everything (here: a new one the account moves to) gets them back byte for byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sent_copies_of_earlier_releases_are_still_healed_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, device) = device_on_relay(dir.path()).await;
        add_and_sync(&device, 4).await;
        let acked = device.acked_seq().unwrap();
        assert!(acked >= 4);
        assert!(!device.has_unsent().unwrap());
        let store = &device.inner.store;
        let sealed: Vec<(u64, Vec<u8>)> = store
            .scan(TreeName::Outbox)
            .map(|item| {
                let (key, envelope) = item.unwrap();
                (
                    u64::from_be_bytes(key.as_slice().try_into().unwrap()),
                    envelope,
                )
            })
            .collect();
        assert_eq!(
            sealed.len() as u64,
            acked,
            "every acknowledged envelope is kept"
        );
        // The first half as 0.1.0 left them: moved out of the outbox once acknowledged.
        store
            .transaction(|tx| {
                for (seq, envelope) in &sealed[..sealed.len() / 2] {
                    tx.remove(TreeName::Outbox, &seq.to_be_bytes())?;
                    tx.put(TreeName::Meta, &sent_key(*seq), envelope)?;
                }
                Ok::<_, crate::store::LocalStoreError>(())
            })
            .unwrap();
        assert_eq!(device.kept_envelopes().unwrap(), sealed);

        let other =
            kith_relay::Relay::start(kith_relay::RelayConfig::for_tests(dir.path().join("other")))
                .await
                .unwrap();
        let heal = device
            .move_to_relay(relay_target(&other), None)
            .await
            .unwrap();
        assert_eq!(heal.lost_envelopes, Some((1, acked)));
        assert_eq!(
            heal.restored_by,
            Some(StreamRestore::ByteForByte { envelopes: acked })
        );
        // The copies stay kept (the old ones where they were) for the next heal.
        let kept = device.kept_envelopes().unwrap();
        assert_eq!(kept[..sealed.len()], sealed[..]);
        other.shutdown().await.unwrap();
        relay.shutdown().await.unwrap();
    }

    /// A compaction drops the kept copies before its snapshot, those in the outbox as well
    /// as those of earlier releases in `sent/<seq>`, and keeps the snapshot's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compaction_drops_the_kept_copies_before_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, device) = device_on_relay(dir.path()).await;
        add_and_sync(&device, 3).await;
        let store = &device.inner.store;
        store
            .transaction(|tx| {
                let envelope = tx.get(TreeName::Outbox, &1u64.to_be_bytes())?.unwrap();
                tx.remove(TreeName::Outbox, &1u64.to_be_bytes())?;
                tx.put(TreeName::Meta, &sent_key(1), &envelope)
            })
            .unwrap();
        let report = device.compact().await.unwrap();
        let first = read_u64(store.get(TreeName::Meta, meta::SNAPSHOT_AT).unwrap());
        assert!(first > 3);
        let kept = device.kept_envelopes().unwrap();
        let seqs: Vec<u64> = kept.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            seqs,
            (first..first + report.snapshot_envelopes as u64).collect::<Vec<_>>()
        );
        assert_eq!(store.len(TreeName::Outbox).unwrap(), kept.len());
        assert_eq!(
            store.scan_prefix(TreeName::Meta, meta::SENT_PREFIX).count(),
            0
        );
        relay.shutdown().await.unwrap();
    }
}
