//! Test helpers: an in-process relay on loopback, accounts with hand-built signed rosters
//! (docs/PROTOCOL.md §4), and envelopes with valid headers and opaque bodies.
#![allow(dead_code, unused_imports)]

pub mod faulty_store;
pub mod latency;
pub mod pg;
pub mod process;
pub mod rng;

use std::collections::HashMap;
use std::time::Duration;

use kith_protocol::encoding::labels;
use kith_protocol::ids::{AccountId, DeviceId};
use kith_protocol::keys::{AccountSigningKey, DeviceAgreementKey, DeviceSigningKey, system_rng};
use kith_protocol::proto::{self, Cursor, StreamInfo};
use kith_relay::client::RelayClient;
use kith_relay::{Relay, RelayConfig, RelayHandle};
use prost::Message;

/// Every test is bounded in time.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct TestRelay {
    pub dir: tempfile::TempDir,
    pub handle: RelayHandle,
}

impl TestRelay {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut RelayConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RelayConfig::for_tests(dir.path());
        tweak(&mut config);
        let handle = Relay::start(config).await.unwrap();
        Self { dir, handle }
    }

    pub async fn connect(&self) -> RelayClient {
        RelayClient::connect(self.handle.local_addr(), self.handle.cert_sha256())
            .await
            .unwrap()
    }
}

/// A device: its signing key and (unused by the relay) agreement key.
pub struct TestDevice {
    pub key: DeviceSigningKey,
    pub agreement: Vec<u8>,
}

impl Default for TestDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDevice {
    pub fn new() -> Self {
        Self {
            key: DeviceSigningKey::generate(&mut system_rng()),
            agreement: DeviceAgreementKey::generate(&mut system_rng())
                .public()
                .to_bytes(),
        }
    }

    pub fn id(&self) -> DeviceId {
        self.key.device_id()
    }

    fn entry(&self, epoch: u64) -> proto::DeviceEntry {
        proto::DeviceEntry {
            device_id: self.id().as_bytes().to_vec(),
            signing_key: self.key.public().to_bytes().to_vec(),
            agreement_key: self.agreement.clone(),
            added_at_ms: 1,
            added_in_epoch: epoch,
            name_nonce: vec![0; 24],
            encrypted_name: vec![0; 32],
        }
    }
}

/// An account: its key chain, devices and roster state; builds signed rosters.
pub struct TestAccount {
    pub genesis: AccountSigningKey,
    pub current: AccountSigningKey,
    pub id: AccountId,
    pub devices: Vec<TestDevice>,
    pub removed: Vec<proto::RemovedDevice>,
    pub chain: Vec<proto::AccountKeyRotation>,
    pub version: u64,
    pub epoch: u64,
}

impl TestAccount {
    pub fn new(devices: usize) -> Self {
        let genesis = AccountSigningKey::generate(&mut system_rng());
        Self {
            id: genesis.public().account_id(),
            current: genesis.clone(),
            genesis,
            devices: (0..devices).map(|_| TestDevice::new()).collect(),
            removed: Vec::new(),
            chain: Vec::new(),
            version: 1,
            epoch: 1,
        }
    }

    pub fn device(&self, i: usize) -> &DeviceSigningKey {
        &self.devices[i].key
    }

    /// The current roster, signed by `signer` (normally the current account key).
    pub fn roster_signed_by(&self, signer: &AccountSigningKey) -> Vec<u8> {
        let body = proto::RosterBody {
            format_version: 1,
            account_id: self.id.as_bytes().to_vec(),
            version: self.version,
            genesis_key: self.genesis.public().to_bytes().to_vec(),
            key_chain: self.chain.clone(),
            epoch: self.epoch,
            devices: self.devices.iter().map(|d| d.entry(1)).collect(),
            removed: self.removed.clone(),
            created_at_ms: 1,
            prev_roster_hash: Vec::new(),
        }
        .encode_to_vec();
        let signature = signer
            .sign(labels::ROSTER_SIGNATURE, &[&body])
            .to_bytes()
            .to_vec();
        proto::SignedRoster { body, signature }.encode_to_vec()
    }

    pub fn roster(&self) -> Vec<u8> {
        self.roster_signed_by(&self.current)
    }

    /// Removes device `i`: next version, new epoch, account key rotated (§4).
    pub fn remove_device(&mut self, i: usize) -> TestDevice {
        let device = self.devices.remove(i);
        self.version += 1;
        self.epoch += 1;
        self.removed.push(proto::RemovedDevice {
            device_id: device.id().as_bytes().to_vec(),
            signing_key: device.key.public().to_bytes().to_vec(),
            final_seq: 0,
            removed_in_version: self.version,
        });
        self.rotate();
        device
    }

    /// Appends a rotation to a fresh account key, signed by the current one.
    pub fn rotate(&mut self) {
        let next = AccountSigningKey::generate(&mut system_rng());
        let new_key = next.public().to_bytes();
        let signature = self
            .current
            .sign(
                labels::ACCOUNT_KEY_ROTATION,
                &[self.id.as_bytes(), &self.version.to_be_bytes(), &new_key],
            )
            .to_bytes()
            .to_vec();
        self.chain.push(proto::AccountKeyRotation {
            roster_version: self.version,
            new_key: new_key.to_vec(),
            signature,
        });
        self.current = next;
    }

    /// Creates the account on the relay through `client`, as device 0.
    pub async fn create(&self, client: &RelayClient) {
        client
            .create_account(self.roster(), self.device(0), &self.id, None)
            .await
            .unwrap();
    }
}

pub use kith_testkit::envelope::{ciphertext_len, envelope, envelope_with, envelopes};

/// Runs a test body with the global test timeout.
pub async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("test timed out");
}

/// Every envelope of the account, per device, in the order served, and the streams' bounds.
pub async fn pull_account(
    client: &RelayClient,
) -> (HashMap<DeviceId, Vec<(u64, Vec<u8>)>>, Vec<StreamInfo>) {
    let mut cursors: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut streams: HashMap<DeviceId, Vec<(u64, Vec<u8>)>> = HashMap::new();
    for _page in 0..10_000 {
        let page = client
            .pull(
                cursors
                    .iter()
                    .map(|(device_id, &after_seq)| Cursor {
                        device_id: device_id.clone(),
                        after_seq,
                    })
                    .collect(),
                0,
                0,
            )
            .await
            .unwrap();
        for stored in page.envelopes {
            let device = DeviceId::from_slice(&stored.device_id).unwrap();
            cursors.insert(stored.device_id, stored.seq);
            streams
                .entry(device)
                .or_default()
                .push((stored.seq, stored.envelope));
        }
        if !page.more {
            return (streams, page.streams);
        }
    }
    panic!("pull did not end");
}
