//! The contacts API: add, edit, delete, get, list, search and conflicts; importing an
//! [`ImportReport`] into the store; exporting vCard.
//!
//! Every local change is applied to the merged state and queued as a pending operation in one
//! durable store transaction, so an acknowledged edit survives a crash and is pushed once.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use kith_protocol::RecordId;
use kith_protocol::contact::Contact;
use kith_protocol::hlc::Hlc;
use kith_protocol::merge::{Groups, RecordState};
use kith_protocol::proto::{self, field_value::Value};
use kith_protocol::record::{self, FieldKey, FieldWrite, Operation};
use serde::Serialize;
use unicode_normalization::UnicodeNormalization;

use crate::device::Device;
use crate::error::{ClientError, Result};
use crate::import::{ImportError, ImportReport, ImportedContact, phone::Region};
use crate::pipeline::{RecordPipeline, Records, WriteGroup};
use crate::store::{StoreTxn, TreeName};

/// Fields of a new contact, or the fields to change in an edit (`None` = leave as is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactFields {
    /// Full name.
    pub name: Option<String>,
    /// An e-mail address to add.
    pub email: Option<String>,
    /// A phone number to add (any format; normalized to E.164).
    pub phone: Option<String>,
    /// Company.
    pub company: Option<String>,
    /// Private note.
    pub note: Option<String>,
}

/// What an edit removes, and how it reads phone numbers: the rest of an edit besides the
/// values [`ContactFields`] sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EditOptions {
    /// Fields to clear.
    pub clear: Vec<ClearField>,
    /// E-mail addresses to remove.
    pub remove_emails: Vec<String>,
    /// Phone numbers to remove, in any format [`ContactFields::phone`] accepts.
    pub remove_phones: Vec<String>,
    /// The region assumed for phone numbers written without a country code (default: US).
    pub region: Option<Region>,
}

/// A date as `YYYY-MM-DD`, or `--MM-DD` when the year is unknown (vCard's form): how the
/// CLI and the app bindings show a birthday.
pub fn date_text(date: &proto::Date) -> String {
    if date.year == 0 {
        format!("--{:02}-{:02}", date.month, date.day)
    } else {
        format!("{:04}-{:02}-{:02}", date.year, date.month, date.day)
    }
}

clear_field_enum! {
    /// A field an edit can clear (also `kith contacts edit --clear`'s values, with the `clap`
    /// feature). Its variants are defined in `mirror.rs`, which the app bindings' copy shares.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    #[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
    pub enum ClearField
}

impl ClearField {
    /// The field's name as people type it (`company`, `emails` …).
    pub fn name(self) -> &'static str {
        match self {
            ClearField::Company => "company",
            ClearField::Title => "title",
            ClearField::Birthday => "birthday",
            ClearField::Note => "note",
            ClearField::Emails => "emails",
            ClearField::Phones => "phones",
        }
    }

    /// Whether `key` is (one of) this field's keys.
    fn covers(self, key: &FieldKey) -> bool {
        match self {
            ClearField::Company => *key == FieldKey::company(),
            ClearField::Title => *key == FieldKey::title(),
            ClearField::Birthday => *key == FieldKey::birthday(),
            ClearField::Note => *key == FieldKey::note(),
            ClearField::Emails => key.kind() == record::FieldKind::Email,
            ClearField::Phones => key.kind() == record::FieldKind::Phone,
        }
    }
}

/// A concurrent edit the merge kept: the winning value and the one it beat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConflictView {
    /// The record (hex id).
    pub id: String,
    /// The field key.
    pub field: String,
    /// The value shown.
    pub winner: String,
    /// The concurrent value that lost.
    pub other: String,
}

/// What an import did, in the counts every import ends with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// New contacts.
    pub added: usize,
    /// Existing contacts that gained or changed fields.
    pub updated: usize,
    /// Contacts already up to date.
    pub unchanged: usize,
    /// Rows or records the importer skipped (with line numbers in the report).
    pub skipped: usize,
    /// Records linked to another record as the same person (by the identity rule, §8.4).
    pub merged: usize,
    /// Contacts left out: those a source records only on an existing contact (people who only
    /// wrote to you, one-way Twitter follows) that matched none, and those deleted by hand (an
    /// import never brings a deleted contact back).
    pub left_out: usize,
}

/// Contacts merged per chunk of an import; the records of several chunks are committed in one
/// transaction ([`WriteGroup`]).
const IMPORT_CHUNK: usize = 2_000;

impl Device {
    /// Adds a contact; returns its id.
    pub async fn add_contact(&self, fields: &ContactFields) -> Result<RecordId> {
        self.add_contact_in(fields, None).await
    }

    /// [`Device::add_contact`] with phone numbers written without a country code read as
    /// numbers of `region` (default: US).
    pub async fn add_contact_in(
        &self,
        fields: &ContactFields,
        region: Option<Region>,
    ) -> Result<RecordId> {
        let mut id = [0u8; 16];
        rand_core::Rng::fill_bytes(&mut kith_protocol::keys::system_rng(), &mut id);
        let id = RecordId::from_bytes(id);
        let options = EditOptions {
            region,
            ..EditOptions::default()
        };
        let writes = self.writes_for(&RecordState::new(id), fields, &options)?;
        if writes.is_empty() {
            return Err(ClientError::InvalidInput(
                "a contact needs at least one field (e.g. --name)".into(),
            ));
        }
        let op = Operation::upsert(id, self.write_clock(None)?, writes)?;
        self.commit_local(vec![op]).await?;
        Ok(id)
    }

    /// Changes fields of a contact. Each write replaces the values this device sees, so an
    /// edit after a sync is never reported as a conflict with what it replaced, and its clock
    /// is later than every clock of those fields, so it wins even over a value written by a
    /// device whose date is far ahead (docs/PROTOCOL.md §8).
    pub async fn edit_contact(&self, id: &RecordId, fields: &ContactFields) -> Result<()> {
        self.edit_contact_with(id, fields, &EditOptions::default())
            .await
            .map(|_| ())
    }

    /// [`Device::edit_contact`] that also clears fields and removes e-mail addresses or phone
    /// numbers ([`EditOptions`]). Returns whether anything changed (`false`: the contact
    /// already had these values). Removing a value the contact does not have is an error.
    pub async fn edit_contact_with(
        &self,
        id: &RecordId,
        fields: &ContactFields,
        options: &EditOptions,
    ) -> Result<bool> {
        let ops = self.edit_ops(id, fields, options)?;
        if ops.is_empty() {
            return Ok(false);
        }
        self.commit_local(ops).await?;
        Ok(true)
    }

    /// The operations of an edit of `id`'s contact: computed against the merged contact shown
    /// and written to the records of its group that hold each field (§8.4).
    fn edit_ops(
        &self,
        id: &RecordId,
        fields: &ContactFields,
        options: &EditOptions,
    ) -> Result<Vec<Operation>> {
        let mut touched = BTreeMap::new();
        let (members, view) = self.live_group(&mut touched, id)?;
        let writes = self.writes_for(&view, fields, options)?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        crate::merging::group_writes(self, &touched, &members, &view, view.id(), writes)
    }

    /// The group of `id` and the merged state shown for it; an error if it is not live.
    fn live_group(
        &self,
        touched: &mut BTreeMap<RecordId, RecordState>,
        id: &RecordId,
    ) -> Result<(Vec<RecordId>, RecordState)> {
        self.load_group(touched, id)?
            .ok_or_else(|| ClientError::UnknownContact(id.to_hex()))
    }

    /// An upsert of `writes` on `current`, with a clock later than everything this device
    /// merged for the fields written (and the record's deletion).
    pub(crate) fn upsert_after(
        &self,
        current: &RecordState,
        writes: Vec<FieldWrite>,
    ) -> Result<Operation> {
        let floor = current.latest_clock_of(writes.iter().map(FieldWrite::key));
        Ok(Operation::upsert(
            current.id(),
            self.write_clock(floor)?,
            writes,
        )?)
    }

    /// Changes many contacts at once: one transaction and one flush for the whole batch, which
    /// is what an app should use for bulk edits. Ids that are not live contacts are an error
    /// and nothing is changed.
    pub async fn edit_contacts(&self, edits: &[(RecordId, ContactFields)]) -> Result<()> {
        let mut ops = Vec::with_capacity(edits.len());
        for (id, fields) in edits {
            ops.extend(self.edit_ops(id, fields, &EditOptions::default())?);
        }
        self.commit_local(ops).await
    }

    /// Deletes a contact (a tombstone that every device converges on), and every record merged
    /// into it. Each clock is later than every clock of its record, so it hides everything
    /// this device has seen.
    pub async fn delete_contact(&self, id: &RecordId) -> Result<()> {
        let mut touched = BTreeMap::new();
        let (members, _) = self.live_group(&mut touched, id)?;
        let mut ops = Vec::with_capacity(members.len());
        for member in members {
            let latest = touched.get(&member).and_then(RecordState::latest_clock);
            ops.push(Operation::delete(member, self.write_clock(latest)?));
        }
        self.commit_local(ops).await
    }

