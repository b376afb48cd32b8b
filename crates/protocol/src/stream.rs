//! Stream continuity (docs/PROTOCOL.md §7.1, §9): each device writes one append-only stream,
//! seq 1, 2, 3 … chained by `prev_hash`. A receiver keeps one [`StreamVerifier`] per writer
//! device and feeds it every envelope of that writer, in order, after its signature verified.
//! A gap, fork, replay or rollback is an error that names the device; nothing is skipped
//! silently.
//!
//! ```
//! use kith_protocol::envelope::{EnvelopeHash, ParsedEnvelope, PayloadKind, seal};
//! use kith_protocol::keys::{DeviceSigningKey, SymmetricKey, system_rng};
//! use kith_protocol::stream::{StreamError, StreamVerifier};
//! use kith_protocol::AccountId;
//!
//! let mut rng = system_rng();
//! let writer = DeviceSigningKey::generate(&mut rng);
//! let (account, key) = (AccountId::from_bytes([1; 32]), SymmetricKey::generate(&mut rng));
//! let first = seal(&writer, &account, 1, 1, &key, &EnvelopeHash::ZERO,
//!     PayloadKind::Operations, b"a", &mut rng).unwrap();
//! let first = ParsedEnvelope::decode(&first.bytes).unwrap();
//!
//! let mut stream = StreamVerifier::new(writer.device_id());
//! stream.check(&first)?;
//! assert_eq!(stream.last_seq(), 1);
//! assert_eq!(
//!     stream.check(&first),
//!     Err(StreamError::Replay { device: writer.device_id(), seq: 1 })
//! );
//! # Ok::<(), StreamError>(())
//! ```

use std::collections::VecDeque;

use crate::envelope::{EnvelopeHash, ParsedEnvelope, PayloadKind};
use crate::ids::DeviceId;

/// How many of the most recently accepted `(seq, hash)` pairs a [`StreamVerifier`] remembers.
///
/// An envelope at an already-accepted seq within this window is classified exactly: `Replay`
/// when it is the envelope accepted then, `Fork` when it differs. Older seqs can no longer be
/// compared and are `Rollback`. 256 entries cost 10 KiB per writer device (at most 64 devices)
/// and cover any realistic re-delivery: a pull returns at most a few hundred envelopes.
pub const REPLAY_WINDOW: usize = 256;

/// Why a stream verifier refused an envelope. Every variant names the writer device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Envelopes are missing: the next expected seq is `expected`, `got` is further on.
    #[error("stream of device {device}: gap, expected seq {expected}, got {got}")]
    Gap {
        /// The writer.
        device: DeviceId,
        /// The next seq this stream needs.
        expected: u64,
        /// The seq received.
        got: u64,
    },
    /// Two different envelopes claim the same position: `prev_hash` at `last + 1` is not the
    /// hash of the accepted envelope `last`, or an envelope at an accepted seq differs from the
    /// one accepted there.
    #[error("stream of device {device}: fork at seq {seq}")]
    Fork {
        /// The writer.
        device: DeviceId,
        /// The contested seq.
        seq: u64,
    },
    /// The envelope accepted at `seq` was delivered again (identical hash).
    #[error("stream of device {device}: replay of seq {seq}")]
    Replay {
        /// The writer.
        device: DeviceId,
        /// The replayed seq.
        seq: u64,
    },
    /// An envelope at a seq older than the replay window: the stream was served backwards.
    #[error("stream of device {device}: rollback to seq {seq}")]
    Rollback {
        /// The writer.
        device: DeviceId,
        /// The old seq received.
        seq: u64,
    },
    /// After a truncation, the first envelope served is not a snapshot at the relay's
    /// reported first seq, so the missing envelopes are not covered.
    #[error(
        "stream of device {device}: gap after truncation without a snapshot, expected seq \
         {expected}, got {got}"
    )]
    GapWithoutSnapshot {
        /// The writer.
        device: DeviceId,
        /// The next seq this stream needs.
        expected: u64,
        /// The seq received.
        got: u64,
    },
    /// After a truncation, the relay starts the stream at `seq`, an envelope in the middle of
    /// a snapshot whose signed payload says it starts at `starts_at`: the envelopes before it
    /// are gone, so what they held would be lost (docs/PROTOCOL.md §9).
    #[error(
        "stream of device {device}: the relay starts it at seq {seq}, in the middle of a \
         snapshot that starts at seq {starts_at}; the snapshot was cut"
    )]
    SnapshotCut {
        /// The writer.
        device: DeviceId,
        /// The seq the relay starts the stream at.
        seq: u64,
        /// The first seq of the snapshot, as its writer signed it.
        starts_at: u64,
    },
    /// The envelope was written by another device than this verifier's.
    #[error("stream of device {device}: envelope written by device {got}")]
    WrongDevice {
        /// The writer this verifier follows.
        device: DeviceId,
        /// The writer named in the envelope.
        got: DeviceId,
    },
}

