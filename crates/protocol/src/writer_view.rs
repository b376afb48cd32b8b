//! What a writer had when it sealed an envelope: the roster it wrote under and the highest seq
//! it had merged of every other device's stream (docs/PROTOCOL.md §4, "Forks and held-back
//! rosters"). It travels inside the signed and encrypted payload (field 4 of both
//! `OperationBatch` and `Snapshot`), so only members read it and nobody can alter it; a
//! receiver compares it with what the relay served it, to tell when the relay holds back a
//! newer roster or envelopes another device already merged.

use prost::Message;

use crate::ids::DeviceId;
use crate::limits::MAX_DEVICES;
use crate::proto;

/// The payload field (in `OperationBatch` and in `Snapshot`) that carries the writer's view.
const FIELD: u32 = 4;

/// A writer's roster and stream heads when it sealed an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterView {
    /// The version of the roster the writer held.
    pub roster_version: u64,
    /// `H("kith/v1/roster-hash", that roster's encoding)` ([`crate::roster::VerifiedRoster::hash`]).
    pub roster_hash: [u8; 32],
    /// The highest seq the writer merged of each other device's stream, sorted by device id,
    /// at most one per device of a roster ([`MAX_DEVICES`]), every seq at least 1.
    pub heads: Vec<(DeviceId, u64)>,
}

/// Why a writer's view was refused: the writer (a member, whose signature covers it) wrote
/// something no Kith writer writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriterViewError {
    /// The payload's view field does not decode.
    #[error("the writer's view in the payload does not decode")]
    Malformed,
    /// The roster version is 0 (rosters start at 1).
    #[error("the writer's view names roster version 0")]
    ZeroRosterVersion,
    /// The roster hash is not 32 bytes.
    #[error("the writer's view names a roster hash of {len} bytes, not 32")]
    RosterHashLength {
        /// Its length.
        len: usize,
    },
    /// More heads than a roster holds devices.
    #[error("the writer's view lists {count} stream heads, more than {max}", max = MAX_DEVICES)]
    TooManyHeads {
        /// How many it lists.
        count: usize,
    },
    /// A head names a device id that is not 16 bytes.
    #[error("the writer's view names a device id of {len} bytes, not 16")]
    DeviceIdLength {
        /// Its length.
        len: usize,
    },
    /// Heads not sorted by device id, or one device listed twice.
    #[error("the writer's view lists device {device} out of order or twice")]
    Unsorted {
        /// The device listed out of order.
        device: DeviceId,
    },
    /// A head at seq 0 (a stream merged nothing of is left out).
    #[error("the writer's view states seq 0 for device {device}")]
    ZeroSeq {
        /// The device.
        device: DeviceId,
    },
}

/// A payload (`OperationBatch` or `Snapshot`) with every field but the writer's view skipped on
/// decoding: the records are skipped by their lengths.
#[derive(Clone, PartialEq, prost::Message)]
struct ViewOnly {
    #[prost(message, optional, tag = "4")]
    writer_view: Option<proto::WriterView>,
}

impl WriterView {
    /// The view as its protobuf message.
    pub fn to_proto(&self) -> proto::WriterView {
        proto::WriterView {
            roster_version: self.roster_version,
            roster_hash: self.roster_hash.to_vec(),
            heads: self
                .heads
                .iter()
                .map(|(device, seq)| proto::StreamPosition {
                    device_id: device.as_bytes().to_vec(),
                    seq: *seq,
                })
                .collect(),
        }
    }

    /// Appends the view to an encoded `OperationBatch` or `Snapshot` as its field 4 (a field
    /// may follow the others in any order; readers that predate it skip it).
    pub fn append_to(&self, payload: &mut Vec<u8>) {
        prost::encoding::message::encode(FIELD, &self.to_proto(), payload);
    }

    /// The view a payload (an opened `OperationBatch` or `Snapshot`) carries, `None` when it
    /// carries none (writers before 0.2). Reads only that field.
    pub fn read(payload: &[u8]) -> Result<Option<Self>, WriterViewError> {
        let only = ViewOnly::decode(payload).map_err(|_| WriterViewError::Malformed)?;
        only.writer_view.map(Self::from_proto).transpose()
    }

