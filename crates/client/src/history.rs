//! The meeting history across contacts, the "take notes after meetings" reminder, and
//! forgetting what one source contributed.
//!
//! Meetings live on each participant's record (`source/calendar`, docs/PROTOCOL.md §8.1) with
//! the other participants by e-mail; [`Device::meetings`] gathers them back into one list and
//! resolves each e-mail to the contact that holds it *now*, so a participant shows as a record
//! id wherever one is known, even after records were merged.

use std::collections::BTreeMap;

use kith_protocol::RecordId;
use kith_protocol::contact::{Contact, Source};
use kith_protocol::record::{FieldKey, FieldWrite};
use serde::Serialize;

use crate::device::Device;
use crate::error::Result;
use crate::import;

/// One participant of a meeting (other than the owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantView {
    /// Their e-mail address as the calendar gave it (lowercased).
    pub email: String,
    /// Their name: the contact's, else the calendar's `CN`.
    pub name: Option<String>,
    /// The contact that holds this e-mail (hex id), if any.
    pub record_id: Option<String>,
    /// Whether the contact's note was written at or after the meeting's end.
    pub noted_since: bool,
}

/// One meeting occurrence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeetingView {
    /// The occurrence id (hex; from the calendar UID and the original start).
    pub id: String,
    /// Start, Unix seconds.
    pub start_unix: i64,
    /// End, Unix seconds.
    pub end_unix: i64,
    /// Title (`SUMMARY`), possibly empty.
    pub title: String,
    /// The participants, by e-mail.
    pub participants: Vec<ParticipantView>,
    /// Some participant with a contact has had no note written since the meeting ended: the
    /// reminder to take notes.
    pub needs_notes: bool,
}

impl Device {
    /// Meetings that started at or after `since_unix`, newest first, from the meetings each
    /// contact keeps in full (the newest `MAX_RECENT_MEETINGS` per contact).
    pub fn meetings(&self, since_unix: i64) -> Result<Vec<MeetingView>> {
        let contacts = self.contacts()?;
        let mut by_email: BTreeMap<String, &Contact> = BTreeMap::new();
        for contact in &contacts {
            for email in contact.emails() {
                by_email
                    .entry(email.address.to_lowercase())
                    .or_insert(contact);
            }
        }
        // When each contact's note was last written (wall-clock ms of its clock).
        let mut noted_ms: BTreeMap<RecordId, Option<u64>> = BTreeMap::new();
        let mut meetings: BTreeMap<Vec<u8>, MeetingView> = BTreeMap::new();
        for contact in &contacts {
            for source in contact.sources() {
                let Source::Calendar(calendar) = source else {
                    continue;
                };
                let own_email = contact
                    .emails()
                    .first()
                    .map(|e| e.address.to_lowercase())
                    .unwrap_or_default();
                for meeting in calendar
                    .recent
                    .iter()
                    .filter(|m| m.start_unix >= since_unix)
                {
                    let view = meetings
                        .entry(meeting.id.clone())
                        .or_insert_with(|| MeetingView {
                            id: hex::encode(&meeting.id),
                            start_unix: meeting.start_unix,
                            end_unix: meeting.end_unix,
                            title: meeting.title.clone(),
                            participants: Vec::new(),
                            needs_notes: false,
                        });
                    let mut add = |email: &str, name: &str| {
                        if view.participants.iter().any(|p| p.email == email) {
                            return;
                        }
                        let known = by_email.get(email).copied();
                        view.participants.push(ParticipantView {
                            email: email.to_owned(),
                            name: known
                                .and_then(Contact::name)
                                .map(str::to_owned)
                                .or_else(|| (!name.is_empty()).then(|| name.to_owned())),
                            record_id: known.map(|c| c.id().to_hex()),
                            noted_since: false,
                        });
                    };
                    if !own_email.is_empty() {
                        add(&own_email, "");
                    }
                    for other in &meeting.participants {
                        add(&other.email, &other.name);
                    }
                }
            }
        }
        let mut out: Vec<MeetingView> = meetings.into_values().collect();
        for meeting in &mut out {
            let end_ms = u64::try_from(meeting.end_unix.max(meeting.start_unix))
                .unwrap_or(0)
                .saturating_mul(1000);
            for participant in &mut meeting.participants {
                let Some(id) = participant
                    .record_id
                    .as_deref()
                    .and_then(RecordId::from_hex)
                else {
                    continue;
                };
                let noted = match noted_ms.get(&id) {
                    Some(noted) => *noted,
                    None => {
                        let noted = self.load_record(&id)?.and_then(|state| {
                            let field = state.field(&FieldKey::note())?;
                            let head = field.winner()?;
                            head.value.map(|_| head.clock.wall_ms())
                        });
                        noted_ms.insert(id, noted);
                        noted
                    }
                };
                participant.noted_since = noted.is_some_and(|ms| ms >= end_ms);
                if !participant.noted_since {
                    meeting.needs_notes = true;
                }
            }
        }
        out.sort_by(|a, b| b.start_unix.cmp(&a.start_unix).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Removes everything `source` contributed, on every device once synced: its
    /// `source/<name>` field on every contact, and every field of the contacts that nothing
    /// else holds (no other source, no note, no tag). Fields a source shares with others (an
    /// e-mail both LinkedIn and the calendar gave) stay. Returns how many contacts lost the
    /// source and how many of them were emptied.
    ///
    /// Removals are ordinary writes without a value, not deletions: a later import of the same
    /// file brings the source back. A contact deleted by hand is a tombstone, and imports never
    /// write to a tombstoned record ([`Device::import`]), so re-importing brings back nothing the
    /// person deleted.
    pub async fn forget_source(&self, source: import::Source) -> Result<(usize, usize)> {
        let key = FieldKey::source(source);
        let mut ops = Vec::new();
        let mut changed = 0;
        let mut emptied = 0;
        for contact in self.contacts()? {
            let from_source = |s: &Source| s.kind() == source;
            if !contact.sources().iter().any(from_source) {
                continue;
            }
            let Some(state) = self.load_record(&contact.id())? else {
                continue;
            };
            let only_source = contact.sources().iter().all(from_source);
            let hand_made = contact.note().is_some() || !contact.tags().is_empty();
            let mut writes = Vec::new();
            if only_source && !hand_made {
                for (field_key, _) in state.values() {
                    writes.push(FieldWrite::remove(
                        field_key.clone(),
                        state.replaces(field_key),
                    ));
                }
                emptied += 1;
            } else {
                writes.push(FieldWrite::remove(key.clone(), state.replaces(&key)));
            }
            changed += 1;
            // Later than every clock of what it removes (docs/PROTOCOL.md §8.2).
            ops.push(self.upsert_after(&state, writes)?);
        }
        self.commit_local(ops).await?;
        Ok((changed, emptied))
    }
}
