//! The socket gate: new connections from a source address in its quiet period are dropped as
//! the UDP socket is read, before quinn sees them.
//!
//! A connection that a per-address limit refuses (`max_connections_per_address`,
//! `handshakes_per_address_per_minute`) is refused at its first packet, before any TLS work;
//! but by then quinn has derived the connection's Initial keys (HKDF, AES key schedules) and
//! removed its header protection, and the refusal is a packet built, encrypted and sent. An
//! address that keeps trying — the abuser of `kith-relay bench --abuse` sends about a
//! thousand Initials a second, in bursts — costs the relay that for every attempt, on the
//! endpoint's one receive path that every other connection's packets also wait on. So the
//! first refusal can start a quiet period (`refused_address_quiet`; off by default, because a
//! client that follows QUIC retransmits an unanswered Initial several times) in which that
//! address's new connections are not answered at all: a datagram from it whose packets are
//! all Initial packets naming a connection id that is not the relay's own (the relay's ids are
//! keyed hashes, `crate::tls`) is given a length of zero, which quinn skips. Packets of the
//! address's handshakes under way (their Initials name the relay's id once it answered) and of
//! its established connections are untouched, and so is every other address. The first
//! attempt after the quiet period is decided as any other (accepted if the address has room,
//! refused again and quiet again if not): an honest client sharing a full address (a NAT)
//! hears within about a second, from its own Initial's retransmission.
//!
//! Cost on the honest path: with no address quiet, one relaxed atomic load per batch of
//! datagrams read; with some, one byte compared per datagram (established connections' packets
//! have short headers) before anything is looked up.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::udp::RecvMeta;
use quinn_proto::{ConnectionId, ConnectionIdGenerator, HashedConnectionIdGenerator};

/// Length of the relay's connection ids (quinn's hashed generator).
const OWN_CID_LEN: usize = 8;

/// Source addresses in their quiet period: started by the accept loop when a per-address limit
/// refuses a connection, read by [`GatedSocket`].
#[derive(Debug)]
pub(crate) struct QuietAddresses {
    until: Mutex<HashMap<IpAddr, Instant>>,
    /// Entries of `until`: while 0 the socket looks at nothing.
    entries: AtomicUsize,
    quiet: Duration,
    max_entries: usize,
    /// Key of the relay's hashed connection ids.
    cid_key: u64,
    /// Datagram segments dropped so far.
    dropped: AtomicU64,
    metrics: Arc<crate::metrics::Metrics>,
}

