//! Rate limits: token buckets per device and per source address, with bounded memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens, refilled at `rate` per second; a request takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
    }

    fn try_take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Token buckets by key (a device, a source address). A bucket that refilled completely is the
/// same as no bucket, so [`KeyedLimiter::prune`] (run periodically by the relay) drops those:
/// the map holds the keys active within the last refill time, not every key ever seen. It
/// also holds at most `max_keys` buckets: when full, refilled buckets are dropped at once; if
/// that is not enough, new keys are refused until some refill — memory stays bounded under a
/// flood of keys.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    buckets: Mutex<HashMap<K, TokenBucket>>,
    rate: f64,
    burst: f64,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `rate` tokens per `per`, bursts of `burst`, at most `max_keys` tracked keys.
    pub fn new(rate: u32, per: Duration, burst: u32, max_keys: usize) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            rate: f64::from(rate) / per.as_secs_f64().max(1e-3),
            burst: f64::from(burst.max(1)),
            max_keys: max_keys.max(1),
        }
    }

    /// Takes a token for `key`; `false` means rate-limited.
    pub fn check(&self, key: &K, now: Instant) -> bool {
        let mut buckets = match self.buckets.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(bucket) = buckets.get_mut(key) {
            return bucket.try_take(self.rate, self.burst, now);
        }
        if buckets.len() >= self.max_keys {
            self.drop_refilled(&mut buckets, now);
            if buckets.len() >= self.max_keys {
                return false;
            }
        }
        let mut bucket = TokenBucket::full(self.burst, now);
        let allowed = bucket.try_take(self.rate, self.burst, now);
        buckets.insert(key.clone(), bucket);
        allowed
    }

    /// Whether `key` has a token left, without taking it (a key not tracked has a full
    /// bucket). Used where only failures cost a token: check first, [`KeyedLimiter::check`]
    /// on failure.
    pub fn has_room(&self, key: &K, now: Instant) -> bool {
        let mut buckets = match self.buckets.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match buckets.get_mut(key) {
            Some(bucket) => {
                bucket.refill(self.rate, self.burst, now);
                bucket.tokens >= 1.0
            }
            None => true,
        }
    }

    /// Drops the buckets that refilled completely by `now` (they hold nothing a new bucket
    /// would not) and gives back the table's spare room; returns how many keys remain.
    pub fn prune(&self, now: Instant) -> usize {
        let mut buckets = match self.buckets.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.drop_refilled(&mut buckets, now);
        buckets.len()
    }

    fn drop_refilled(&self, buckets: &mut HashMap<K, TokenBucket>, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        buckets.retain(|_, bucket| {
            bucket.refill(rate, burst, now);
            bucket.tokens < burst
        });
        shrink(buckets);
    }

    /// Tracked keys (for tests).
    pub fn len(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.len())
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Gives a map's spare room back once it holds under a quarter of it (`HashMap` never shrinks
/// by itself: a burst of keys would otherwise pin its peak table for good).
pub(crate) fn shrink<K: Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies() {
        let limiter = KeyedLimiter::new(10, Duration::from_secs(1), 3, 100);
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.check(&"d", t0)));
        assert!(!limiter.check(&"d", t0));
        assert!(limiter.check(&"other", t0), "keys are independent");
        assert!(limiter.check(&"d", t0 + Duration::from_millis(100)));
        assert!(!limiter.check(&"d", t0 + Duration::from_millis(100)));
    }

    #[test]
    fn looking_for_room_takes_nothing() {
        let limiter = KeyedLimiter::new(1, Duration::from_secs(60), 2, 100);
        let t0 = Instant::now();
        assert!((0..10).all(|_| limiter.has_room(&"d", t0)));
        assert!(limiter.check(&"d", t0) && limiter.check(&"d", t0));
        assert!(!limiter.has_room(&"d", t0));
        assert!(limiter.has_room(&"d", t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_flood_of_keys_stays_bounded() {
        let limiter = KeyedLimiter::new(1, Duration::from_secs(60), 1, 10);
        let t0 = Instant::now();
        for key in 0..1000 {
            limiter.check(&key, t0);
        }
        assert!(limiter.len() <= 10);
        // After the buckets refill, idle keys are evicted and new keys admitted again.
        assert!(limiter.check(&5000, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn pruning_drops_refilled_buckets_and_keeps_the_others() {
        let limiter = KeyedLimiter::new(10, Duration::from_secs(1), 10, 100_000);
        let t0 = Instant::now();
        for key in 0..10_000 {
            assert!(limiter.check(&key, t0));
        }
        assert_eq!(limiter.prune(t0), 10_000, "none refilled yet");
        // Key 0 spends its whole burst later: its bucket is not full at the prune.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..10 {
            limiter.check(&0, t1);
        }
        assert_eq!(limiter.prune(t1), 1);
        assert!(!limiter.check(&0, t1), "the spent bucket was kept");
        assert_eq!(limiter.prune(t1 + Duration::from_secs(2)), 0);
        let capacity = limiter.buckets.lock().unwrap().capacity();
        assert!(capacity < 1000, "the table shrank (capacity {capacity})");
    }
}
