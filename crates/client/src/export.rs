//! vCard 4.0 out: contacts as a file other address books read (`Device::export_vcard` converts
//! the merged view into [`ExportContact`]s). Reading vCards is [`crate::import::vcard`]; the
//! two meet only in the round-trip tests.

use crate::import::{ImportedContact, Provenance, text};

/// Labels written back as `TYPE=` (vCard 4.0's own types for each property, less the ignored
/// ones); any other label is written as a grouped `X-ABLabel`.
const EMAIL_TYPES: &[&str] = &["home", "work"];
const TEL_TYPES: &[&str] = &[
    "home",
    "work",
    "text",
    "fax",
    "cell",
    "video",
    "pager",
    "textphone",
];
const URL_TYPES: &[&str] = &["home", "work"];

contact_card_record! {
    /// A contact to write as vCard 4.0: the client converts its merged view into this.
    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct ExportContact {
        /// `UID`, written when present.
        pub uid: Option<String>,
    } card {}
}

impl From<&ImportedContact> for ExportContact {
    fn from(contact: &ImportedContact) -> Self {
        let uid = match &contact.provenance {
            Provenance::VCard(source) if !source.uid.is_empty() => Some(source.uid.clone()),
            _ => None,
        };
        ExportContact {
            uid,
            name: contact.name.clone(),
            emails: contact.emails.clone(),
            phones: contact.phones.clone(),
            urls: contact.urls.clone(),
            handles: contact.handles.clone(),
            company: contact.company.clone(),
            title: contact.title.clone(),
            birthday: contact.birthday,
            note: contact.note.clone(),
        }
    }
}

/// Writes contacts as vCard 4.0 (RFC 6350): CRLF line ends, lines folded at 75 octets, text
/// escaped. Labels that are vCard types of the property are written as `TYPE=`, any other label
/// as an `itemN.` group with `X-ABLabel`, which is how Apple Contacts keeps custom labels.
pub fn export_vcard4(contacts: &[ExportContact]) -> String {
    let mut out = String::new();
    for contact in contacts {
        let mut card = CardWriter::default();
        card.line("BEGIN:VCARD");
        card.line("VERSION:4.0");
        if let Some(uid) = &contact.uid {
            card.line(&format!("UID:{}", escape(uid)));
        }
        card.line(&format!(
            "FN:{}",
            escape(contact.name.as_deref().unwrap_or(""))
        ));
        for email in &contact.emails {
            card.labelled(
                "EMAIL",
                "",
                &email.label,
                EMAIL_TYPES,
                &escape(&email.address),
            );
        }
        for phone in &contact.phones {
            let value = format!("tel:{}", strip_controls(&phone.e164));
            card.labelled("TEL", ";VALUE=uri", &phone.label, TEL_TYPES, &value);
        }
        for url in &contact.urls {
            card.labelled("URL", "", &url.label, URL_TYPES, &strip_controls(&url.url));
        }
        for handle in &contact.handles {
            let service = match text::token(&handle.service) {
                s if s.is_empty() => "other".to_owned(),
                s => s,
            };
            card.line(&format!(
                "X-SOCIALPROFILE;TYPE={service}:{}",
                escape(&handle.handle)
            ));
        }
        if let Some(company) = &contact.company {
            card.line(&format!("ORG:{}", escape(company)));
        }
        if let Some(title) = &contact.title {
            card.line(&format!("TITLE:{}", escape(title)));
        }
        if let Some(date) = contact
            .birthday
            .filter(|d| text::valid_date(d.year, d.month, d.day))
        {
            if date.year == 0 {
                card.line(&format!("BDAY:--{:02}{:02}", date.month, date.day));
            } else {
                card.line(&format!(
                    "BDAY:{:04}{:02}{:02}",
                    date.year, date.month, date.day
                ));
            }
        }
        if let Some(note) = &contact.note {
            card.line(&format!("NOTE:{}", escape(note)));
        }
        card.line("END:VCARD");
        out.push_str(&card.out);
    }
    out
}

#[derive(Default)]
struct CardWriter {
    out: String,
    groups: usize,
}

impl CardWriter {
    /// Writes one content line, folded.
    fn line(&mut self, line: &str) {
        fold_into(&mut self.out, line);
    }

    fn labelled(&mut self, name: &str, params: &str, label: &str, types: &[&str], value: &str) {
        if label.is_empty() {
            self.line(&format!("{name}{params}:{value}"));
        } else if types.contains(&label) {
            self.line(&format!("{name}{params};TYPE={label}:{value}"));
        } else {
            self.groups += 1;
            let group = self.groups;
            self.line(&format!("item{group}.{name}{params}:{value}"));
            self.line(&format!("item{group}.X-ABLabel:{}", escape(label)));
        }
    }
}

/// Text escaping (RFC 6350 §3.4): backslash, comma, semicolon, newline.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let normalized = s.replace("\r\n", "\n").replace('\r', "\n");
    for c in normalized.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ',' => out.push_str("\\,"),
            ';' => out.push_str("\\;"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// A URI value: no escaping applies, but control characters would break the line.
fn strip_controls(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// Appends `line` folded at 75 octets (never inside a UTF-8 sequence), CRLF-terminated.
fn fold_into(out: &mut String, line: &str) {
    let mut width = 0usize;
    let mut limit = 75usize;
    for c in line.chars() {
        let len = c.len_utf8();
        if width + len > limit {
            out.push_str("\r\n ");
            width = 0;
            limit = 74;
        }
        out.push(c);
        width += len;
    }
    out.push_str("\r\n");
}

/// For tests of the line folding.
#[cfg(test)]
fn folded(line: &str) -> String {
    let mut out = String::new();
    fold_into(&mut out, line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_lines_within_75_octets_and_characters_whole() {
        let line = format!("NOTE:{}", "é".repeat(100));
        let out = folded(&line);
        for physical in out.split("\r\n") {
            assert!(physical.len() <= 75, "{} octets", physical.len());
        }
        let unfolded = out.trim_end_matches("\r\n").replace("\r\n ", "");
        assert_eq!(unfolded, line);
    }
}