impl QuietAddresses {
    /// Quiet periods of `quiet` (zero: none), at most `max_entries` addresses at once, for an
    /// endpoint whose connection ids are hashed with `cid_key`.
    pub fn new(
        quiet: Duration,
        max_entries: usize,
        cid_key: u64,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            until: Mutex::new(HashMap::new()),
            entries: AtomicUsize::new(0),
            quiet,
            max_entries: max_entries.max(1),
            cid_key,
            dropped: AtomicU64::new(0),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        match self.until.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// `ip` was refused by a per-address limit at `now`: its new connections are not answered
    /// for the quiet period. When the table is full of addresses still quiet, `ip` is not
    /// added (it is refused, and answered, as before).
    pub fn start(&self, ip: IpAddr, now: Instant) {
        if self.quiet.is_zero() {
            return;
        }
        let mut until = self.lock();
        if until.len() >= self.max_entries && !until.contains_key(&ip) {
            until.retain(|_, end| *end > now);
            crate::rate_limit::shrink(&mut until);
            if until.len() >= self.max_entries {
                self.entries.store(until.len(), Ordering::Relaxed);
                return;
            }
        }
        until.insert(ip, now + self.quiet);
        self.entries.store(until.len(), Ordering::Relaxed);
    }

    /// Whether `ip` is in its quiet period at `now` (an ended one is forgotten).
    fn is_quiet(&self, ip: IpAddr, now: Instant) -> bool {
        let mut until = self.lock();
        match until.get(&ip) {
            Some(end) if *end > now => true,
            Some(_) => {
                until.remove(&ip);
                self.entries.store(until.len(), Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    /// Forgets the ended quiet periods (the relay's sweep); returns how many remain.
    pub fn prune(&self, now: Instant) -> usize {
        let mut until = self.lock();
        until.retain(|_, end| *end > now);
        crate::rate_limit::shrink(&mut until);
        self.entries.store(until.len(), Ordering::Relaxed);
        until.len()
    }

    /// Initial packets dropped so far (datagram segments).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Whether a UDP payload opens with an Initial packet of a connection the relay has not
    /// answered yet: a long header of type Initial (QUIC v1 and its drafts), a version that is
    /// not 0 (version negotiation), and a destination connection id that is not one of the
    /// relay's own. Anything that does not parse as that is not (quinn decides it).
    fn opens_new_connection(&self, datagram: &[u8]) -> bool {
        let Some(&first) = datagram.first() else {
            return false;
        };
        // Long header (bit 7), packet type Initial (bits 5-4 = 00).
        if first & 0x80 == 0 || (first >> 4) & 0x03 != 0 {
            return false;
        }
        let Some(version) = datagram.get(1..5) else {
            return false;
        };
        if version == [0, 0, 0, 0] {
            return false;
        }
        let Some(&cid_len) = datagram.get(5) else {
            return false;
        };
        let Some(cid) = datagram.get(6..6 + usize::from(cid_len)) else {
            return false;
        };
        if cid.len() == OWN_CID_LEN
            && HashedConnectionIdGenerator::from_key(self.cid_key)
                .validate(&ConnectionId::new(cid))
                .is_ok()
        {
            return false;
        }
        true
    }

    /// Gives a length of zero (quinn skips it) to every received datagram that opens a new
    /// connection from a quiet address.
    fn filter(&self, bufs: &[IoSliceMut<'_>], meta: &mut [RecvMeta]) {
        let mut now = None;
        for (meta, buf) in meta.iter_mut().zip(bufs) {
            let Some(data) = buf.get(..meta.len) else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            // Segments of a coalesced (GRO) read: every one must open a new connection.
            let stride = if meta.stride == 0 {
                data.len()
            } else {
                meta.stride
            };
            if !data
                .chunks(stride)
                .all(|segment| self.opens_new_connection(segment))
            {
                continue;
            }
            let now = *now.get_or_insert_with(Instant::now);
            if self.is_quiet(meta.addr.ip(), now) {
                let segments = data.len().div_ceil(stride) as u64;
                self.dropped.fetch_add(segments, Ordering::Relaxed);
                self.metrics.initials_dropped(segments);
                meta.len = 0;
            }
        }
    }
}

/// The relay's UDP socket, with the [`QuietAddresses`] gate on what it reads.
pub(crate) type GatedSocket = kith_net::socket::InspectedSocket<QuietAddresses>;

impl kith_net::socket::Inspect for QuietAddresses {
    fn received(&self, bufs: &[IoSliceMut<'_>], meta: &mut [RecvMeta]) {
        if self.entries.load(Ordering::Relaxed) > 0 {
            self.filter(bufs, meta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> QuietAddresses {
        QuietAddresses::new(Duration::from_secs(1), 2, 7, Arc::default())
    }

    /// A v1 Initial packet's first bytes naming `dcid`.
    fn initial(dcid: &[u8]) -> Vec<u8> {
        let mut packet = vec![0xc3, 0, 0, 0, 1, dcid.len() as u8];
        packet.extend_from_slice(dcid);
        packet.extend_from_slice(&[8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0x44, 0xd0]);
        packet.resize(1200, 0);
        packet
    }

    #[test]
    fn only_initials_of_connections_the_relay_has_not_answered_open_one() {
        let gate = gate();
        assert!(gate.opens_new_connection(&initial(&[0x11; 20])));
        assert!(gate.opens_new_connection(&initial(&[0x11; 8])));
        let own = HashedConnectionIdGenerator::from_key(7).generate_cid();
        assert!(!gate.opens_new_connection(&initial(&own)));
        // Handshake packet (type 2), 0-RTT (type 1), a short header, version negotiation.
        let mut handshake = initial(&[0x11; 20]);
        handshake[0] = 0xe3;
        assert!(!gate.opens_new_connection(&handshake));
        let mut zero_rtt = initial(&[0x11; 20]);
        zero_rtt[0] = 0xd3;
        assert!(!gate.opens_new_connection(&zero_rtt));
        assert!(!gate.opens_new_connection(&[0x43, 1, 2, 3]));
        let mut negotiation = initial(&[0x11; 20]);
        negotiation[1..5].copy_from_slice(&[0, 0, 0, 0]);
        assert!(!gate.opens_new_connection(&negotiation));
        // Truncated headers are quinn's to refuse.
        assert!(!gate.opens_new_connection(&[0xc3, 0, 0]));
        assert!(!gate.opens_new_connection(&[0xc3, 0, 0, 0, 1, 20, 1, 2]));
        assert!(!gate.opens_new_connection(&[]));
    }

    #[test]
    fn a_quiet_period_ends_and_the_table_stays_bounded() {
        let gate = gate();
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "192.0.2.3".parse().unwrap(),
        );
        let now = Instant::now();
        gate.start(a, now);
        gate.start(b, now);
        assert!(gate.is_quiet(a, now + Duration::from_millis(999)));
        // Full of addresses still quiet: c is not added (it is refused and answered).
        gate.start(c, now);
        assert!(!gate.is_quiet(c, now));
        assert_eq!(gate.len(), 2);
        // After the quiet period a is heard again and forgotten.
        assert!(!gate.is_quiet(a, now + Duration::from_secs(1)));
        assert_eq!(gate.len(), 1);
        assert_eq!(gate.prune(now + Duration::from_secs(2)), 0);
        // Zero means no quiet period at all.
        let never = QuietAddresses::new(Duration::ZERO, 2, 7, Arc::default());
        never.start(a, now);
        assert!(!never.is_quiet(a, now));
    }
}