/// The continuity state of one writer device's stream, as seen by one receiver.
///
/// Holds the last accepted `(seq, hash)` (persist [`Self::last_seq`] and [`Self::last_hash`]
/// as the receiver's cursor, restore with [`Self::resume`]) and a window of the
/// [`REPLAY_WINDOW`] most recently accepted pairs. Feed it only envelopes whose signature has
/// verified: the hashes it compares are then the writer's.
#[derive(Debug, Clone)]
pub struct StreamVerifier {
    device: DeviceId,
    last_seq: u64,
    last_hash: EnvelopeHash,
    /// Accepted `(seq, hash)`, oldest first, consecutive seqs ending at `last_seq`.
    recent: VecDeque<(u64, EnvelopeHash)>,
}

impl StreamVerifier {
    /// A verifier for `device`'s stream, nothing accepted yet: the next envelope must be seq 1
    /// with a zero `prev_hash`.
    pub fn new(device: DeviceId) -> Self {
        Self::resume(device, 0, EnvelopeHash::ZERO)
    }

    /// A verifier continuing from a persisted cursor: `last_seq` accepted with hash
    /// `last_hash` (0 and [`EnvelopeHash::ZERO`] for nothing accepted). The replay window
    /// restarts with that one entry, so any older seq is reported as `Rollback`.
    pub fn resume(device: DeviceId, last_seq: u64, last_hash: EnvelopeHash) -> Self {
        let mut recent = VecDeque::with_capacity(REPLAY_WINDOW.min(16));
        if last_seq > 0 {
            recent.push_back((last_seq, last_hash));
        }
        Self {
            device,
            last_seq,
            last_hash,
            recent,
        }
    }

    /// The writer device this verifier follows.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The last accepted seq (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The hash of the last accepted envelope ([`EnvelopeHash::ZERO`] when none).
    pub fn last_hash(&self) -> EnvelopeHash {
        self.last_hash
    }

    /// Classifies the next envelope of this stream (docs/PROTOCOL.md §7.1) and, when it is
    /// the direct successor of the last accepted one, accepts it.
    ///
    /// | observed | result |
    /// |---|---|
    /// | `seq == last + 1`, `prev_hash == last_hash` | accepted |
    /// | `seq == last + 1`, other `prev_hash` | `Fork` |
    /// | `seq > last + 1` | `Gap` |
    /// | `seq <= last` within the window, same hash | `Replay` |
    /// | `seq <= last` within the window, other hash | `Fork` |
    /// | `seq <= last` older than the window | `Rollback` |
    pub fn check(&mut self, envelope: &ParsedEnvelope) -> Result<(), StreamError> {
        let header = envelope.header();
        let device = self.device;
        if header.device_id != device {
            return Err(StreamError::WrongDevice {
                device,
                got: header.device_id,
            });
        }
        let seq = header.seq;
        if seq <= self.last_seq {
            return Err(self.classify_old(seq, envelope.hash()));
        }
        if seq - self.last_seq > 1 {
            return Err(StreamError::Gap {
                device,
                expected: self.last_seq + 1,
                got: seq,
            });
        }
        if header.prev_hash != self.last_hash {
            return Err(StreamError::Fork { device, seq });
        }
        self.accept(seq, envelope.hash());
        Ok(())
    }

