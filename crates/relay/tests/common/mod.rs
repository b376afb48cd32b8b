//! Test helpers: an in-process relay on loopback, accounts with hand-built signed rosters
//! (docs/PROTOCOL.md §4), and envelopes with valid headers and opaque bodies.
#![allow(dead_code, unused_imports)]

pub mod faulty_store;
pub mod latency;
pub mod pg;
pub mod process;
pub mod rng;
pub mod streams;

use std::collections::HashMap;
use std::time::Duration;

use kith_protocol::encoding::labels;
use kith_protocol::ids::{AccountId, DeviceId};
use kith_protocol::keys::{AccountSigningKey, DeviceAgreementKey, DeviceSigningKey, system_rng};
use kith_protocol::proto::{self, Cursor, ErrorCode, StreamInfo};
use kith_relay::client::{RelayClient, RelayClientError};
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

    /// A relay with the test configuration, an account of `devices` devices created on it, and
    /// device 0's connection (authenticated by the creation).
    pub async fn with_account(devices: usize) -> (Self, TestAccount, RelayClient) {
        Self::start_with_account(devices, |_| {}).await
    }

    /// As [`TestRelay::with_account`], the configuration changed by `tweak` first.
    pub async fn start_with_account(
        devices: usize,
        tweak: impl FnOnce(&mut RelayConfig),
    ) -> (Self, TestAccount, RelayClient) {
        let relay = Self::start_with(tweak).await;
        let account = TestAccount::new(devices);
        let client = relay.connect().await;
        account.create(&client).await;
        (relay, account, client)
    }

    pub async fn connect(&self) -> RelayClient {
        RelayClient::connect(self.handle.local_addr(), self.handle.cert_sha256())
            .await
            .unwrap()
    }

    /// A new connection, authenticated as `account`'s device `device`.
    pub async fn connect_as(&self, account: &TestAccount, device: usize) -> RelayClient {
        account.authenticated(self.connect().await, device).await
    }

    /// Authenticates `account`'s device `device` on a new connection: the relay's answer.
    pub async fn authenticate_afresh(
        &self,
        account: &TestAccount,
        device: usize,
    ) -> Result<(), RelayClientError> {
        self.connect()
            .await
            .authenticate(account.device(device), &account.id)
            .await
    }

    /// What `kith-relay token create` does while the relay runs: a file in the token inbox,
    /// named by the hash of a registration token.
    pub fn issue_token(&self, token: &str) {
        let hash = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes());
        std::fs::write(
            kith_relay::token_inbox(self.dir.path()).join(hex::encode(hash)),
            b"",
        )
        .unwrap();
    }

    /// Shuts the relay down and hands back its data directory, to read what it stored.
    pub async fn stop_keeping_data(self) -> tempfile::TempDir {
        self.handle.shutdown().await.unwrap();
        self.dir
    }

    /// Shuts the relay down and waits until it has stopped; panics if it did not stop cleanly.
    pub async fn stop(self) {
        self.handle.shutdown().await.unwrap();
    }
}

/// The error code of a refusal; panics on success or on a failure that is not a refusal.
#[track_caller]
pub fn code<T: std::fmt::Debug>(result: Result<T, RelayClientError>) -> ErrorCode {
    match result {
        Err(err) => err.code().unwrap_or_else(|| panic!("not a refusal: {err}")),
        Ok(value) => panic!("expected a refusal, got {value:?}"),
    }
}

/// Panics unless `result` is the relay's refusal with `expected` (saying what it was instead).
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, RelayClientError>,
    expected: ErrorCode,
) {
    match result {
        Err(err) => assert_eq!(err.code(), Some(expected), "{err}"),
        Ok(value) => panic!("expected a refusal with {expected:?}, got {value:?}"),
    }
}

/// Reads the one response the relay writes on a raw stream (the `recv` half of `open_bi`).
pub async fn read_response(recv: &mut quinn::RecvStream) -> proto::Response {
    kith_net::read_message::<proto::Response, _>(recv, 1 << 20)
        .await
        .unwrap()
        .expect("the relay closed the stream without a response")
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

    /// `client`, once authenticated as device `device`.
    pub async fn authenticated(&self, client: RelayClient, device: usize) -> RelayClient {
        client
            .authenticate(self.device(device), &self.id)
            .await
            .unwrap();
        client
    }

    /// Creates the account on the relay through `client`, as device 0.
    pub async fn create(&self, client: &RelayClient) {
        self.register(client, None).await.unwrap();
    }

    /// Asks the relay through `client` to create the account, as device 0, with a
    /// registration token if given: the relay's answer.
    pub async fn register(
        &self,
        client: &RelayClient,
        token: Option<&str>,
    ) -> Result<(), RelayClientError> {
        client
            .create_account(self.roster(), self.device(0), &self.id, token)
            .await
    }

    /// `count` envelopes of `size` bytes of device `device`'s stream, from seq `first` on.
    pub fn envelopes(&self, device: usize, first: u64, count: u64, size: usize) -> Vec<Vec<u8>> {
        envelopes(
            &self.id,
            &self.device(device).device_id(),
            first,
            count,
            size,
        )
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
