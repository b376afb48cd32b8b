//! A well-behaved client that keeps doing push/pull round trips at a steady pace and records
//! the latency of every request, so that fault tests can show it is still served in time while
//! abusive clients are cut off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kith_protocol::proto::Cursor;
use kith_relay::client::RelayClient;

use super::{TestAccount, envelope};

#[derive(Debug, Default)]
pub struct LatencyReport {
    /// Every request's latency (pushes and pulls).
    pub samples: Vec<Duration>,
    /// Every failure, with the request it happened in.
    pub errors: Vec<String>,
}

impl LatencyReport {
    /// The `q`-quantile (nearest rank) of the samples.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    pub fn max(&self) -> Duration {
        self.samples.iter().copied().max().unwrap_or_default()
    }

    /// Panics unless there were enough samples, no errors, and p99 is within `bound`.
    pub fn assert_served(&self, what: &str, min_samples: usize, bound: Duration) {
        println!(
            "{what}: well-behaved client: {} requests, p50 {:?}, p99 {:?}, max {:?}, {} errors",
            self.samples.len(),
            self.quantile(0.5),
            self.quantile(0.99),
            self.max(),
            self.errors.len()
        );
        assert!(
            self.errors.is_empty(),
            "{what}: the well-behaved client saw errors: {:?}",
            self.errors
        );
        assert!(
            self.samples.len() >= min_samples,
            "{what}: only {} requests served",
            self.samples.len()
        );
        assert!(
            self.quantile(0.99) <= bound,
            "{what}: p99 {:?} exceeds {bound:?}",
            self.quantile(0.99)
        );
    }
}

/// The well-behaved client, connected and with its account created.
pub struct WellBehaved {
    client: RelayClient,
    account: TestAccount,
}

impl WellBehaved {
    pub async fn connect(addr: SocketAddr, pin: [u8; 32]) -> Self {
        let client = RelayClient::connect(addr, pin).await.unwrap();
        let account = TestAccount::new(1);
        account.create(&client).await;
        Self { client, account }
    }

    /// One push of the next envelope, then a pull of it, every `interval` until `stop`.
    pub async fn run(self, interval: Duration, stop: Arc<AtomicBool>) -> LatencyReport {
        let mut report = LatencyReport::default();
        let device = self.account.device(0).device_id();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        while !stop.load(Ordering::SeqCst) {
            ticks.tick().await;
            seq += 1;
            let sent = envelope(&self.account.id, &device, seq, 200);
            let started = Instant::now();
            match self.client.push(vec![sent.clone()]).await {
                Ok(last) if last == seq => {}
                Ok(last) => report.errors.push(format!("push {seq}: acked {last}")),
                Err(err) => report.errors.push(format!("push {seq}: {err}")),
            }
            report.samples.push(started.elapsed());
            let cursor = Cursor {
                device_id: device.as_bytes().to_vec(),
                after_seq: seq - 1,
            };
            let started = Instant::now();
            match self.client.pull(vec![cursor], 0, 0).await {
                Ok(page) if page.envelopes.len() == 1 && page.envelopes[0].envelope == sent => {}
                Ok(page) => report.errors.push(format!(
                    "pull {seq}: {} envelopes, not the one pushed",
                    page.envelopes.len()
                )),
                Err(err) => report.errors.push(format!("pull {seq}: {err}")),
            }
            report.samples.push(started.elapsed());
            if !report.errors.is_empty() {
                break;
            }
        }
        report
    }
}