    /// Checks a decoded view: every rule of [`WriterViewError`].
    pub fn from_proto(view: proto::WriterView) -> Result<Self, WriterViewError> {
        if view.roster_version == 0 {
            return Err(WriterViewError::ZeroRosterVersion);
        }
        let roster_hash: [u8; 32] = view.roster_hash.as_slice().try_into().map_err(|_| {
            WriterViewError::RosterHashLength {
                len: view.roster_hash.len(),
            }
        })?;
        if view.heads.len() > MAX_DEVICES {
            return Err(WriterViewError::TooManyHeads {
                count: view.heads.len(),
            });
        }
        let mut heads: Vec<(DeviceId, u64)> = Vec::with_capacity(view.heads.len());
        for head in &view.heads {
            let device = DeviceId::from_slice(&head.device_id).map_err(|_| {
                WriterViewError::DeviceIdLength {
                    len: head.device_id.len(),
                }
            })?;
            if heads.last().is_some_and(|(last, _)| *last >= device) {
                return Err(WriterViewError::Unsorted { device });
            }
            if head.seq == 0 {
                return Err(WriterViewError::ZeroSeq { device });
            }
            heads.push((device, head.seq));
        }
        Ok(Self {
            roster_version: view.roster_version,
            roster_hash,
            heads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(byte: u8) -> DeviceId {
        DeviceId::from_slice(&[byte; 16]).unwrap()
    }

    fn view() -> WriterView {
        WriterView {
            roster_version: 3,
            roster_hash: [7; 32],
            heads: vec![(device(1), 5), (device(2), 1)],
        }
    }

    #[test]
    fn a_view_appended_to_a_batch_or_snapshot_is_read_back_and_skipped_by_older_readers() {
        let batch = crate::record::encode_batch_written_at(&[], 42).unwrap();
        let mut with_view = batch.clone();
        view().append_to(&mut with_view);
        assert_eq!(WriterView::read(&with_view).unwrap(), Some(view()));
        assert_eq!(WriterView::read(&batch).unwrap(), None);
        let decoded = proto::OperationBatch::decode(with_view.as_slice()).unwrap();
        assert_eq!(decoded.written_at_ms, 42);
        assert_eq!(decoded.writer_view, Some(view().to_proto()));

        let snapshot = proto::Snapshot {
            first_seq: 9,
            ..Default::default()
        };
        let mut bytes = snapshot.encode_to_vec();
        view().append_to(&mut bytes);
        assert_eq!(WriterView::read(&bytes).unwrap(), Some(view()));
        assert_eq!(crate::stream::snapshot_first_seq(&bytes), Some(9));
    }

    #[test]
    fn malformed_views_are_refused_with_what_is_wrong() {
        let refuse = |edit: &dyn Fn(&mut proto::WriterView)| {
            let mut wire = view().to_proto();
            edit(&mut wire);
            WriterView::from_proto(wire).unwrap_err()
        };
        assert_eq!(
            refuse(&|v| v.roster_version = 0),
            WriterViewError::ZeroRosterVersion
        );
        assert_eq!(
            refuse(&|v| v.roster_hash.pop().map(drop).unwrap_or(())),
            WriterViewError::RosterHashLength { len: 31 }
        );
        assert_eq!(
            refuse(&|v| v.heads.reverse()),
            WriterViewError::Unsorted { device: device(1) }
        );
        assert_eq!(
            refuse(&|v| v.heads[1].seq = 0),
            WriterViewError::ZeroSeq { device: device(2) }
        );
        assert_eq!(
            refuse(&|v| v.heads[0].device_id.push(0)),
            WriterViewError::DeviceIdLength { len: 17 }
        );
        assert_eq!(
            refuse(&|v| {
                v.heads = (0..=MAX_DEVICES as u8)
                    .map(|b| proto::StreamPosition {
                        device_id: vec![b; 16],
                        seq: 1,
                    })
                    .collect()
            }),
            WriterViewError::TooManyHeads {
                count: MAX_DEVICES + 1
            }
        );
        assert_eq!(
            WriterView::read(&[0x22, 0x05, 0x08]).unwrap_err(),
            WriterViewError::Malformed
        );
    }
}