    /// Like [`Self::check`], but the relay reported that this stream now starts at
    /// `first_seq` (it was truncated before it, docs/PROTOCOL.md §9). `starts_at` is the first
    /// seq of the snapshot as the envelope's opened payload states it
    /// ([`snapshot_first_seq`]; `None` when the writer did not state it, as writers before
    /// 0.2.0 did not).
    ///
    /// When the envelope continues the chain (`seq <= last + 1`), this is [`Self::check`].
    /// A jump past `last + 1` is accepted only for a snapshot envelope at exactly
    /// `first_seq > last + 1` that is its snapshot's first envelope (`starts_at` is `seq`, or
    /// not stated); the chain then continues from that snapshot (its own `prev_hash` cannot be
    /// checked: the envelope before it is gone). Otherwise the error is `SnapshotCut` for a
    /// later envelope of a snapshot, `GapWithoutSnapshot` if the relay claims a truncation past
    /// `last + 1`, `Gap` if not.
    pub fn check_after_truncation(
        &mut self,
        envelope: &ParsedEnvelope,
        first_seq: u64,
        starts_at: Option<u64>,
    ) -> Result<(), StreamError> {
        let header = envelope.header();
        let device = self.device;
        if header.device_id != device || header.seq <= self.last_seq.saturating_add(1) {
            return self.check(envelope);
        }
        let expected = self.last_seq + 1;
        let got = header.seq;
        if first_seq <= expected {
            // The relay still holds `expected`: nothing was truncated that we need.
            return Err(StreamError::Gap {
                device,
                expected,
                got,
            });
        }
        if got != first_seq || header.kind != PayloadKind::Snapshot {
            return Err(StreamError::GapWithoutSnapshot {
                device,
                expected,
                got,
            });
        }
        if let Some(starts_at) = starts_at
            && starts_at != got
        {
            return Err(StreamError::SnapshotCut {
                device,
                seq: got,
                starts_at,
            });
        }
        self.recent.clear();
        self.accept(got, envelope.hash());
        Ok(())
    }

    fn classify_old(&self, seq: u64, hash: EnvelopeHash) -> StreamError {
        let device = self.device;
        // The window holds consecutive seqs ending at `last_seq`.
        let oldest = self.recent.front().map_or(u64::MAX, |&(seq, _)| seq);
        if seq < oldest {
            return StreamError::Rollback { device, seq };
        }
        let index = usize::try_from(seq - oldest).ok();
        match index.and_then(|i| self.recent.get(i)) {
            Some(&(_, accepted)) if accepted == hash => StreamError::Replay { device, seq },
            Some(_) => StreamError::Fork { device, seq },
            None => StreamError::Rollback { device, seq },
        }
    }

    fn accept(&mut self, seq: u64, hash: EnvelopeHash) {
        if self.recent.len() == REPLAY_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, hash));
        self.last_seq = seq;
        self.last_hash = hash;
    }
}

/// The first seq of a snapshot as its payload (an opened, encoded `Snapshot`) states it:
/// `Snapshot.first_seq`, `None` when it is 0 (not stated) or the payload does not decode (the
/// merge then refuses it). Reads only that field: the records are skipped by their lengths.
pub fn snapshot_first_seq(payload: &[u8]) -> Option<u64> {
    /// `Snapshot` with every field but `first_seq` skipped on decoding.
    #[derive(Clone, PartialEq, prost::Message)]
    struct SnapshotStart {
        #[prost(uint64, tag = "3")]
        first_seq: u64,
    }
    use prost::Message as _;
    let start = SnapshotStart::decode(payload).ok()?;
    (start.first_seq != 0).then_some(start.first_seq)
}

#[cfg(test)]
mod tests;
