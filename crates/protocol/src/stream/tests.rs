use super::*;
use crate::envelope::{SealedEnvelope, seal};
use crate::ids::AccountId;
use crate::keys::{DeviceSigningKey, SymmetricKey, system_rng};

struct Writer {
    key: DeviceSigningKey,
    content_key: SymmetricKey,
    last: EnvelopeHash,
    seq: u64,
}

impl Writer {
    fn new() -> Self {
        let mut rng = system_rng();
        Self {
            key: DeviceSigningKey::generate(&mut rng),
            content_key: SymmetricKey::generate(&mut rng),
            last: EnvelopeHash::ZERO,
            seq: 0,
        }
    }

    fn device(&self) -> DeviceId {
        self.key.device_id()
    }

    /// Seals at an explicit position without advancing the writer.
    fn seal_at(
        &self,
        seq: u64,
        prev: EnvelopeHash,
        kind: PayloadKind,
        payload: &[u8],
    ) -> ParsedEnvelope {
        let sealed: SealedEnvelope = seal(
            &self.key,
            &AccountId::from_bytes([2; 32]),
            seq,
            1,
            &self.content_key,
            &prev,
            kind,
            payload,
            &mut system_rng(),
        )
        .unwrap();
        ParsedEnvelope::decode(&sealed.bytes).unwrap()
    }

    /// The next envelope of an honest stream.
    fn next(&mut self) -> ParsedEnvelope {
        self.next_kind(PayloadKind::Operations)
    }

    fn next_kind(&mut self, kind: PayloadKind) -> ParsedEnvelope {
        let envelope = self.seal_at(self.seq + 1, self.last, kind, b"ops");
        self.seq += 1;
        self.last = envelope.hash();
        envelope
    }
}

#[test]
fn consecutive_envelopes_are_accepted() {
    let mut writer = Writer::new();
    let mut stream = StreamVerifier::new(writer.device());
    for seq in 1..=5 {
        let envelope = writer.next();
        stream.check(&envelope).unwrap();
        assert_eq!(
            (stream.last_seq(), stream.last_hash()),
            (seq, envelope.hash())
        );
    }
}

#[test]
fn gap_is_detected_and_named() {
    let mut writer = Writer::new();
    let mut stream = StreamVerifier::new(writer.device());
    stream.check(&writer.next()).unwrap();
    writer.next();
    let third = writer.next();
    assert_eq!(
        stream.check(&third),
        Err(StreamError::Gap {
            device: writer.device(),
            expected: 2,
            got: 3
        })
    );
    assert_eq!(
        stream.last_seq(),
        1,
        "a refused envelope does not advance the stream"
    );
}

#[test]
fn wrong_prev_hash_at_the_next_seq_is_a_fork() {
    let mut writer = Writer::new();
    let mut stream = StreamVerifier::new(writer.device());
    stream.check(&writer.next()).unwrap();
    let forked = writer.seal_at(
        2,
        EnvelopeHash::from_bytes([7; 32]),
        PayloadKind::Operations,
        b"x",
    );
    assert_eq!(
        stream.check(&forked),
        Err(StreamError::Fork {
            device: writer.device(),
            seq: 2
        })
    );
}

#[test]
fn resumed_cursor_requires_the_chain_to_continue() {
    // The persisted cursor says seq 1 had another hash than the one this writer made.
    let mut writer = Writer::new();
    let mut stream = StreamVerifier::resume(writer.device(), 1, EnvelopeHash::from_bytes([5; 32]));
    writer.next();
    assert_eq!(
        stream.check(&writer.next()),
        Err(StreamError::Fork {
            device: writer.device(),
            seq: 2
        })
    );
}

#[test]
fn replay_of_an_accepted_envelope_is_named() {
    let mut writer = Writer::new();
    let mut stream = StreamVerifier::new(writer.device());
    let first = writer.next();
    stream.check(&first).unwrap();
    stream.check(&writer.next()).unwrap();
    assert_eq!(
        stream.check(&first),
        Err(StreamError::Replay {
            device: writer.device(),
            seq: 1
        })
    );
}

#[test]
fn different_envelope_at_an_accepted_seq_is_a_fork() {
    let mut writer = Writer::new();
    let mut stream = StreamVerifier::new(writer.device());
    stream.check(&writer.next()).unwrap();
    let second = writer.next();
    stream.check(&second).unwrap();
    stream.check(&writer.next()).unwrap();
    // Same position and chain link as the accepted seq 2, other content.
    let rewritten = writer.seal_at(
        2,
        second.header().prev_hash,
        PayloadKind::Operations,
        b"other",
    );
    assert_eq!(
        stream.check(&rewritten),
        Err(StreamError::Fork {
            device: writer.device(),
            seq: 2
        })
    );
}

#[test]
fn seq_older_than_the_window_is_a_rollback() {
    let mut writer = Writer::new();
    let mut stream = StreamVerifier::new(writer.device());
    let first = writer.next();
    stream.check(&first).unwrap();
    for _ in 0..REPLAY_WINDOW {
        stream.check(&writer.next()).unwrap();
    }
    assert_eq!(stream.last_seq(), REPLAY_WINDOW as u64 + 1);
    assert_eq!(
        stream.check(&first),
        Err(StreamError::Rollback {
            device: writer.device(),
            seq: 1
        })
    );
}

