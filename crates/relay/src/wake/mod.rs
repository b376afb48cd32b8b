//! Wake-up notifications that carry nothing (docs/PROTOCOL.md §12.1).
//!
//! A device registers a push target: an opaque token its app obtained from the operator's push
//! gateway (an APNs or FCM token encrypted for the gateway, so the relay cannot use it). When
//! another device of the account pushes, the relay POSTs `{"token":"<base64>"}` to the
//! gateway: no account id, no device id, no counts. The gateway turns it into a content-free
//! platform push, and the woken app syncs.
//!
//! - **Coalesced.** At most one wake-up per device per [`PushConfig::interval`]: the first
//!   push wakes at once, pushes within the interval after it are folded into one wake-up sent
//!   when the interval ends.
//! - **Retried.** A wake-up the gateway did not take (no connection, 5xx, 408, 429) is tried
//!   again after 1 s, 2 s, 4 s, … ([`PushConfig::retries`] times). Each attempt reads the
//!   device's token afresh, so nothing is sent once the device was removed (revocation removes
//!   its target, account deletion every target of the account) or unregistered.
//! - **Bounded.** The pushes waiting to be looked at are a bounded channel, the devices
//!   tracked (woken within the interval, or waiting) at most [`PushConfig::queue`], and at most
//!   [`MAX_SENDING`] requests are in flight; beyond each bound wake-ups are dropped and
//!   counted ([`WakeCounts::dropped`]). A dropped wake-up costs latency, never data: the
//!   device syncs at its next wake-up or when the app opens.

mod http;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use kith_protocol::ids::{AccountId, DeviceId};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use self::http::Gateway;
pub use self::http::GatewayUrl;
use crate::config::{ConfigError, PushConfig};
use crate::state::pseudonym;
use crate::store::Store;

/// Requests to the gateway in flight at most (retries waiting included).
pub const MAX_SENDING: usize = 64;
/// Pushes waiting for the wake-up task to look at them.
const INBOX: usize = 1024;
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What the wake-up sender did, for tests and operators.
#[derive(Debug, Default)]
pub struct WakeCounts {
    /// Wake-ups the gateway took (2xx).
    pub sent: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Wake-ups given up (refused by the gateway, or out of retries).
    pub failed: AtomicU64,
    /// Wake-ups dropped at a bound (see the module docs).
    pub dropped: AtomicU64,
}

/// The relay's side of wake-up notifications: cheap to call from the push path.
#[derive(Debug, Clone)]
pub(crate) struct Waker {
    inbox: mpsc::Sender<(AccountId, DeviceId)>,
    pub counts: Arc<WakeCounts>,
}

