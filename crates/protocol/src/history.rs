//! A contact's interaction history from calendars and mail (docs/PROTOCOL.md §8.1).
//!
//! `source/calendar` ([`proto::CalendarSource`]) and `source/mail` ([`proto::MailSource`]) are
//! **bounded join-semilattices** layered on the per-field registers of [`crate::merge`]:
//!
//! - a reader shows the [`join`] of every head of the field (concurrent imports on two devices
//!   leave two heads; their join is what both devices saw);
//! - a writer writes the join of every head it sees with what it adds, replacing those heads, so
//!   every write is at least what it replaced and the field converges on the union of all
//!   imports, whatever the delivery order.
//!
//! The joins are commutative, associative and idempotent (property-tested below). Sizes are
//! bounded: the newest [`MAX_RECENT_MEETINGS`] meetings and [`MAX_RECENT_SUBJECTS`] subjects in
//! full, and every meeting or message counted by a [`proto::CountSketch`] of at most
//! [`SKETCH_K`] hashes: exact up to `SKETCH_K` elements, an estimate (about ±13 %) beyond.
//! Counting element hashes rather than adding numbers is what makes overlapping imports merge
//! right: the same message seen by two devices, or imported twice, is counted once.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use prost::Message;

use crate::encoding::hash;
use crate::proto;

/// Most element hashes a [`proto::CountSketch`] keeps.
pub const SKETCH_K: usize = 64;
/// Most meetings `source/calendar` keeps in full (the newest).
pub const MAX_RECENT_MEETINGS: usize = 20;
/// Most other participants one meeting lists.
pub const MAX_MEETING_PARTICIPANTS: usize = 20;
/// Most subjects `source/mail` keeps (the newest).
pub const MAX_RECENT_SUBJECTS: usize = 10;
/// Length of a meeting id.
pub const MEETING_ID_BYTES: usize = 16;

/// Label of [`meeting_id`].
const MEETING_LABEL: &str = "kith/v1/meeting";
/// Label of [`mail_message_hash`].
const MAIL_LABEL: &str = "kith/v1/mail-message";

/// The id of one occurrence of a calendar event: `H("kith/v1/meeting", UID, occurrence)[..16]`,
/// where `occurrence` is the decimal Unix time of the occurrence's original start (its
/// `RECURRENCE-ID`, or `DTSTART` for a single event). Two devices importing the same calendar
/// derive the same ids.
pub fn meeting_id(uid: &str, occurrence_unix: i64) -> [u8; MEETING_ID_BYTES] {
    let digest = hash(
        MEETING_LABEL,
        &[uid.as_bytes(), occurrence_unix.to_string().as_bytes()],
    );
    let mut id = [0u8; MEETING_ID_BYTES];
    id.copy_from_slice(&digest[..MEETING_ID_BYTES]);
    id
}