    /// Resolves a conflict by writing `value` for `field`, replacing every value seen.
    pub async fn resolve_conflict(&self, id: &RecordId, field: &str, value: &str) -> Result<()> {
        let mut touched = BTreeMap::new();
        let (members, view) = self.live_group(&mut touched, id)?;
        let key = FieldKey::parse(field)?;
        let write = FieldWrite::set(key.clone(), record::value::text(value), view.replaces(&key))?;
        let ops =
            crate::merging::group_writes(self, &touched, &members, &view, view.id(), vec![write])?;
        self.commit_local(ops).await
    }

    fn writes_for(
        &self,
        current: &RecordState,
        fields: &ContactFields,
        options: &EditOptions,
    ) -> Result<Vec<FieldWrite>> {
        let region = options.region.unwrap_or_default();
        let e164 = |phone: &str| {
            crate::import::phone::to_e164(phone, region).ok_or_else(|| {
                ClientError::InvalidInput(format!(
                    "'{phone}' is not a phone number in region {region} (write it as \
                     +<country><number>, or set the region of national numbers)"
                ))
            })
        };
        let mut writes = Vec::new();
        // Removals first: `--clear phones --phone NEW` replaces every number with the new one.
        let mut removed = BTreeSet::new();
        for field in &options.clear {
            for (key, _) in current.values().filter(|(key, _)| field.covers(key)) {
                if removed.insert(key.clone()) {
                    writes.push(FieldWrite::remove(key.clone(), current.replaces(key)));
                }
            }
        }
        for email in &options.remove_emails {
            let key = FieldKey::email(email)?;
            if current.value(&key).is_none() {
                return Err(ClientError::InvalidInput(format!(
                    "the contact has no e-mail address '{}'",
                    email.trim()
                )));
            }
            if removed.insert(key.clone()) {
                writes.push(FieldWrite::remove(key.clone(), current.replaces(&key)));
            }
        }
        for phone in &options.remove_phones {
            let key = FieldKey::phone(&e164(phone)?)?;
            if current.value(&key).is_none() {
                return Err(ClientError::InvalidInput(format!(
                    "the contact has no phone number '{}'",
                    phone.trim()
                )));
            }
            if removed.insert(key.clone()) {
                writes.push(FieldWrite::remove(key.clone(), current.replaces(&key)));
            }
        }
        let mut set = |key: FieldKey, value: proto::FieldValue| -> Result<()> {
            if removed.contains(&key) || current.value(&key) != Some(&value) {
                writes.retain(|write| write.key() != &key);
                writes.push(FieldWrite::set(key.clone(), value, current.replaces(&key))?);
            }
            Ok(())
        };
        if let Some(name) = given(&fields.name, "name")? {
            set(FieldKey::name(), record::value::text(name))?;
        }
        if let Some(company) = given(&fields.company, "company")? {
            set(FieldKey::company(), record::value::text(company))?;
        }
        if let Some(note) = given(&fields.note, "note")? {
            set(FieldKey::note(), record::value::text(note))?;
        }
        if let Some(email) = given(&fields.email, "email")? {
            if !email.contains('@') {
                return Err(ClientError::InvalidInput(format!(
                    "'{email}' is not an e-mail address"
                )));
            }
            set(
                FieldKey::email(email)?,
                record::value::email(email.to_lowercase(), ""),
            )?;
        }
        if let Some(phone) = given(&fields.phone, "phone")? {
            let e164 = e164(phone)?;
            set(
                FieldKey::phone(&e164)?,
                record::value::phone(e164.clone(), ""),
            )?;
        }
        Ok(writes)
    }

    /// Applies operations to the merged state and queues them for the next sync, atomically,
    /// then flushes so they survive a crash.
    pub(crate) async fn commit_local(&self, ops: Vec<Operation>) -> Result<()> {
        let mut touched: BTreeMap<RecordId, RecordState> = BTreeMap::new();
        if ops.is_empty() {
            return Ok(());
        }
        {
            let _records = self.inner.records_lock.lock().await;
            for op in &ops {
                let state = self.loaded(&mut touched, op.record())?;
                state.apply(op);
            }
            self.write_local(&ops, &touched)?;
            self.persist_clock()?;
        }
        self.inner.store.flush().await?;
        // The identity rule holds for contacts added or edited by hand too (§8.4).
        let identities = crate::merging::written_identities(&touched);
        self.link_written(touched.into_keys().collect(), &identities)
            .await?;
        Ok(())
    }

    /// Queues `ops` as pending operations (one entry per envelope's worth) and writes the
    /// record states they produced, in one store transaction: after a crash either both are
    /// there or neither, so a record never shows a change that is not queued for the relay.
    pub(crate) fn write_local(
        &self,
        ops: &[Operation],
        records: &BTreeMap<RecordId, RecordState>,
    ) -> Result<()> {
        self.write_local_sealed(ops, records, &self.seal_records(records))
    }

    /// Each record's encoded state, sealed for its place in the store.
    pub(crate) fn seal_records(
        &self,
        records: &BTreeMap<RecordId, RecordState>,
    ) -> Vec<([u8; 16], Vec<u8>)> {
        let cipher = self.inner.store.cipher();
        records
            .iter()
            .map(|(id, state)| (*id.as_bytes(), cipher.seal_record(id, state)))
            .collect()
    }

    /// [`Device::write_local`] with the records (in id order) already sealed
    /// ([`Device::seal_records`]).
    pub(crate) fn write_local_sealed(
        &self,
        ops: &[Operation],
        records: &Records,
        record_values: &[([u8; 16], Vec<u8>)],
    ) -> Result<()> {
        let batches = encode_batches(ops)?;
        self.inner.store.transaction(|tx| {
            crate::pipeline::write_records_in(
                tx,
                records
                    .iter()
                    .zip(record_values)
                    .map(|((id, state), (_, sealed))| (id, state, Some(sealed.as_slice()))),
                None,
            )?;
            for batch in &batches {
                // Monotonic across restarts and processes, so pending keys sort in creation
                // order.
                let key = tx.next_id()?.to_be_bytes();
                tx.put(TreeName::Pending, &key, batch)?;
            }
            Ok(())
        })
    }

    /// [`Device::write_local`] through an import's [`WriteGroup`]: `records` sealed and `ops`
    /// encoded here, committed with the group.
    fn write_grouped(
        &self,
        group: &WriteGroup,
        ops: &[Operation],
        records: &Records,
    ) -> Result<()> {
        group.add(records, self.seal_records(records), encode_batches(ops)?)
    }

    /// One contact.
    pub fn contact(&self, id: &RecordId) -> Result<Contact> {
        let (_, view) = self.live_group(&mut BTreeMap::new(), id)?;
        Contact::from_record(&view).ok_or_else(|| ClientError::UnknownContact(id.to_hex()))
    }

