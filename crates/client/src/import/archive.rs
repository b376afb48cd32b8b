//! Reading named members of a zip archive (Google Takeout, Twitter archive), bounded.
//!
//! Only the central directory is read to list members; a member's bytes are decompressed only
//! when the importer asks for it by name, and never more than the limit (a zip bomb stops at
//! the limit, whatever the sizes its headers claim).

use std::io::{Read, Seek};

use super::{FileKind, ImportError, read_bounded};

/// Most members an archive may list.
pub(crate) const MAX_MEMBERS: usize = 100_000;

/// An opened archive.
pub(crate) struct Archive<R: Read + Seek> {
    inner: zip::ZipArchive<R>,
    kind: FileKind,
}

impl<R: Read + Seek> Archive<R> {
    /// Opens an archive; not a zip is [`ImportError::WrongKind`].
    pub(crate) fn open(reader: R, kind: FileKind) -> Result<Self, ImportError> {
        let inner = zip::ZipArchive::new(reader).map_err(|_| ImportError::WrongKind {
            expected: kind,
            reason: "it is not a zip archive".into(),
        })?;
        if inner.len() > MAX_MEMBERS {
            return Err(ImportError::TooManyRecords {
                kind,
                limit: MAX_MEMBERS,
            });
        }
        Ok(Archive { inner, kind })
    }

    /// The names of every member, in archive order (from the central directory: no member is
    /// opened).
    pub(crate) fn names(&self) -> Vec<String> {
        self.inner
            .file_names()
            .filter_map(|name| name.ok().map(std::borrow::Cow::into_owned))
            .collect()
    }

    /// The bytes of the member called `name`, at most `limit` of them.
    pub(crate) fn read(&mut self, name: &str, limit: u64) -> Result<Vec<u8>, ImportError> {
        let kind = self.kind;
        let member = self
            .inner
            .by_name(name)
            .map_err(|_| ImportError::WrongKind {
                expected: kind,
                reason: "an archive member cannot be read".into(),
            })?;
        read_bounded(member, limit, kind).map_err(|e| match e {
            // A corrupt deflate stream is an I/O error from the decoder.
            ImportError::Io { .. } => ImportError::WrongKind {
                expected: kind,
                reason: "an archive member is corrupt".into(),
            },
            other => other,
        })
    }
}