/// The hash that counts one mail message: `H("kith/v1/mail-message", identity)[..8]`, big
/// endian, where `identity` is the `Message-ID` without angle brackets, or, for a message
/// without one, a digest of its date, sender and subject (see the mail importer).
pub fn mail_message_hash(identity: &str) -> u64 {
    let digest = hash(MAIL_LABEL, &[identity.as_bytes()]);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The sketch element of a meeting: the first 8 bytes of its id, big endian.
pub fn meeting_hash(id: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    let n = id.len().min(8);
    first[..n].copy_from_slice(&id[..n]);
    u64::from_be_bytes(first)
}

/// Adds one element hash to a sketch.
pub fn sketch_insert(sketch: &mut proto::CountSketch, element: u64) {
    if let Err(at) = sketch.hashes.binary_search(&element) {
        sketch.hashes.insert(at, element);
        if sketch.hashes.len() > SKETCH_K {
            sketch.hashes.truncate(SKETCH_K);
            sketch.saturated = true;
        }
    }
}

/// The join of two sketches: the `SKETCH_K` smallest hashes of their union.
pub fn sketch_join(a: &proto::CountSketch, b: &proto::CountSketch) -> proto::CountSketch {
    let mut hashes: Vec<u64> = a.hashes.iter().chain(&b.hashes).copied().collect();
    hashes.sort_unstable();
    hashes.dedup();
    let saturated = a.saturated || b.saturated || hashes.len() > SKETCH_K;
    hashes.truncate(SKETCH_K);
    proto::CountSketch { hashes, saturated }
}

/// How many elements the sketch has seen: exact while it is not saturated, otherwise the
/// K-minimum-values estimate `(K − 1) · 2⁶⁴ / h_K` (never less than `K`).
pub fn sketch_count(sketch: &proto::CountSketch) -> u64 {
    let kept = sketch.hashes.len() as u64;
    if !sketch.saturated || sketch.hashes.len() < 2 {
        return kept;
    }
    let largest = sketch.hashes.last().copied().unwrap_or(u64::MAX).max(1);
    let estimate = ((kept - 1) as f64) * 2f64.powi(64) / (largest as f64);
    // A float above u64::MAX saturates in `as`.
    (estimate.round() as u64).max(kept)
}

/// Whether a sketch is in canonical form: at most `SKETCH_K` hashes, strictly increasing.
pub fn sketch_is_valid(sketch: &proto::CountSketch) -> bool {
    sketch.hashes.len() <= SKETCH_K && sketch.hashes.windows(2).all(|w| w[0] < w[1])
}

fn min_known(a: i64, b: i64) -> i64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// Of two versions of one element, the one a join keeps: by `rank`, then by encoding, so every
/// device picks the same one.
fn prefer<T: Message + Clone>(a: &T, b: &T, rank: impl Fn(&T) -> i64) -> T {
    match rank(a)
        .cmp(&rank(b))
        .then_with(|| a.encode_to_vec().cmp(&b.encode_to_vec()))
    {
        Ordering::Less => b.clone(),
        _ => a.clone(),
    }
}

/// The join of two calendar histories.
pub fn join_calendar(
    a: &proto::CalendarSource,
    b: &proto::CalendarSource,
) -> proto::CalendarSource {
    // Ordered by (occurrence, id): both fixed by the id, so the newest N is a lattice.
    let mut by_key: BTreeMap<(i64, Vec<u8>), proto::Meeting> = BTreeMap::new();
    for meeting in a.recent.iter().chain(&b.recent) {
        let key = (meeting.occurrence_unix, meeting.id.clone());
        let kept = match by_key.get(&key) {
            Some(other) => prefer(other, meeting, |m| i64::from(m.sequence)),
            None => meeting.clone(),
        };
        by_key.insert(key, kept);
    }
    let recent: Vec<proto::Meeting> = by_key
        .into_values()
        .rev()
        .take(MAX_RECENT_MEETINGS)
        .collect();
    let meetings = sketch_join(
        a.meetings
            .as_ref()
            .unwrap_or(&proto::CountSketch::default()),
        b.meetings
            .as_ref()
            .unwrap_or(&proto::CountSketch::default()),
    );
    proto::CalendarSource {
        recent,
        meetings: Some(meetings),
        first_unix: min_known(a.first_unix, b.first_unix),
        last_unix: a.last_unix.max(b.last_unix),
    }
}

/// The join of two mail histories.
pub fn join_mail(a: &proto::MailSource, b: &proto::MailSource) -> proto::MailSource {
    let mut by_key: BTreeMap<(i64, u64), proto::MailSubject> = BTreeMap::new();
    for subject in a.recent.iter().chain(&b.recent) {
        let key = (subject.date_unix, subject.message);
        let kept = match by_key.get(&key) {
            Some(other) => prefer(other, subject, |_| 0),
            None => subject.clone(),
        };
        by_key.insert(key, kept);
    }
    let empty = proto::CountSketch::default();
    proto::MailSource {
        sent: Some(sketch_join(
            a.sent.as_ref().unwrap_or(&empty),
            b.sent.as_ref().unwrap_or(&empty),
        )),
        received: Some(sketch_join(
            a.received.as_ref().unwrap_or(&empty),
            b.received.as_ref().unwrap_or(&empty),
        )),
        first_unix: min_known(a.first_unix, b.first_unix),
        last_unix: a.last_unix.max(b.last_unix),
        recent: by_key
            .into_values()
            .rev()
            .take(MAX_RECENT_SUBJECTS)
            .collect(),
    }
}

/// The join of two values of a joined field (`source/calendar`, `source/mail`); `None` when
/// the values are not two of the same joined type (then the caller keeps plain
/// last-writer-wins).
pub fn join(a: &proto::FieldValue, b: &proto::FieldValue) -> Option<proto::FieldValue> {
    use proto::field_value::Value;
    let value = match (a.value.as_ref()?, b.value.as_ref()?) {
        (Value::Calendar(a), Value::Calendar(b)) => Value::Calendar(join_calendar(a, b)),
        (Value::Mail(a), Value::Mail(b)) => Value::Mail(join_mail(a, b)),
        _ => return None,
    };
    Some(proto::FieldValue { value: Some(value) })
}

/// The join of several values (the heads of one field), skipping removals; `None` if there is
/// no value. Values that do not join (another type) are left out after the first.
pub fn join_all<'a>(
    values: impl IntoIterator<Item = Option<&'a proto::FieldValue>>,
) -> Option<proto::FieldValue> {
    let mut out: Option<proto::FieldValue> = None;
    for value in values.into_iter().flatten() {
        out = Some(match out {
            None => value.clone(),
            Some(acc) => join(&acc, value).unwrap_or(acc),
        });
    }
    out
}

/// Whether a calendar history is within bounds and canonical (checked on every write received).
pub fn calendar_is_valid(calendar: &proto::CalendarSource) -> bool {
    calendar.recent.len() <= MAX_RECENT_MEETINGS
        && calendar.recent.iter().all(|m| {
            m.id.len() == MEETING_ID_BYTES && m.participants.len() <= MAX_MEETING_PARTICIPANTS
        })
        && calendar.meetings.as_ref().is_none_or(sketch_is_valid)
}