    /// Finds a contact by a unique prefix of its hex id (as people type them).
    pub fn resolve_id(&self, text: &str) -> Result<RecordId> {
        let text = text.trim().to_lowercase();
        if let Some(id) = RecordId::from_hex(&text) {
            return Ok(id);
        }
        if text.len() < 4 || !text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ClientError::InvalidInput(format!(
                "'{text}' is not a contact id: give the id or at least 4 of its first hex digits \
                 (see `kith contacts list`)"
            )));
        }
        // Contacts by their id, and records merged into another contact by theirs (what
        // `contacts unmerge` takes). Record ids are the records' keys in the store, so only
        // the records whose id starts with the typed digits are read (about 15 of 1,000,000
        // for 4 digits), and the merge groups only if one of them is not live itself.
        let whole_bytes = hex::decode(&text[..text.len() / 2 * 2]).map_err(|_| {
            ClientError::InvalidInput(format!("'{text}' is not a hex contact id prefix"))
        })?;
        let mut groups: Option<Groups> = None;
        let mut matches: Vec<RecordId> = Vec::with_capacity(2);
        for item in self
            .inner
            .store
            .scan_prefix(TreeName::Records, &whole_bytes)
        {
            let (_, bytes) = item?;
            let state = crate::pipeline::decode_record(&bytes)?;
            let id = state.id();
            if !id.to_hex().starts_with(&text) {
                continue;
            }
            let shown = state.is_live() || {
                if groups.is_none() {
                    let linked = crate::pipeline::linked_records(&self.inner.store)?;
                    groups = Some(Groups::from_records(&linked));
                }
                groups
                    .as_ref()
                    .is_some_and(|g| g.is_survivor(&id) && g.members(&id).len() > 1)
            };
            if shown {
                matches.push(id);
                if matches.len() == 2 {
                    break;
                }
            }
        }
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(ClientError::UnknownContact(text)),
            _ => Err(ClientError::InvalidInput(format!(
                "id prefix {text} matches several contacts; type more of it"
            ))),
        }
    }

    /// How many contacts [`Device::contacts`] lists, without reading every record: the live
    /// records (a count kept with every write), less what merges (§8.4) make one contact,
    /// counted from the records that hold a merge link alone (an index kept with every write).
    /// So it costs what the store's merged records cost to read, whatever else it holds.
    pub fn contact_count(&self) -> Result<u64> {
        let live = crate::pipeline::live_count(&self.inner.store)?;
        let linked = crate::pipeline::linked_records(&self.inner.store)?;
        let groups = Groups::from_records(&linked);
        let by_id: BTreeMap<RecordId, &RecordState> =
            linked.iter().map(|state| (state.id(), state)).collect();
        // Each group of two or more is one contact if any of its records is live, and its live
        // records each counted once in `live`.
        let mut merged_away = 0u64;
        for (survivor, members) in groups.merged() {
            let states: Vec<&RecordState> = members
                .iter()
                .filter_map(|m| by_id.get(m).copied())
                .collect();
            let live_members = states.iter().filter(|state| state.is_live()).count() as u64;
            let shown = u64::from(Groups::view(*survivor, states).is_live());
            merged_away += live_members.saturating_sub(shown);
        }
        Ok(live.saturating_sub(merged_away))
    }

    /// Every live contact, ordered by name: records merged into one person are one contact,
    /// shown under the survivor's id with the fields of all of them (§8.4).
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        self.contacts_where(|_| true)
    }

    /// The contacts [`Device::contacts`] lists that `keep` accepts, in its order. Each view
    /// is made a [`Contact`] as it is read and dropped unless kept, so memory holds the kept
    /// contacts, not every record of the store.
    fn contacts_where(&self, mut keep: impl FnMut(&Contact) -> bool) -> Result<Vec<Contact>> {
        let mut out: Vec<Contact> = Vec::new();
        self.for_each_view(|view, _| {
            if let Some(contact) = Contact::from_record(&view)
                && keep(&contact)
            {
                out.push(contact);
            }
            Ok(())
        })?;
        // Each name folded once, not at every comparison.
        out.sort_by_cached_key(|contact| (fold(contact.name().unwrap_or("")), contact.id()));
        Ok(out)
    }

    /// Contacts whose name, e-mail, phone, company or note contains `query`, ignoring case and
    /// accents ("jose" finds "José"); phone digits match whatever the formatting.
    pub fn search(&self, query: &str) -> Result<Vec<Contact>> {
        let needle = fold(query.trim());
        let digits: String = query.chars().filter(char::is_ascii_digit).collect();
        if needle.is_empty() {
            return self.contacts();
        }
        self.contacts_where(|c| {
            let text_match = c.name().is_some_and(|n| fold(n).contains(&needle))
                || c.note().is_some_and(|n| fold(n).contains(&needle))
                || c.company().is_some_and(|n| fold(n).contains(&needle))
                || c.emails()
                    .iter()
                    .any(|e| fold(&e.address).contains(&needle));
            let phone_match = digits.len() >= 4
                && c.phones().iter().any(|p| {
                    p.e164
                        .chars()
                        .filter(char::is_ascii_digit)
                        .collect::<String>()
                        .contains(&digits)
                });
            text_match || phone_match
        })
    }

    /// Concurrent edits the merge kept, so an app can show both values.
    ///
    /// Conflicts are concurrent writes of one field of one record. Records merged into one
    /// contact (§8.4) that hold different values of a field (two sources' names) are not in
    /// conflict: the contact shows the latest, and the conflicts of each record are listed
    /// under the contact's id.
    pub fn conflicts(&self) -> Result<Vec<ConflictView>> {
        // Record by record (a page of the scan at a time), under the groups the records
        // holding merge links make.
        let groups = Groups::from_records(&crate::pipeline::linked_records(&self.inner.store)?);
        let mut out = Vec::new();
        for item in self.inner.store.scan(TreeName::Records) {
            let (_, bytes) = item?;
            let state = crate::pipeline::decode_record(&bytes)?;
            push_conflicts(&mut out, groups.survivor(&state.id()), &state);
        }
        Ok(out)
    }

    /// The conflicts of one contact (those [`Device::conflicts`] lists under its id), reading
    /// only its records.
    pub fn contact_conflicts(&self, id: &RecordId) -> Result<Vec<ConflictView>> {
        let mut touched = BTreeMap::new();
        let (members, view) = self.live_group(&mut touched, id)?;
        let mut out = Vec::new();
        for member in &members {
            if let Some(state) = touched.get(member) {
                push_conflicts(&mut out, view.id(), state);
            }
        }
        Ok(out)
    }

    /// Merges an importer's contacts into the store. Contacts sharing an e-mail, phone or
    /// LinkedIn URL with an existing record join it; new ones get a record id blinded from
    /// their source identity, so re-importing changes nothing and two devices importing the
    /// same export converge on the same records.
    pub async fn import(&self, report: ImportReport) -> Result<ImportSummary> {
        self.import_with_progress(report, |_, _| {}).await
    }

    /// [`Device::import`], calling `progress(done, total)` as it goes.
    pub async fn import_with_progress(
        &self,
        report: ImportReport,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<ImportSummary> {
        let total = report.contacts.len();
        let skipped = report.skipped.len();
        let mut summary = self
            .import_stream(report.contacts.into_iter().map(Ok), |done| {
                progress(done, total)
            })
            .await?;
        summary.skipped += skipped;
        Ok(summary)
    }

    /// The id an import gives the record of a contact no existing record claims: a keyed
    /// hash of its source and source identity (§2.1), so every import of it finds it again.
    fn import_record_id(&self, contact: &ImportedContact) -> RecordId {
        let digest = self.inner.record_id_key.blind(&[
            contact.source().as_str().as_bytes(),
            contact.source_identity.as_bytes(),
        ]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        RecordId::from_bytes(id)
    }

    /// Merges contacts into the store as an importer yields them, a chunk at a time, so that
    /// an export of any size is imported in the memory of one chunk (e.g. the rows of
    /// [`crate::import::linkedin::Rows`]). `progress(done)` is called after each chunk.
    ///
    /// The same source identity twice is one contact, as with [`Device::import`]. An importer
    /// error stops the import there: the chunks merged before it are kept (importing the file
    /// again after fixing it settles, as every import does) and the error is returned.
    pub async fn import_stream(
        &self,
        contacts: impl IntoIterator<Item = std::result::Result<ImportedContact, ImportError>>,
        mut progress: impl FnMut(usize),
    ) -> Result<ImportSummary> {
        let mut summary = ImportSummary::default();
        let store = &self.inner.store;
        // The identity rule looks rows up in the index, which a stopped pull left incomplete.
        self.settle_interrupted_pulls().await?;
        let mut pipeline = RecordPipeline::lock(&self.inner.records_lock, &self.inner.store).await;
        // An import into a new store (a first import, the case of the largest files) does
        // not look up the records it creates.
        pipeline.start_on_empty_store()?;
        // Several chunks per transaction: fewer writes of the record index's pages.
        let group = pipeline.group_writes();
        let _bulk = store.bulk()?;
        let mut index = IdentityIndex::new(store);
        let mut contacts = contacts.into_iter();
        index.preload(contacts.size_hint().0)?;
        let mut done = 0;
        let mut chunk: Vec<ImportedContact> = Vec::with_capacity(IMPORT_CHUNK);
        let mut failed = None;
        loop {
            chunk.clear();
            for item in contacts.by_ref() {
                match item {
                    Ok(contact) => chunk.push(contact),
                    Err(error) => {
                        failed = Some(error);
                        break;
                    }
                }
                if chunk.len() == IMPORT_CHUNK {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            // Each contact's blinded identities, and the records the chunk will read: those
            // the identities name now (the record a contact updates, and those the identity
            // rule links it to), a card's own id, and the id a new contact would get. They
            // are read ahead in one read; what the loop below finds is unchanged.
            let blinded_chunk: Vec<Vec<[u8; 32]>> = chunk
                .iter()
                .map(|contact| {
                    let ids = contact.identities();
                    ids.iter().map(|i| store.cipher().index_key(i)).collect()
                })
                .collect();
            let mut derived_ids = Vec::with_capacity(chunk.len());
            let mut wanted = Vec::with_capacity(chunk.len() * 2);
            for (contact, blinded) in chunk.iter().zip(&blinded_chunk) {
                let own = (contact.source() == crate::import::Source::VCard)
                    .then(|| RecordId::from_hex(&contact.source_identity))
                    .flatten();
                wanted.extend(own);
                let mut named = false;
                for key in blinded {
                    if let Some(id) = index.get(key)? {
                        wanted.push(id);
                        named = true;
                    }
                }
                let derived = (!named && own.is_none()).then(|| self.import_record_id(contact));
                wanted.extend(derived);
                derived_ids.push(derived);
            }
            pipeline.prefetch(wanted)?;
            let mut touched: BTreeMap<RecordId, RecordState> = BTreeMap::new();
            let mut ops = Vec::new();
            let mut seen_ids = Vec::with_capacity(chunk.len());
            // Each record the chunk's contacts wrote: the index of its operation in `ops` and
            // its state before it, if it was written once, by a contact the identity rule
            // looks at (`seen_ids`); `None` otherwise.
            let mut written: BTreeMap<RecordId, Option<(usize, RecordState)>> = BTreeMap::new();
            for ((contact, blinded), derived) in chunk.iter().zip(blinded_chunk).zip(derived_ids) {
                let mut existing = None;
                let mut own_export = false;
                // A card this device exported names its contact by id (`UID`): importing the
                // export again finds the contact itself, even one without e-mail or phone.
                if contact.source() == crate::import::Source::VCard
                    && let Some(own) = RecordId::from_hex(&contact.source_identity)
                    && pipeline.load(&mut touched, own)?.is_live()
                {
                    existing = Some(own);
                    own_export = true;
                }
                for key in &blinded {
                    if existing.is_some() {
                        break;
                    }
                    if let Some(id) = index.get(key)? {
                        existing = Some(id);
                    }
                }
                if contact.only_if_known && existing.is_none() {
                    summary.left_out += 1;
                    continue;
                }
                let id = existing
                    .or(derived)
                    .unwrap_or_else(|| self.import_record_id(contact));
                let state = pipeline.load(&mut touched, id)?;
                // A contact deleted by hand stays deleted: an import never resurrects it.
                if state.deleted_at().is_some() {
                    summary.left_out += 1;
                    continue;
                }
                // Records merged into one person are compared as the contact shown (§8.4).
                let merged = !state.merged_with().is_empty();
                let (members, view) = if merged {
                    let mut load = |t: &mut Records, id: RecordId| pipeline.load(t, id).map(|_| ());
                    let members = crate::merging::group_members(&mut touched, &mut load, id)?;
                    let view = crate::merging::group_view(&touched, &members);
                    (members, Some(view))
                } else {
                    (vec![id], None)
                };
                let Some(state) = touched.get(&id) else {
                    continue;
                };
                let view_ref = view.as_ref().unwrap_or(state);
                let was_live = view_ref.is_live();
                // A record this contact creates (nothing stored, nothing merged) holds only
                // the contact's identities.
                let new_record = state.fields().is_empty() && state.deleted_at().is_none();
                let mut own_writes = Vec::new();
                let mut group_writes = Vec::new();
                for (key, value) in contact.field_writes() {
                    let key = match FieldKey::parse(&key) {
                        Ok(key) => key,
                        Err(_) => continue,
                    };
                    // Provenance is per record: each source's record keeps its own, so two
                    // merged records never fight over one value.
                    let provenance = matches!(key.kind(), record::FieldKind::Source(_));
                    if provenance && own_export {
                        // Kith's own export is not a source of the contact it came from.
                        continue;
                    }
                    let basis = if provenance { state } else { view_ref };
                    // A joined history (calendar, mail) is written as the join of every head
                    // this device sees with what the import adds (docs/PROTOCOL.md §8.1).
                    let value = match key.kind() {
                        record::FieldKind::Source(kind) if kind.is_joined() => {
                            let heads = basis
                                .field(&key)
                                .map(|field| field.heads().map(|h| h.value).collect::<Vec<_>>())
                                .unwrap_or_default();
                            kith_protocol::history::join_all(
                                heads.into_iter().chain([Some(&value)]),
                            )
                            .unwrap_or(value)
                        }
                        _ => normalize_label(value),
                    };
                    let current = basis.value(&key);
                    if current == Some(&value) || !import_replaces(&key, current, &value) {
                        continue;
                    }
                    if let Ok(write) = FieldWrite::set(key.clone(), value, basis.replaces(&key)) {
                        if provenance {
                            own_writes.push(write);
                        } else {
                            group_writes.push(write);
                        }
                    }
                }
                let mut settled = new_record;
                for key in blinded {
                    // A key already naming another record stays: the identity rule links the
                    // two below instead of forgetting the first.
                    match index.get(&key)? {
                        None => index.insert(key, id)?,
                        Some(other) => settled &= other == id,
                    }
                }
                // A new record whose identities all name it links nothing: the identity rule
                // below would find each of them indexed under the record itself.
                if !settled {
                    seen_ids.push(id);
                }
                if own_writes.is_empty() && group_writes.is_empty() {
                    summary.unchanged += 1;
                    continue;
                }
                let mut contact_ops = Vec::new();
                let result = (|| -> Result<()> {
                    if !group_writes.is_empty() {
                        contact_ops.extend(crate::merging::group_writes(
                            self,
                            &touched,
                            &members,
                            view_ref,
                            id,
                            group_writes,
                        )?);
                    }
                    if !own_writes.is_empty() {
                        // The record's provenance travels in the same operation as what the
                        // contact writes to the record itself (its keys are others): one
                        // operation per record to decode, apply and store on every device.
                        let own = contact_ops.iter().position(|op| op.record() == id);
                        let floor = state.latest_clock_of(own_writes.iter().map(FieldWrite::key));
                        let folded = own.and_then(|at| {
                            let group_op = &contact_ops[at];
                            fold_writes(id, group_op.clock(), floor, group_op, &own_writes)
                                .map(|op| (at, op))
                        });
                        match folded {
                            Some((at, op)) => contact_ops[at] = op,
                            None => contact_ops.push(self.upsert_after(state, own_writes)?),
                        }
                    }
                    Ok(())
                })();
                match result {
                    Ok(()) => {}
                    // A malicious member pinned this record with the greatest clock there is
                    // (§8.2): nothing can be written to it, so the contact is skipped.
                    Err(ClientError::Clock(_)) => {
                        summary.skipped += 1;
                        continue;
                    }
                    Err(err) => return Err(err),
                }
                for (at, op) in (ops.len()..).zip(&contact_ops) {
                    if let Some(target) = touched.get_mut(&op.record()) {
                        // A record the identity rule may link keeps its state from before
                        // its first write of the chunk, for the fold below.
                        match written.entry(op.record()) {
                            Entry::Vacant(entry) => {
                                entry.insert((!settled).then(|| (at, target.clone())));
                            }
                            Entry::Occupied(mut entry) => *entry.get_mut() = None,
                        }
                        target.apply(op);
                    }
                }
                ops.extend(contact_ops);
                if was_live {
                    summary.updated += 1;
                } else {
                    summary.added += 1;
                }
            }
            // The identity rule: records this chunk touched that now share an e-mail, phone or
            // LinkedIn URL with another record are linked to it (§8.4).
            let links = {
                let mut load = |t: &mut Records, id: RecordId| pipeline.load(t, id).map(|_| ());
                self.link_by_identity(&mut touched, &mut load, &mut index, seen_ids)?
            };
            summary.merged += links.len() / 2;
            fold_links(&mut ops, links, written, &mut touched);
            if !ops.is_empty() {
                let changed: BTreeSet<RecordId> = ops.iter().map(|op| op.record()).collect();
                touched.retain(|id, _| changed.contains(id));
                // The chunk's transaction runs while the next chunk is merged. Merging is the
                // larger half (a profile of a 100,000-row import: 72 % of the time on the
                // merging thread when it also sealed the records), so the records are encoded
                // and sealed on the writer's thread, with the transaction.
                let device = self.clone();
                let group = Arc::clone(&group);
                pipeline
                    .submit(touched, move |records| {
                        device.write_grouped(&group, &ops, records)
                    })
                    .await?;
            }
            done += chunk.len();
            progress(done);
            if failed.is_some() {
                break;
            }
        }
        pipeline.wait().await?;
        group.commit()?;
        index.write()?;
        self.persist_clock()?;
        store.flush().await?;
        match failed {
            Some(error) => Err(error.into()),
            None => Ok(summary),
        }
    }

    /// Every live contact as vCard 4.0 text.
    pub fn export_vcard(&self) -> Result<String> {
        let contacts: Vec<crate::export::ExportContact> = self
            .contacts()?
            .iter()
            .map(|c| crate::export::ExportContact {
                uid: Some(c.id().to_hex()),
                name: c.name().map(str::to_string),
                emails: c.emails().to_vec(),
                phones: c.phones().to_vec(),
                urls: c.urls().to_vec(),
                handles: c.handles().to_vec(),
                company: c.company().map(str::to_string),
                title: c.title().map(str::to_string),
                birthday: c.birthday().copied(),
                note: c.note().map(str::to_string),
            })
            .collect();
        Ok(crate::export::export_vcard4(&contacts))
    }
}

/// Lists `state`'s conflicts under the contact `survivor` (the id its group is shown under).
fn push_conflicts(out: &mut Vec<ConflictView>, survivor: RecordId, state: &RecordState) {
    for conflict in state.conflicts() {
        // Concurrent heads of a joined history are not a conflict: they are joined.
        if matches!(conflict.key.kind(), record::FieldKind::Source(k) if k.is_joined())
            || conflict.key.kind().is_link()
        {
            continue;
        }
        for other in &conflict.others {
            out.push(ConflictView {
                id: survivor.to_hex(),
                field: conflict.key.as_str().to_string(),
                winner: describe(conflict.winner.value),
                other: describe(other.value),
            });
        }
    }
}

/// The writes of `op`, or `None` for a deletion.
fn upsert_writes(op: &Operation) -> Option<&[FieldWrite]> {
    match op.kind() {
        record::OperationKind::Upsert(writes) => Some(writes),
        record::OperationKind::Delete => None,
    }
}

/// One upsert of `record` at `clock` with the writes of `base` and `extra`: `None` if that
/// cannot be one operation (a key written by both, a replaced clock not earlier than `clock`,
/// too many writes), if `clock` is not later than `floor` (what `extra` had to be written
/// after), or if `base` is a deletion.
fn fold_writes(
    record: RecordId,
    clock: Hlc,
    floor: Option<Hlc>,
    base: &Operation,
    extra: &[FieldWrite],
) -> Option<Operation> {
    if floor.is_some_and(|floor| floor >= clock) || base.record() != record {
        return None;
    }
    let writes = upsert_writes(base)?.iter().chain(extra);
    // `Operation::upsert` refuses a key written twice and a replaced clock not earlier than
    // `clock`.
    Operation::upsert(record, clock, writes.cloned()).ok()
}

/// Appends the identity rule's `links` to a chunk's `ops`, folding each record's link writes
/// into the one operation the chunk already wrote to it, when `written` kept the record's
/// state from before that operation: one operation at the link's clock (the latest of the
/// two: the device's clock only grows) instead of two, so a device pulling them decodes and
/// applies one, and never finds the record's two writes in two pages. The keys of the two
/// are disjoint (a link key is never imported), so each write replaces what it replaced
/// before; only the clock of the contact's writes is the link's, as if the device had
/// written both at once (§8.4: a link is a register like every field). The record's state
/// in `touched` is then its earlier state with the folded operation applied, exactly what
/// every other device computes from it.
fn fold_links(
    ops: &mut Vec<Operation>,
    links: Vec<Operation>,
    mut written: BTreeMap<RecordId, Option<(usize, RecordState)>>,
    touched: &mut Records,
) {
    let mut per_record: BTreeMap<RecordId, usize> = BTreeMap::new();
    for link in &links {
        *per_record.entry(link.record()).or_default() += 1;
    }
    let mut folded_away = BTreeSet::new();
    let mut out = Vec::with_capacity(links.len());
    for link in links {
        let id = link.record();
        // A record linked twice in the chunk keeps its operations as they are.
        let foldable = per_record.get(&id) == Some(&1);
        let earlier = if foldable {
            written.get_mut(&id).and_then(Option::take)
        } else {
            None
        };
        // The link's clock is later than the contact's write (the device's clock only grows;
        // checked all the same).
        let folded = earlier.and_then(|(at, before)| {
            let writes = upsert_writes(&link)?;
            let op = fold_writes(id, link.clock(), Some(ops[at].clock()), &ops[at], writes)?;
            Some((at, before, op))
        });
        match folded {
            Some((at, mut before, op)) => {
                before.apply(&op);
                touched.insert(id, before);
                folded_away.insert(at);
                out.push(op);
            }
            None => out.push(link),
        }
    }
    if !folded_away.is_empty() {
        let mut at = 0;
        ops.retain(|_| {
            at += 1;
            !folded_away.contains(&(at - 1))
        });
    }
    ops.extend(out);
}

/// `ops` encoded in batches of at most [`crate::sync::OPS_PER_ENVELOPE`], each stored as one
/// pending entry.
fn encode_batches(ops: &[Operation]) -> Result<Vec<Vec<u8>>> {
    Ok(ops
        .chunks(crate::sync::OPS_PER_ENVELOPE)
        .map(record::encode_batch)
        .collect::<Result<Vec<_>, _>>()?)
}

/// A label as imports write it: trimmed and lowercased, so `LinkedIn` and `linkedin`, or
/// `CELL` and `cell`, are one label whichever source wrote it.
fn normalize_label(mut value: proto::FieldValue) -> proto::FieldValue {
    let normalize = |label: &mut String| {
        let normalized = label.trim().to_lowercase();
        if *label != normalized {
            *label = normalized;
        }
    };
    match value.value.as_mut() {
        Some(Value::Email(email)) => normalize(&mut email.label),
        Some(Value::Phone(phone)) => normalize(&mut phone.label),
        Some(Value::Url(url)) => normalize(&mut url.label),
        _ => {}
    }
    value
}

/// Whether an import's `new` value of `key` replaces the `current` one (which differs).
/// Imports fill what is empty and never fight: scalars (name, company, …) and the label of an
/// e-mail, phone or URL are written only where there is none yet, so an edit by hand is never
/// overwritten and two sources that label a number differently (`cell` and none) do not flip
/// it back and forth at each import; provenance, history and other values are refreshed.
fn import_replaces(
    key: &FieldKey,
    current: Option<&proto::FieldValue>,
    new: &proto::FieldValue,
) -> bool {
    let Some(current) = current else {
        return true;
    };
    let label = |value: &proto::FieldValue| match value.value.as_ref() {
        Some(Value::Email(email)) => Some(email.label.clone()),
        Some(Value::Phone(phone)) => Some(phone.label.clone()),
        Some(Value::Url(url)) => Some(url.label.clone()),
        _ => None,
    };
    match key.kind() {
        record::FieldKind::Name
        | record::FieldKind::Company
        | record::FieldKind::Title
        | record::FieldKind::Birthday
        | record::FieldKind::Note => false,
        record::FieldKind::Email | record::FieldKind::Phone | record::FieldKind::Url => {
            match (label(current), label(new)) {
                (Some(old), Some(new)) => {
                    old.trim().is_empty() && !new.is_empty()
                        || old.trim().to_lowercase() != old && old.trim().to_lowercase() == new
                }
                _ => true,
            }
        }
        _ => true,
    }
}

/// The device-local identity index (blinded e-mail, phone or profile URL → record id), kept in
/// 65,536 encrypted shards keyed by the first two bytes of the blinded identity: an import of
/// 1,000,000 contacts writes 65,536 values instead of one per identity, and a sync or a small
/// import reads and rewrites only the few shards it touches (about 20 entries each at that
/// size; the 256 shards of earlier builds held 5,000 and made each small change cost hundreds
/// of kilobytes). The index is derived data: record ids of imported contacts are deterministic
/// (§2.1), so re-running an interrupted import rebuilds whatever entries a crash lost.
///
/// Shards of earlier builds (keyed by one byte) are split into two-byte shards the first time
/// an identity they cover is looked up, and removed when the index is written.
pub(crate) struct IdentityIndex {
    /// A handle on the store (shared), so that an index can live across the pages of a pull,
    /// on the thread that writes them.
    store: crate::store::LocalStore,
    /// Each loaded shard's entries sorted by blinded identity, by shard number. A sorted
    /// vector costs 48 bytes an entry where a map cost about 70 and an allocation per node:
    /// the index of a 1,000,000-contact import is its largest structure in memory.
    shards: HashMap<u16, Shard>,
    dirty: BTreeSet<u16>,
    /// First bytes whose one-byte shard of an earlier build was looked for (and split).
    legacy_checked: BTreeSet<u8>,
    /// One-byte shards split here, to remove when the index is written.
    legacy_split: BTreeSet<u8>,
    /// Every two-byte shard the store held is in `shards` ([`IdentityIndex::preload`]): one
    /// not there is empty, and is not looked up.
    complete: bool,
}

/// One shard of the identity index: (blinded identity, record id), sorted, keys unique.
type Shard = Vec<([u8; 32], RecordId)>;

/// Where [`IdentityIndex`] reads a shard it has not loaded: the store's reader, or a write
/// transaction (the pull's page writer, which then does not wait for the reader connection
/// the merging thread uses).
#[derive(Clone, Copy)]
enum ShardSource<'t, 'c> {
    Store,
    Txn(&'t StoreTxn<'c>),
}

impl IdentityIndex {
    const ENTRY: usize = 32 + 16;
    /// From how many contacts [`IdentityIndex::preload`] scans the whole index: with one or
    /// two identities a contact, that many touch more than half of the 65,536 shards.
    const PRELOAD_CONTACTS: usize = 32_768;
    /// From how many changed shards [`IdentityIndex::write`] seals on two threads.
    const PARALLEL_SHARDS: usize = 1024;

    pub(crate) fn new(store: &crate::store::LocalStore) -> Self {
        Self {
            store: store.clone(),
            shards: HashMap::new(),
            dirty: BTreeSet::new(),
            legacy_checked: BTreeSet::new(),
            legacy_split: BTreeSet::new(),
            complete: false,
        }
    }

    /// For an import of about `contacts` contacts: reads every shard in one scan of the
    /// store when the import will look up most of them anyway (at 100,000 contacts, looking
    /// them up one at a time on first use was 8 % of a linking import), and knows an empty
    /// index to be empty without reading it. Otherwise shards are read on first use, as
    /// before. Shards already loaded keep their entries.
    pub(crate) fn preload(&mut self, contacts: usize) -> Result<()> {
        if self.store.is_empty(TreeName::Identities)? {
            self.legacy_checked.extend(0..=u8::MAX);
            self.complete = true;
            return Ok(());
        }
        if contacts < Self::PRELOAD_CONTACTS {
            return Ok(());
        }
        let mut legacy = BTreeSet::new();
        for entry in self.store.scan(TreeName::Identities) {
            let (key, bytes) = entry?;
            match key[..] {
                [first] => {
                    legacy.insert(first);
                }
                [high, low] => {
                    let number = u16::from_be_bytes([high, low]);
                    self.shards.entry(number).or_insert_with(|| {
                        let mut shard = BTreeMap::new();
                        Self::decode_into(&bytes, &mut shard);
                        shard.into_iter().collect()
                    });
                }
                _ => {}
            }
        }
        // A one-byte shard of an earlier build is still split on first use (`shard`).
        self.legacy_checked
            .extend((0..=u8::MAX).filter(|first| !legacy.contains(first)));
        self.complete = true;
        Ok(())
    }

    fn shard_number(key: &[u8; 32]) -> u16 {
        u16::from_be_bytes([key[0], key[1]])
    }

    fn read(&self, source: ShardSource<'_, '_>, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(match source {
            ShardSource::Store => self.store.get(TreeName::Identities, key)?,
            ShardSource::Txn(tx) => tx.get(TreeName::Identities, key)?,
        })
    }

    fn load_shard(&mut self, source: ShardSource<'_, '_>, number: u16) -> Result<&mut Shard> {
        if !self.shards.contains_key(&number) {
            let mut shard = BTreeMap::new();
            if self.complete {
                // Preloaded: the store holds no such shard.
            } else if let Some(bytes) = self.read(source, &number.to_be_bytes())? {
                Self::decode_into(&bytes, &mut shard);
            }
            self.shards.insert(number, shard.into_iter().collect());
        }
        Ok(self.shards.entry(number).or_default())
    }

    fn shard(&mut self, source: ShardSource<'_, '_>, key: &[u8; 32]) -> Result<&mut Shard> {
        if self.legacy_checked.insert(key[0])
            && let Some(bytes) = self.read(source, &[key[0]])?
        {
            let mut legacy = BTreeMap::new();
            Self::decode_into(&bytes, &mut legacy);
            for (blinded, id) in legacy {
                let number = Self::shard_number(&blinded);
                let shard = self.load_shard(source, number)?;
                if let Err(at) = shard.binary_search_by(|(key, _)| key.cmp(&blinded)) {
                    shard.insert(at, (blinded, id));
                }
                self.dirty.insert(number);
            }
            self.legacy_split.insert(key[0]);
        }
        self.load_shard(source, Self::shard_number(key))
    }

    pub(crate) fn get(&mut self, key: &[u8; 32]) -> Result<Option<RecordId>> {
        self.get_via(ShardSource::Store, key)
    }

    /// [`IdentityIndex::get`], reading shards not loaded yet in `tx`.
    pub(crate) fn get_in(&mut self, tx: &StoreTxn<'_>, key: &[u8; 32]) -> Result<Option<RecordId>> {
        self.get_via(ShardSource::Txn(tx), key)
    }

    fn get_via(&mut self, source: ShardSource<'_, '_>, key: &[u8; 32]) -> Result<Option<RecordId>> {
        let shard = self.shard(source, key)?;
        Ok(shard
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|at| shard[at].1))
    }

    pub(crate) fn insert(&mut self, key: [u8; 32], id: RecordId) -> Result<()> {
        self.insert_via(ShardSource::Store, key, id)
    }

    /// [`IdentityIndex::insert`], reading shards not loaded yet in `tx`.
    pub(crate) fn insert_in(
        &mut self,
        tx: &StoreTxn<'_>,
        key: [u8; 32],
        id: RecordId,
    ) -> Result<()> {
        self.insert_via(ShardSource::Txn(tx), key, id)
    }

    fn insert_via(
        &mut self,
        source: ShardSource<'_, '_>,
        key: [u8; 32],
        id: RecordId,
    ) -> Result<()> {
        let shard = self.shard(source, &key)?;
        let changed = match shard.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(at) => std::mem::replace(&mut shard[at].1, id) != id,
            Err(at) => {
                shard.insert(at, (key, id));
                true
            }
        };
        if changed {
            self.dirty.insert(Self::shard_number(&key));
        }
        Ok(())
    }

    fn decode_into(bytes: &[u8], shard: &mut BTreeMap<[u8; 32], RecordId>) {
        for entry in bytes.chunks_exact(Self::ENTRY) {
            let mut blinded = [0u8; 32];
            blinded.copy_from_slice(&entry[..32]);
            if let Ok(id) = RecordId::from_slice(&entry[32..]) {
                shard.insert(blinded, id);
            }
        }
    }

    /// Writes the changed shards in one transaction, each joined with the shard as stored
    /// then (entries another process added meanwhile are kept; this import's win). The shards
    /// are read in the transaction, then encoded and sealed on two threads, the first half
    /// written while the second is sealed: after a pull, this write runs alone at the end
    /// (65,536 shards at 100,000 contacts and more; BENCHMARKS.md, "B's pull (issue 18),
    /// ninth session"). Writes nothing when nothing changed; the changes are forgotten only
    /// once written.
    pub(crate) fn write(&mut self) -> Result<()> {
        if self.dirty.is_empty() && self.legacy_split.is_empty() {
            return Ok(());
        }
        let dirty: Vec<u16> = self.dirty.iter().copied().collect();
        let legacy = &self.legacy_split;
        let shards = &self.shards;
        let cipher = self.store.cipher();
        self.store.transaction(|tx| -> Result<()> {
            for first in legacy {
                tx.remove(TreeName::Identities, &[*first])?;
            }
            let mut stored = Vec::with_capacity(dirty.len());
            for number in &dirty {
                stored.push(tx.get(TreeName::Identities, &number.to_be_bytes())?);
            }
            let seal = |(number, stored): (&u16, Option<Vec<u8>>)| {
                let ours = shards.get(number)?;
                let key = number.to_be_bytes();
                Some((
                    key,
                    cipher.seal(TreeName::Identities, &key, &Self::joined(ours, stored)),
                ))
            };
            let half = if dirty.len() >= Self::PARALLEL_SHARDS {
                dirty.len() / 2
            } else {
                dirty.len()
            };
            let later_stored = stored.split_off(half);
            std::thread::scope(|scope| {
                let later = (half < dirty.len()).then(|| {
                    scope.spawn(|| {
                        dirty[half..]
                            .iter()
                            .zip(later_stored)
                            .filter_map(seal)
                            .collect::<Vec<_>>()
                    })
                });
                for (key, sealed) in dirty[..half].iter().zip(stored).filter_map(seal) {
                    tx.put_sealed(TreeName::Identities, &key, &sealed)?;
                }
                if let Some(later) = later {
                    let later = later
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    for (key, sealed) in later {
                        tx.put_sealed(TreeName::Identities, &key, &sealed)?;
                    }
                }
                Ok(())
            })
        })?;
        // Forgotten only once written: a write that failed is tried again by the next one
        // (a pull writes the index as its pages end, then again after the identity rule).
        self.dirty.clear();
        self.legacy_split.clear();
        Ok(())
    }

    /// The encoded shard of `ours` joined with `stored` (the shard as stored, if any).
    fn joined(ours: &Shard, stored: Option<Vec<u8>>) -> Vec<u8> {
        let encode = |entries: &mut dyn Iterator<Item = (&[u8; 32], &RecordId)>| {
            let mut bytes = Vec::with_capacity(ours.len() * Self::ENTRY);
            for (key, id) in entries {
                bytes.extend_from_slice(key);
                bytes.extend_from_slice(id.as_bytes());
            }
            bytes
        };
        match stored {
            // The usual case in a large import: the shard is new, and ours is sorted.
            None => encode(&mut ours.iter().map(|(key, id)| (key, id))),
            Some(stored) => {
                let mut shard = BTreeMap::new();
                Self::decode_into(&stored, &mut shard);
                shard.extend(ours.iter().map(|(key, id)| (*key, *id)));
                encode(&mut shard.iter())
            }
        }
    }
}

/// A value given for `field`, trimmed; an empty one is refused rather than silently ignored
/// (to remove a value, an edit clears the field instead).
fn given<'a>(value: &'a Option<String>, field: &str) -> Result<Option<&'a str>> {
    let remove = match field {
        "name" => "a contact keeps a name; give a new one",
        "email" => "to remove an address, use `--remove-email ADDRESS` or `--clear emails`",
        "phone" => "to remove a number, use `--remove-phone NUMBER` or `--clear phones`",
        "company" => "to remove it, use `--clear company`",
        _ => "to remove it, use `--clear note`",
    };
    match value.as_deref().map(str::trim) {
        Some("") => Err(ClientError::InvalidInput(format!(
            "an empty {field} changes nothing: {remove}"
        ))),
        other => Ok(other),
    }
}

