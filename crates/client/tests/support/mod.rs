//! What the importer tests share.

use kith_client::import::{ImportReport, ImportedContact};

/// The contact of `report` whose source identity is `identity`; panics if there is none.
pub fn find<'r>(report: &'r ImportReport, identity: &str) -> &'r ImportedContact {
    report
        .contacts
        .iter()
        .find(|c| c.source_identity == identity)
        .unwrap_or_else(|| panic!("no contact {identity} in the report"))
}