#[test]
fn resumed_stream_reports_older_seqs_as_rollback_and_continues() {
    let mut writer = Writer::new();
    let first = writer.next();
    let second = writer.next();
    let mut stream = StreamVerifier::resume(writer.device(), 2, second.hash());
    assert_eq!(
        stream.check(&first),
        Err(StreamError::Rollback {
            device: writer.device(),
            seq: 1
        })
    );
    assert_eq!(
        stream.check(&second),
        Err(StreamError::Replay {
            device: writer.device(),
            seq: 2
        })
    );
    stream.check(&writer.next()).unwrap();
    assert_eq!(stream.last_seq(), 3);
}

#[test]
fn envelope_of_another_device_is_refused() {
    let mut writer = Writer::new();
    let other = Writer::new();
    let mut stream = StreamVerifier::new(other.device());
    assert_eq!(
        stream.check(&writer.next()),
        Err(StreamError::WrongDevice {
            device: other.device(),
            got: writer.device()
        })
    );
}

#[test]
fn snapshot_after_truncation_bridges_the_gap() {
    let mut writer = Writer::new();
    let mut stream = StreamVerifier::new(writer.device());
    stream.check(&writer.next()).unwrap();
    for _ in 2..10 {
        writer.next();
    }
    let snapshot = writer.next_kind(PayloadKind::Snapshot); // seq 10
    let after = writer.next();
    // Without the relay's report, it is a plain gap.
    assert_eq!(
        stream.clone().check(&snapshot),
        Err(StreamError::Gap {
            device: writer.device(),
            expected: 2,
            got: 10
        })
    );
    stream.check_after_truncation(&snapshot, 10, None).unwrap();
    assert_eq!(
        (stream.last_seq(), stream.last_hash()),
        (10, snapshot.hash())
    );
    stream.check_after_truncation(&after, 10, None).unwrap();
    assert_eq!(stream.last_seq(), 11);
    assert_eq!(
        stream.check(&snapshot),
        Err(StreamError::Replay {
            device: writer.device(),
            seq: 10
        })
    );
}

#[test]
fn truncation_gap_without_a_snapshot_is_refused() {
    let mut writer = Writer::new();
    let mut stream = StreamVerifier::new(writer.device());
    stream.check(&writer.next()).unwrap();
    for _ in 2..10 {
        writer.next();
    }
    let operations = writer.next(); // seq 10, not a snapshot
    let device = writer.device();
    assert_eq!(
        stream.check_after_truncation(&operations, 10, None),
        Err(StreamError::GapWithoutSnapshot {
            device,
            expected: 2,
            got: 10
        })
    );
    // A snapshot, but not where the relay says the stream starts.
    let snapshot = writer.next_kind(PayloadKind::Snapshot); // seq 11
    assert_eq!(
        stream.check_after_truncation(&snapshot, 10, None),
        Err(StreamError::GapWithoutSnapshot {
            device,
            expected: 2,
            got: 11
        })
    );
    // The relay says seq 2 is still there: a snapshot does not excuse skipping it.
    assert_eq!(
        stream.check_after_truncation(&snapshot, 2, None),
        Err(StreamError::Gap {
            device,
            expected: 2,
            got: 11
        })
    );
    assert_eq!(stream.last_seq(), 1);
}

#[test]
fn truncation_without_a_gap_is_an_ordinary_check() {
    let mut writer = Writer::new();
    let mut stream = StreamVerifier::new(writer.device());
    stream.check(&writer.next()).unwrap();
    let snapshot = writer.next_kind(PayloadKind::Snapshot); // seq 2 = last + 1
    let forked = writer.seal_at(
        2,
        EnvelopeHash::from_bytes([3; 32]),
        PayloadKind::Snapshot,
        b"s",
    );
    assert_eq!(
        stream.check_after_truncation(&forked, 2, None),
        Err(StreamError::Fork {
            device: writer.device(),
            seq: 2
        })
    );
    stream.check_after_truncation(&snapshot, 2, None).unwrap();
}

#[test]
fn a_snapshot_entered_after_its_first_envelope_is_cut() {
    let mut writer = Writer::new();
    let mut stream = StreamVerifier::new(writer.device());
    stream.check(&writer.next()).unwrap();
    for _ in 2..10 {
        writer.next();
    }
    writer.next_kind(PayloadKind::Snapshot); // seq 10, the snapshot's first envelope
    let second = writer.next_kind(PayloadKind::Snapshot); // seq 11, its second
    let device = writer.device();
    // The relay truncated before 11 and says the stream starts there; the payload of 11
    // says its snapshot starts at 10.
    assert_eq!(
        stream.clone().check_after_truncation(&second, 11, Some(10)),
        Err(StreamError::SnapshotCut {
            device,
            seq: 11,
            starts_at: 10
        })
    );
    // A snapshot that says it starts where the stream starts bridges the gap.
    stream
        .check_after_truncation(&second, 11, Some(11))
        .unwrap();
    assert_eq!(stream.last_seq(), 11);
}

#[test]
fn the_first_seq_is_read_from_a_snapshot_payload() {
    use prost::Message as _;
    let mut snapshot = crate::proto::Snapshot {
        records: vec![crate::proto::RecordState::default(); 3],
        positions: vec![crate::proto::StreamPosition {
            device_id: vec![1; 16],
            seq: 7,
        }],
        first_seq: 0,
        writer_view: None,
    };
    assert_eq!(snapshot_first_seq(&snapshot.encode_to_vec()), None);
    snapshot.first_seq = 42;
    assert_eq!(snapshot_first_seq(&snapshot.encode_to_vec()), Some(42));
    assert_eq!(snapshot_first_seq(&[0x0a, 0x09]), None);
}