/// Whether a mail history is within bounds and canonical.
pub fn mail_is_valid(mail: &proto::MailSource) -> bool {
    mail.recent.len() <= MAX_RECENT_SUBJECTS
        && mail.sent.as_ref().is_none_or(sketch_is_valid)
        && mail.received.as_ref().is_none_or(sketch_is_valid)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sketch_of(elements: impl IntoIterator<Item = u64>) -> proto::CountSketch {
        let mut sketch = proto::CountSketch::default();
        for e in elements {
            sketch_insert(&mut sketch, e);
        }
        sketch
    }

    #[test]
    fn small_sets_are_counted_exactly_and_once() {
        let a = sketch_of([5, 1, 9, 5]);
        let b = sketch_of([9, 2]);
        assert_eq!(sketch_count(&a), 3);
        assert_eq!(sketch_count(&sketch_join(&a, &b)), 4, "9 is in both");
        assert!(sketch_is_valid(&sketch_join(&a, &b)));
    }

    #[test]
    fn large_sets_are_estimated_within_a_few_tenths() {
        for n in [100u64, 1_000, 100_000] {
            let sketch = sketch_of((0..n).map(|i| mail_message_hash(&format!("<{i}@x>"))));
            assert!(sketch.saturated);
            assert_eq!(sketch.hashes.len(), SKETCH_K);
            let estimate = sketch_count(&sketch) as f64;
            let error = (estimate - n as f64).abs() / n as f64;
            assert!(error < 0.4, "n = {n}, estimate {estimate}");
        }
    }

    #[test]
    fn meeting_ids_differ_by_uid_and_occurrence() {
        assert_eq!(meeting_id("a@x", 1), meeting_id("a@x", 1));
        assert_ne!(meeting_id("a@x", 1), meeting_id("a@x", 2));
        assert_ne!(meeting_id("a@x", 1), meeting_id("b@x", 1));
    }

    fn arb_meeting() -> impl Strategy<Value = proto::Meeting> {
        (0u8..30, 0u32..3, "[a-c]{0,2}").prop_map(|(n, sequence, title)| {
            let occurrence = i64::from(n) * 1000;
            proto::Meeting {
                id: meeting_id("u", occurrence).to_vec(),
                occurrence_unix: occurrence,
                start_unix: occurrence,
                end_unix: occurrence + 60,
                title,
                participants: Vec::new(),
                sequence,
            }
        })
    }

    fn arb_calendar() -> impl Strategy<Value = proto::CalendarSource> {
        prop::collection::vec(arb_meeting(), 0..30).prop_map(|meetings| {
            let mut out = proto::CalendarSource::default();
            for m in meetings {
                let mut one = proto::CalendarSource {
                    meetings: Some(sketch_of([meeting_hash(&m.id)])),
                    first_unix: m.start_unix.max(1),
                    last_unix: m.start_unix.max(1),
                    ..Default::default()
                };
                one.recent.push(m);
                out = join_calendar(&out, &one);
            }
            out
        })
    }

    fn arb_mail() -> impl Strategy<Value = proto::MailSource> {
        prop::collection::vec((0u64..200, any::<bool>(), "[a-c]{0,2}"), 0..40).prop_map(|msgs| {
            let mut out = proto::MailSource::default();
            for (n, sent, subject) in msgs {
                let h = mail_message_hash(&n.to_string());
                let one = proto::MailSource {
                    sent: Some(sketch_of(sent.then_some(h))),
                    received: Some(sketch_of((!sent).then_some(h))),
                    first_unix: n as i64 + 1,
                    last_unix: n as i64 + 1,
                    recent: vec![proto::MailSubject {
                        message: h,
                        date_unix: n as i64,
                        subject,
                        sent,
                    }],
                };
                out = join_mail(&out, &one);
            }
            out
        })
    }

    proptest! {
        #[test]
        fn calendar_join_is_a_semilattice(a in arb_calendar(), b in arb_calendar(), c in arb_calendar()) {
            prop_assert_eq!(join_calendar(&a, &b), join_calendar(&b, &a));
            prop_assert_eq!(
                join_calendar(&join_calendar(&a, &b), &c),
                join_calendar(&a, &join_calendar(&b, &c))
            );
            let ab = join_calendar(&a, &b);
            prop_assert_eq!(join_calendar(&ab, &ab), ab.clone());
            prop_assert!(calendar_is_valid(&ab));
        }

        #[test]
        fn mail_join_is_a_semilattice(a in arb_mail(), b in arb_mail(), c in arb_mail()) {
            prop_assert_eq!(join_mail(&a, &b), join_mail(&b, &a));
            prop_assert_eq!(join_mail(&join_mail(&a, &b), &c), join_mail(&a, &join_mail(&b, &c)));
            let ab = join_mail(&a, &b);
            prop_assert_eq!(join_mail(&ab, &ab), ab.clone());
            prop_assert!(mail_is_valid(&ab));
        }

        #[test]
        fn sketch_join_equals_the_sketch_of_the_union(
            a in prop::collection::vec(any::<u64>(), 0..150),
            b in prop::collection::vec(any::<u64>(), 0..150),
        ) {
            let joined = sketch_join(&sketch_of(a.clone()), &sketch_of(b.clone()));
            prop_assert_eq!(joined, sketch_of(a.into_iter().chain(b)));
        }
    }
}