impl Waker {
    /// Starts the task that coalesces and sends wake-ups; it ends at `shutdown`.
    pub fn start(
        config: &PushConfig,
        store: Arc<dyn Store>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, ConfigError> {
        let gateway = Gateway::new(config.gateway.clone(), config.gateway_ca.as_deref())?;
        let (inbox, rx) = mpsc::channel(INBOX);
        let counts = Arc::new(WakeCounts::default());
        let task = Task {
            config: config.clone(),
            store,
            gateway,
            counts: counts.clone(),
            sending: Arc::new(Semaphore::new(MAX_SENDING)),
            slots: HashMap::new(),
            due: BTreeSet::new(),
        };
        tokio::spawn(task.run(rx, shutdown));
        Ok(Self { inbox, counts })
    }

    /// `pusher` pushed to `account`: wake the account's other devices that registered a
    /// target. Never waits.
    pub fn pushed(&self, account: AccountId, pusher: DeviceId) {
        if self.inbox.try_send((account, pusher)).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A device woken within the interval.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When its last wake-up was sent.
    sent_at: Instant,
    /// Whether a wake-up waits for the interval to end.
    waiting: bool,
}

type Key = (AccountId, DeviceId);

struct Task {
    config: PushConfig,
    store: Arc<dyn Store>,
    gateway: Gateway,
    counts: Arc<WakeCounts>,
    sending: Arc<Semaphore>,
    slots: HashMap<Key, Slot>,
    /// Waiting wake-ups by the time they are due.
    due: BTreeSet<(Instant, Key)>,
}

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<(AccountId, DeviceId)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let next_due = self.due.first().map(|(at, _)| *at);
            tokio::select! {
                pushed = rx.recv() => match pushed {
                    Some((account, pusher)) => self.pushed(account, pusher),
                    None => return,
                },
                () = sleep_until(next_due) => self.send_due(),
                _ = shutdown.changed() => return,
            }
        }
    }

    fn pushed(&mut self, account: AccountId, pusher: DeviceId) {
        let targets = match self.store.push_targets(&account) {
            Ok(targets) => targets,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read push targets; wake-up dropped");
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let now = Instant::now();
        for (device, _) in targets.into_iter().filter(|(d, _)| *d != pusher) {
            let key = (account, device);
            match self.slots.get_mut(&key) {
                Some(slot) if now < slot.sent_at + self.config.interval => {
                    if !slot.waiting {
                        slot.waiting = true;
                        self.due.insert((slot.sent_at + self.config.interval, key));
                    }
                }
                _ => {
                    if !self.make_room(now, &key) {
                        self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    self.wake(key, now);
                }
            }
        }
    }

    /// Whether `key` may take a slot: present already, or room left after dropping the slots
    /// whose interval ended with nothing waiting.
    fn make_room(&mut self, now: Instant, key: &Key) -> bool {
        if self.slots.contains_key(key) || self.slots.len() < self.config.queue {
            return true;
        }
        let interval = self.config.interval;
        self.slots
            .retain(|_, slot| slot.waiting || now < slot.sent_at + interval);
        crate::rate_limit::shrink(&mut self.slots);
        self.slots.len() < self.config.queue
    }

    fn send_due(&mut self) {
        let now = Instant::now();
        while let Some(&(at, key)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            self.wake(key, now);
        }
    }

    /// Sends `key`'s wake-up now and starts its interval.
    fn wake(&mut self, key: Key, now: Instant) {
        let slot = Slot {
            sent_at: now,
            waiting: false,
        };
        self.slots.insert(key, slot);
        self.send(key);
    }

    /// Sends one wake-up to `key`'s device, with retries, on its own task.
    fn send(&self, key: Key) {
        let Ok(permit) = self.sending.clone().try_acquire_owned() else {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (store, gateway, counts) = (
            self.store.clone(),
            self.gateway.clone(),
            self.counts.clone(),
        );
        let (retries, first_retry) = (self.config.retries, self.config.first_retry);
        tokio::spawn(async move {
            let _permit = permit;
            let (account, device) = key;
            let mut backoff = first_retry;
            for attempt in 0..=retries {
                if attempt > 0 {
                    counts.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                // Read afresh at every attempt: a device removed or unregistered meanwhile
                // gets nothing more.
                let token = match store.push_targets(&account) {
                    Ok(targets) => targets.into_iter().find(|(d, _)| *d == device),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot read push targets");
                        continue;
                    }
                };
                let Some((_, token)) = token else { return };
                match gateway.post(&body(&token)).await {
                    Ok(status) if (200..300).contains(&status) => {
                        counts.sent.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(status) if status == 408 || status == 429 || status >= 500 => {
                        tracing::debug!(status, "push gateway busy; retrying");
                    }
                    Ok(status) => {
                        // The gateway refused this wake-up for good (a token it no longer
                        // knows, say): nothing to retry. The device registers again when its
                        // app next runs.
                        tracing::info!(
                            status,
                            account = %pseudonym(account.as_bytes()),
                            "push gateway refused a wake-up"
                        );
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(err) => tracing::debug!(error = %err, "push gateway unreachable; retrying"),
                }
            }
            tracing::warn!("push gateway did not take a wake-up after every retry");
            counts.failed.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// The body of a wake-up: the token and nothing else.
fn body(token: &[u8]) -> Vec<u8> {
    format!(
        "{{\"token\":\"{}\"}}",
        base64::engine::general_purpose::STANDARD.encode(token)
    )
    .into_bytes()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_body_holds_only_the_token() {
        assert_eq!(
            super::body(b"\x00\xfftok"),
            br#"{"token":"AP90b2s="}"#.to_vec()
        );
    }
}
