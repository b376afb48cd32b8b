//! One definition for the enums and records that the app bindings (`kith-ffi`) and the CLI's
//! `--json` output define again.
//!
//! The bindings crate needs its own copy of such a type: UniFFI's derives expand to unsafe
//! code in the crate that derives, and this crate forbids unsafe code, so the derive cannot sit
//! on a type here. The CLI's `--json` shapes are its own structs too, so that a change here
//! cannot silently change what scripts read. Each such type is therefore written once, as a
//! macro of this module that defines it with the attributes (and names) it is given:
//!
//! - `clear_field_enum!` and `export_enum!`: this crate defines `ClearField` and
//!   `import::Export` with them; `kith-ffi` defines its
//!   `ClearableField` and `ImportKind` (`mirrors` the original, which also writes the `From`
//!   conversions both ways, so they cannot miss a variant).
//! - `contact_records!`: a contact and its e-mail, phone, URL and handle records, with
//!   `From<&Contact>` (the CLI's `ContactJson`, the bindings' `ContactView`).
//! - `relay_account_record!`: the relay's account information around the usage figures both
//!   show (the CLI's `RelayAccountJson`, the bindings' `RelayAccountInfo`).
//!
//! Adding a variant or a field here adds it to both; the bindings must then be regenerated
//! (`crates/ffi/generate.sh`).
//!
//! One more is this crate's own: `contact_card_record!`, the fields a vCard carries of a
//! contact, which `import::ImportedContact` (what an importer read) and
//! `export::ExportContact` (what the vCard writer writes) both hold.
/// Defines the fieldless enum `$name` with the given attributes and variants; with
/// `mirrors $orig`, also `From` conversions both ways between `$name` and `$orig`, variant for
/// variant. Used by the enum macros of this module (`clear_field_enum!`, `export_enum!`).
#[doc(hidden)]
#[macro_export]
macro_rules! __fieldless_enum {
    (
        $(#[$($attr:tt)*])*
        $vis:vis enum $name:ident {
            $($(#[$($variant_attr:tt)*])* $variant:ident,)*
        }
    ) => {
        $(#[$($attr)*])*
        $vis enum $name {
            $($(#[$($variant_attr)*])* $variant,)*
        }
    };
    (
        $(#[$($attr:tt)*])*
        $vis:vis enum $name:ident mirrors $orig:path {
            $($(#[$($variant_attr:tt)*])* $variant:ident,)*
        }
    ) => {
        $crate::__fieldless_enum! {
            $(#[$($attr)*])*
            $vis enum $name {
                $($(#[$($variant_attr)*])* $variant,)*
            }
        }
        $crate::__fieldless_enum!(@from $name, $orig, $($variant)*);
    };
    (@from $name:ident, $orig:path, $($variant:ident)*) => {
        impl ::core::convert::From<$name> for $orig {
            fn from(value: $name) -> Self {
                match value {
                    $($name::$variant => <$orig>::$variant,)*
                }
            }
        }
        impl ::core::convert::From<$orig> for $name {
            fn from(value: $orig) -> Self {
                match value {
                    $(<$orig>::$variant => $name::$variant,)*
                }
            }
        }
    };
}

/// Defines an enum with the variants of `ClearField` (the fields an edit
/// can clear), with the given attributes: `clear_field_enum! { #[derive(…)] pub enum Name }`,
/// or `… pub enum Name mirrors kith_client::ClearField` for a copy with conversions.
#[doc(hidden)]
#[macro_export]
macro_rules! clear_field_enum {
    ($(#[$($attr:tt)*])* $vis:vis enum $name:ident $(mirrors $orig:path)?) => {
        $crate::__fieldless_enum! {
            $(#[$($attr)*])*
            $vis enum $name $(mirrors $orig)? {
                /// The company.
                Company,
                /// The job title.
                Title,
                /// The birthday.
                Birthday,
                /// The private note.
                Note,
                /// Every e-mail address.
                Emails,
                /// Every phone number.
                Phones,
            }
        }
    };
}

/// Defines an enum with the variants of `import::Export` (the exports
/// there is an importer for), with the given attributes: `export_enum! { #[derive(…)] pub enum
/// Name }`, or `… pub enum Name mirrors kith_client::import::Export` for a copy with
/// conversions.
#[doc(hidden)]
#[macro_export]
macro_rules! export_enum {
    ($(#[$($attr:tt)*])* $vis:vis enum $name:ident $(mirrors $orig:path)?) => {
        $crate::__fieldless_enum! {
            $(#[$($attr)*])*
            $vis enum $name $(mirrors $orig)? {
                /// LinkedIn `Connections.csv`.
                Linkedin,
                /// Facebook `your_friends.json` or `friends.json`.
                Facebook,
                /// macOS Messages `chat.db`: message counts per person only, never message text;
                /// names from the address book.
                Imessage,
                /// A vCard file, 2.1, 3.0 or 4.0.
                Vcard,
                /// An iCalendar file (.ics) or a Google Takeout zip of them: meetings, never
                /// descriptions.
                Calendar,
                /// An mbox (Gmail Takeout, Thunderbird, Apple Mail): headers only, never a body.
                Mail,
                /// A Twitter/X archive zip: follows, never direct messages.
                Twitter,
            }
        }
    };
}

/// Defines the records of a contact as the CLI's `--json` prints it and the app bindings return
/// it, each with the given attributes: `$contact` (a `Contact`'s fields as
/// text, and `sources` of the type the caller gives, made from each `Source` by `$to_source`)
/// and the `$email`, `$phone`, `$url` and `$handle` records of its lists; and
/// `From<&Contact>` for `$contact`.
///
/// ```ignore
/// kith_client::contact_records! {
///     #[derive(Debug, Serialize)]
///     pub struct ContactJson, EmailJson, PhoneJson, UrlJson, HandleJson;
///     /// Where the contact came from.
///     sources: SourceJson = SourceJson::from;
/// }
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! contact_records {
    (
        $(#[$($attr:tt)*])*
        $vis:vis struct $contact:ident, $email:ident, $phone:ident, $url:ident, $handle:ident;
        $(#[$($sources_attr:tt)*])*
        sources: $source:ty = $to_source:expr;
    ) => {
        /// An e-mail address of a contact.
        $(#[$($attr)*])*
        $vis struct $email {
            /// The address.
            pub address: String,
            /// Its label (`home`, `work` …; may be empty).
            pub label: String,
        }

        /// A phone number of a contact.
        $(#[$($attr)*])*
        $vis struct $phone {
            /// E.164.
            pub number: String,
            /// Its label (may be empty).
            pub label: String,
        }

        /// A web address of a contact.
        $(#[$($attr)*])*
        $vis struct $url {
            /// The URL.
            pub url: String,
            /// Its label (may be empty).
            pub label: String,
        }

        /// A social or messaging handle of a contact.
        $(#[$($attr)*])*
        $vis struct $handle {
            /// The service (`twitter`, `mastodon` …).
            pub service: String,
            /// The handle on it.
            pub handle: String,
        }

        /// A contact, as `kith contacts show --json` prints it and the app bindings return it.
        $(#[$($attr)*])*
        $vis struct $contact {
            /// Full hex id.
            pub id: String,
            /// Full name.
            pub name: Option<String>,
            /// Company.
            pub company: Option<String>,
            /// Job title.
            pub title: Option<String>,
            /// `YYYY-MM-DD`, or `--MM-DD` when the year is unknown.
            pub birthday: Option<String>,
            /// Private note.
            pub note: Option<String>,
            /// E-mail addresses.
            pub emails: Vec<$email>,
            /// Phone numbers (E.164).
            pub phones: Vec<$phone>,
            /// Web addresses.
            pub urls: Vec<$url>,
            /// Social and messaging handles.
            pub handles: Vec<$handle>,
            /// Tags.
            pub tags: Vec<String>,
            $(#[$($sources_attr)*])*
            pub sources: Vec<$source>,
        }

        impl ::core::convert::From<&$crate::Contact> for $contact {
            fn from(contact: &$crate::Contact) -> Self {
                $contact {
                    id: contact.id().to_hex(),
                    name: contact.name().map(str::to_owned),
                    company: contact.company().map(str::to_owned),
                    title: contact.title().map(str::to_owned),
                    birthday: contact.birthday().map($crate::contacts::date_text),
                    note: contact.note().map(str::to_owned),
                    emails: contact
                        .emails()
                        .iter()
                        .map(|e| $email {
                            address: e.address.clone(),
                            label: e.label.clone(),
                        })
                        .collect(),
                    phones: contact
                        .phones()
                        .iter()
                        .map(|p| $phone {
                            number: p.e164.clone(),
                            label: p.label.clone(),
                        })
                        .collect(),
                    urls: contact
                        .urls()
                        .iter()
                        .map(|u| $url {
                            url: u.url.clone(),
                            label: u.label.clone(),
                        })
                        .collect(),
                    handles: contact
                        .handles()
                        .iter()
                        .map(|h| $handle {
                            service: h.service.clone(),
                            handle: h.handle.clone(),
                        })
                        .collect(),
                    tags: contact.tags().to_vec(),
                    sources: contact.sources().iter().map($to_source).collect(),
                }
            }
        }
    };
}

/// Defines `$name`, the relay's account information as the CLI's `--json` prints it and the
/// app bindings return it, with the given attributes: the caller's fields before and after the
/// usage figures of `AccountInfo` every caller shows (bytes, devices,
/// envelopes, and whether the operator set the quotas), and `$name::with_usage(&info,
/// <the caller's fields in order>)`.
///
/// ```ignore
/// kith_client::relay_account_record! {
///     #[derive(Debug, Serialize)]
///     pub struct RelayAccountJson {
///         /// The relay's address.
///         pub address: String,
///     } usage {
///         /// The last day a device was active.
///         pub last_active_day: Option<String>,
///     }
/// }
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! relay_account_record {
    (
        $(#[$($attr:tt)*])*
        $vis:vis struct $name:ident {
            $($(#[$($head_attr:tt)*])* pub $head:ident: $head_ty:ty,)*
        } usage {
            $($(#[$($tail_attr:tt)*])* pub $tail:ident: $tail_ty:ty,)*
        }
    ) => {
        $(#[$($attr)*])*
        $vis struct $name {
            $($(#[$($head_attr)*])* pub $head: $head_ty,)*
            /// Bytes stored (envelopes and sealed keys).
            pub bytes_used: u64,
            /// Bytes the account may store.
            pub bytes_quota: u64,
            /// Devices in the relay's roster.
            pub devices: u64,
            /// Devices the account may have.
            pub devices_max: u64,
            /// Envelopes stored.
            pub envelopes: u64,
            /// Whether the operator set `bytes_quota` for this account (not the relay's
            /// default); `None` (`null`) from a relay older than 0.2.0, as every field below.
            pub bytes_quota_set: Option<bool>,
            /// Whether the operator set `devices_max` for this account.
            pub devices_max_set: Option<bool>,
            $($(#[$($tail_attr)*])* pub $tail: $tail_ty,)*
        }

        impl $name {
            /// The record of `info` with the given fields.
            fn with_usage(
                info: &$crate::AccountInfo,
                $($head: $head_ty,)*
                $($tail: $tail_ty,)*
            ) -> Self {
                let detail = info.detail.as_ref();
                $name {
                    $($head,)*
                    bytes_used: info.bytes_used,
                    bytes_quota: info.bytes_quota,
                    devices: info.devices,
                    devices_max: info.devices_max,
                    envelopes: info.envelopes,
                    bytes_quota_set: detail.map(|d| d.bytes_quota_set),
                    devices_max_set: detail.map(|d| d.devices_max_set),
                    $($tail,)*
                }
            }
        }
    };
}

/// Defines `$name` with the given attributes: the caller's fields before and after the fields
/// a vCard carries of a contact (`FN`, `EMAIL`, `TEL`, `URL`, `X-SOCIALPROFILE`, `ORG`,
/// `TITLE`, `BDAY`, `NOTE`), so that what an importer reads (`import::ImportedContact`) and
/// what the vCard writer writes (`export::ExportContact`) cannot drift apart.
///
/// ```ignore
/// contact_card_record! {
///     #[derive(Debug, Clone, PartialEq)]
///     pub struct ExportContact {
///         /// `UID`, written when present.
///         pub uid: Option<String>,
///     } card {}
/// }
/// ```
macro_rules! contact_card_record {
    (
        $(#[$($attr:tt)*])*
        $vis:vis struct $name:ident {
            $($(#[$($head_attr:tt)*])* pub $head:ident: $head_ty:ty,)*
        } card {
            $($(#[$($tail_attr:tt)*])* pub $tail:ident: $tail_ty:ty,)*
        }
    ) => {
        $(#[$($attr)*])*
        $vis struct $name {
            $($(#[$($head_attr)*])* pub $head: $head_ty,)*
            /// Display name (`FN`; written empty when absent, as vCard 4.0 requires the
            /// property).
            pub name: Option<String>,
            /// E-mail addresses with their labels (`EMAIL`); an importer lists each at most
            /// once (compared case-insensitively).
            pub emails: Vec<::kith_protocol::proto::Email>,
            /// Phone numbers, E.164, with their labels (`TEL`, written as `tel:` URIs); an
            /// importer lists each at most once.
            pub phones: Vec<::kith_protocol::proto::Phone>,
            /// Web addresses with their labels (`URL`); an importer lists each at most once.
            pub urls: Vec<::kith_protocol::proto::Url>,
            /// Social-network and messaging handles (`X-SOCIALPROFILE`); an importer lists
            /// each at most once.
            pub handles: Vec<::kith_protocol::proto::Handle>,
            /// Company or organization (`ORG`).
            pub company: Option<String>,
            /// Job title or position (`TITLE`).
            pub title: Option<String>,
            /// Birthday (`BDAY`); `year` 0 when the year is unknown (written `--MMDD`).
            pub birthday: Option<::kith_protocol::proto::Date>,
            /// Free-text note (`NOTE`).
            pub note: Option<String>,
            $($(#[$($tail_attr)*])* pub $tail: $tail_ty,)*
        }
    };
}