/// Case- and accent-insensitive form for search: NFKD, drop combining marks, lowercase.
pub fn fold(text: &str) -> String {
    text.nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

fn describe(value: Option<&proto::FieldValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        None => "(removed)".to_string(),
        Some(Value::Text(text)) => text.clone(),
        Some(Value::Email(e)) => e.address.clone(),
        Some(Value::Phone(p)) => p.e164.clone(),
        Some(Value::Url(u)) => u.url.clone(),
        Some(Value::Date(d)) => format!("{:04}-{:02}-{:02}", d.year, d.month, d.day),
        Some(other) => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_shards_of_earlier_builds_are_split_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let key = kith_protocol::keys::SymmetricKey::from_slice(&[3; 32]).unwrap();
        let store = crate::store::LocalStore::open(dir.path(), &key).unwrap();
        let blinded = |a: u8, b: u8| {
            let mut k = [9u8; 32];
            k[0] = a;
            k[1] = b;
            k
        };
        let id = |n: u8| RecordId::from_bytes([n; 16]);
        // An earlier build's one-byte shard 0x42 with two entries in different two-byte shards.
        let mut legacy = Vec::new();
        for (k, n) in [(blinded(0x42, 1), 1), (blinded(0x42, 2), 2)] {
            legacy.extend_from_slice(&k);
            legacy.extend_from_slice(id(n).as_bytes());
        }
        store.put(TreeName::Identities, &[0x42], &legacy).unwrap();

        let mut index = IdentityIndex::new(&store);
        assert_eq!(index.get(&blinded(0x42, 2)).unwrap(), Some(id(2)));
        assert_eq!(index.get(&blinded(0x42, 1)).unwrap(), Some(id(1)));
        assert_eq!(index.get(&blinded(0x43, 1)).unwrap(), None);
        index.insert(blinded(0x43, 1), id(3)).unwrap();
        index.write().unwrap();
        assert_eq!(store.get(TreeName::Identities, &[0x42]).unwrap(), None);
        for shard in [[0x42, 1], [0x42, 2], [0x43, 1]] {
            let bytes = store.get(TreeName::Identities, &shard).unwrap().unwrap();
            assert_eq!(bytes.len(), IdentityIndex::ENTRY, "{shard:?}");
        }

        // A later index reads the two-byte shards alone.
        let mut again = IdentityIndex::new(&store);
        assert_eq!(again.get(&blinded(0x42, 1)).unwrap(), Some(id(1)));
        assert_eq!(again.get(&blinded(0x43, 1)).unwrap(), Some(id(3)));
        assert!(again.legacy_split.is_empty());
    }

    /// An index read in one scan answers as one read shard by shard: entries found, absent
    /// keys absent (without a read), a one-byte shard of an earlier build still split, and
    /// what it writes the same.
    #[test]
    fn a_preloaded_identity_index_answers_as_one_read_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let key = kith_protocol::keys::SymmetricKey::from_slice(&[3; 32]).unwrap();
        let store = crate::store::LocalStore::open(dir.path(), &key).unwrap();
        let blinded = |a: u8, b: u8, c: u8| {
            let mut k = [c; 32];
            k[0] = a;
            k[1] = b;
            k
        };
        let id = |n: u8| RecordId::from_bytes([n; 16]);
        // An empty index is known to be empty without a scan.
        let mut empty = IdentityIndex::new(&store);
        empty.preload(0).unwrap();
        assert!(empty.complete && empty.shards.is_empty());
        assert_eq!(empty.get(&blinded(1, 2, 3)).unwrap(), None);

        let mut first = IdentityIndex::new(&store);
        for n in 0..50u8 {
            first
                .insert(blinded(n, n.wrapping_mul(7), n), id(n))
                .unwrap();
        }
        first.write().unwrap();
        let mut legacy = Vec::new();
        legacy.extend_from_slice(&blinded(0x90, 1, 1));
        legacy.extend_from_slice(id(90).as_bytes());
        store.put(TreeName::Identities, &[0x90], &legacy).unwrap();

        // Too few contacts: shards are read on first use.
        let mut small = IdentityIndex::new(&store);
        small.preload(IdentityIndex::PRELOAD_CONTACTS - 1).unwrap();
        assert!(!small.complete && small.shards.is_empty());

        let mut on_demand = IdentityIndex::new(&store);
        let mut preloaded = IdentityIndex::new(&store);
        // A shard loaded (and changed) before the scan keeps its entries.
        for index in [&mut on_demand, &mut preloaded] {
            index.insert(blinded(3, 21, 9), id(200)).unwrap();
        }
        preloaded.preload(IdentityIndex::PRELOAD_CONTACTS).unwrap();
        assert!(preloaded.complete);
        assert_eq!(
            preloaded.shards.len(),
            50,
            "every stored shard, in one scan"
        );
        let mut probes: Vec<[u8; 32]> = (0..60u8)
            .flat_map(|n| [blinded(n, n.wrapping_mul(7), n), blinded(n, n, 0xee)])
            .collect();
        probes.extend([blinded(0x90, 1, 1), blinded(0x90, 2, 2), blinded(3, 21, 9)]);
        for probe in &probes {
            assert_eq!(
                preloaded.get(probe).unwrap(),
                on_demand.get(probe).unwrap(),
                "{probe:?}"
            );
        }
        assert_eq!(preloaded.get(&blinded(0x90, 1, 1)).unwrap(), Some(id(90)));
        assert_eq!(preloaded.get(&blinded(3, 21, 9)).unwrap(), Some(id(200)));
        assert_eq!(preloaded.legacy_split, on_demand.legacy_split);
        for index in [&mut on_demand, &mut preloaded] {
            index.insert(blinded(0x91, 1, 1), id(91)).unwrap();
        }
        assert_eq!(preloaded.dirty, on_demand.dirty);
        preloaded.write().unwrap();
        assert_eq!(store.get(TreeName::Identities, &[0x90]).unwrap(), None);
        let mut after = IdentityIndex::new(&store);
        for probe in &probes {
            assert_eq!(after.get(probe).unwrap(), on_demand.get(probe).unwrap());
        }
        assert_eq!(after.get(&blinded(0x91, 1, 1)).unwrap(), Some(id(91)));
    }

    /// An index of more changed shards than [`IdentityIndex::PARALLEL_SHARDS`] is sealed on
    /// two threads: every shard is written, each joined with the shard as stored at the write
    /// (another index, as of another process, wrote some of the same shards after this one
    /// loaded them: both keep their entries), and read back sealed for its own key.
    #[test]
    fn a_large_identity_index_write_keeps_every_entry_of_both_writers() {
        let dir = tempfile::tempdir().unwrap();
        let key = kith_protocol::keys::SymmetricKey::from_slice(&[3; 32]).unwrap();
        let store = crate::store::LocalStore::open(dir.path(), &key).unwrap();
        // Writer 1's entry `n` in shard `n`, writer 2's in shard `n + 2,000`: 3,000 shards
        // each, 1,000 of them (2,000–2,999) written by both.
        let shard =
            |n: u32, writer: u8| u16::try_from(n + (u32::from(writer) - 1) * 2_000).unwrap();
        let blinded = |n: u32, writer: u8| {
            let mut k = [writer; 32];
            k[..2].copy_from_slice(&shard(n, writer).to_be_bytes());
            k[3..7].copy_from_slice(&n.to_be_bytes());
            k
        };
        let id = |n: u32, writer: u8| {
            let mut bytes = [writer; 16];
            bytes[..4].copy_from_slice(&n.to_be_bytes());
            RecordId::from_bytes(bytes)
        };
        let mut ours = IdentityIndex::new(&store);
        let mut theirs = IdentityIndex::new(&store);
        // Both load their shards (empty) before either writes.
        for n in 0..3_000 {
            ours.insert(blinded(n, 1), id(n, 1)).unwrap();
            theirs.insert(blinded(n, 2), id(n, 2)).unwrap();
        }
        assert!(theirs.dirty.len() >= IdentityIndex::PARALLEL_SHARDS);
        theirs.write().unwrap();
        ours.write().unwrap();
        let mut read = IdentityIndex::new(&store);
        for n in 0..3_000 {
            assert_eq!(read.get(&blinded(n, 1)).unwrap(), Some(id(n, 1)), "{n}");
            assert_eq!(read.get(&blinded(n, 2)).unwrap(), Some(id(n, 2)), "{n}");
        }
        let shared = shard(2_500, 1);
        assert_eq!(shared, shard(500, 2));
        let bytes = store
            .get(TreeName::Identities, &shared.to_be_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(bytes.len(), 2 * IdentityIndex::ENTRY, "a shard both wrote");
    }

    /// What listing read before it streamed: every record of the store at once, and every
    /// group's view from them. The oracle the page-by-page listing is held to.
    fn listed_from_every_record(device: &Device) -> (Vec<Contact>, BTreeSet<RecordId>) {
        let (groups, records) = device.all_records().unwrap();
        let mut listed: Vec<Contact> = records
            .keys()
            .filter(|id| groups.is_survivor(id))
            .filter_map(|id| {
                let members = groups.members(id);
                let view = Groups::view(*id, members.iter().filter_map(|m| records.get(m)));
                if view.is_live() {
                    Contact::from_record(&view)
                } else {
                    None
                }
            })
            .collect();
        listed.sort_by(|a, b| {
            fold(a.name().unwrap_or(""))
                .cmp(&fold(b.name().unwrap_or("")))
                .then(a.id().cmp(&b.id()))
        });
        // The ids `resolve_id` takes: live records (merged-away ones too, for `unmerge`) and
        // the survivors of merged contacts.
        let resolvable = records
            .values()
            .map(RecordState::id)
            .filter(|id| {
                records[id].is_live() || (groups.is_survivor(id) && groups.members(id).len() > 1)
            })
            .collect();
        (listed, resolvable)
    }

    /// Listing, searching and resolving an id prefix read the store a page or a few records at
    /// a time (a store of 1,000,000 contacts took 6 GB to list or search and 4.9 GB to resolve a
    /// prefix when every record was read at once): they give what reading every record gave,
    /// with merged contacts (two and three records), a pair separated again, a deleted contact,
    /// and enough contacts (3,000) that 4-digit prefixes are shared.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listing_searching_and_resolving_agree_with_reading_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, device) = crate::sync::tests::device_on_relay(dir.path()).await;
        let csv = crate::import::testing::generate_linkedin_csv(3_000);
        let report = crate::import::linkedin::import_bytes(
            csv.as_bytes(),
            &crate::import::ImportOptions::default(),
        )
        .unwrap();
        device.import(report).await.unwrap();
        let mut ids = Vec::new();
        for (n, email) in ["ada@example.org", "ada.l@example.org", "grace@example.org"]
            .iter()
            .chain(&["g.hopper@example.org", "gh@example.org", "alan@example.org"])
            .chain(&["turing@example.org", "gone@example.org"])
            .enumerate()
        {
            let fields = ContactFields {
                name: Some(format!("Zz Person {n}")),
                email: Some((*email).to_string()),
                note: (n == 1).then(|| "met at the Analytical Engine talk".to_string()),
                ..Default::default()
            };
            ids.push(device.add_contact(&fields).await.unwrap());
        }
        let pair = device.merge_contacts(&ids[0..2]).await.unwrap();
        let three = device.merge_contacts(&ids[2..5]).await.unwrap();
        device.merge_contacts(&ids[5..7]).await.unwrap();
        let separated = *ids[5..7].iter().max().unwrap();
        device.unmerge_contact(&separated).await.unwrap();
        device.delete_contact(&ids[7]).await.unwrap();

        let (expected, resolvable) = listed_from_every_record(&device);
        let listed = device.contacts().unwrap();
        assert_eq!(listed, expected);
        assert_eq!(listed.len() as u64, device.contact_count().unwrap());
        assert!(listed.iter().any(|c| c.id() == pair));
        assert!(listed.iter().any(|c| c.id() == three));
        assert!(!listed.iter().any(|c| c.id() == ids[7]), "deleted");

        for query in [
            "zz person",
            "ada.l@example.org",
            "g.hopper",
            "analytical engine",
            "alan",
            "nobody at all",
            "",
        ] {
            let found = device.search(query).unwrap();
            let needle = fold(query.trim());
            let oracle: Vec<Contact> = expected
                .iter()
                .filter(|c| {
                    c.name().is_some_and(|n| fold(n).contains(&needle))
                        || c.note().is_some_and(|n| fold(n).contains(&needle))
                        || c.company().is_some_and(|n| fold(n).contains(&needle))
                        || c.emails()
                            .iter()
                            .any(|e| fold(&e.address).contains(&needle))
                })
                .cloned()
                .collect();
            assert_eq!(found, oracle, "{query:?}");
        }
        // A merged-away record's e-mail finds the contact it is part of.
        let by_member = device.search("ada.l@example.org").unwrap();
        assert_eq!(
            by_member.iter().map(Contact::id).collect::<Vec<_>>(),
            [pair]
        );

        // Every prefix of every resolvable id, from 4 digits on: the id itself if no other
        // resolvable id shares the prefix, else an error that asks for more digits.
        let hexes: Vec<(RecordId, String)> =
            resolvable.iter().map(|id| (*id, id.to_hex())).collect();
        let mut shared = 0;
        for (id, hex) in &hexes {
            for len in 4..=hex.len() {
                let prefix = &hex[..len];
                let sharing = hexes.iter().filter(|(_, h)| h.starts_with(prefix)).count();
                match device.resolve_id(&prefix.to_uppercase()) {
                    Ok(found) => {
                        assert_eq!(sharing, 1, "{prefix} is shared, yet resolved");
                        assert_eq!(found, *id, "{prefix}");
                    }
                    Err(ClientError::InvalidInput(message)) => {
                        assert!(sharing > 1, "{prefix}: {message}");
                        assert!(message.contains("several"), "{message}");
                        shared += 1;
                    }
                    Err(other) => panic!("{prefix}: {other}"),
                }
                if sharing == 1 {
                    break;
                }
            }
        }
        assert!(shared > 0, "3,000 contacts share some 4-digit prefixes");
        assert!(resolvable.contains(&separated));
        assert!(
            matches!(
                device.resolve_id(&ids[7].to_hex()[..12]),
                Err(ClientError::UnknownContact(_))
            ),
            "a deleted contact's prefix resolves to nothing"
        );
        relay.shutdown().await.unwrap();
    }

    #[test]
    fn search_folding_ignores_case_and_accents() {
        assert_eq!(fold("José ÅNGSTRÖM"), "jose angstrom");
        assert!(fold("Seán Ó Briain").contains(&fold("sean o")));
    }

    /// Runs `write` while the records lock is held (as by a pull or an import writing merged
    /// records), and checks that it waits for the lock, then completes once it is released.
    async fn waits_for_the_records_lock<T: Send + 'static>(
        device: &Device,
        what: &str,
        write: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> T {
        let held = device.inner.records_lock.clone().lock_owned().await;
        let mut task = tokio::spawn(write);
        // A write that ignored the lock finishes in milliseconds; on a machine so slow that
        // it takes longer, this check passes without proving anything, and never fails.
        let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut task).await;
        assert!(
            early.is_err(),
            "{what} wrote records while the lock was held"
        );
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(30), task)
            .await
            .unwrap_or_else(|_| panic!("{what} still waits after the lock was released"))
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_writer_of_merged_records_takes_the_records_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, device) = crate::sync::tests::device_on_relay(dir.path()).await;
        let fields = ContactFields {
            name: Some("Ada Lovelace".into()),
            ..Default::default()
        };

        let d = device.clone();
        let added = waits_for_the_records_lock(&device, "add_contact", async move {
            d.add_contact(&fields).await
        })
        .await;
        let d = device.clone();
        waits_for_the_records_lock(&device, "edit_contact", async move {
            let company = ContactFields {
                company: Some("Analytical Engines".into()),
                ..Default::default()
            };
            d.edit_contact(&added, &company).await
        })
        .await;
        let d = device.clone();
        let csv = "First Name,Last Name,URL,Email Address,Company,Position,Connected On\r\n\
            Alan,Turing,https://www.linkedin.com/in/alan-turing,,Bletchley,,01 Jan 2020\r\n";
        let report = crate::import::linkedin::import_bytes(
            csv.as_bytes(),
            &crate::import::ImportOptions::default(),
        )
        .unwrap();
        let summary =
            waits_for_the_records_lock(&device, "import", async move { d.import(report).await })
                .await;
        assert_eq!(summary.added, 1);
        let d = device.clone();
        waits_for_the_records_lock(&device, "sync", async move { d.sync().await }).await;

        let ada = device.contact(&added).unwrap();
        assert_eq!(ada.company(), Some("Analytical Engines"));
        assert_eq!(device.contacts().unwrap().len(), 2);
        relay.shutdown().await.unwrap();
    }
}
