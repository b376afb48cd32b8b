//! `kith-client`: everything a Kith device does.
//!
//! A [`Device`] creates an account or joins one through device linking, keeps the person's
//! contacts in an encrypted local store, and syncs them through a relay that sees only
//! ciphertext. Importers turn real exports (LinkedIn, Facebook, iMessage aggregates, address
//! book, vCard) into contacts.
//!
//! ```no_run
//! # async fn demo() -> kith_client::error::Result<()> {
//! use kith_client::{Device, net::RelayTarget};
//! let relay = RelayTarget::pinned("127.0.0.1:4433", &"00".repeat(32))?;
//! let (device, recovery_key) =
//!     Device::create(std::path::Path::new("/tmp/kith-a"), relay, "laptop", None).await?;
//! device.sync().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod contacts;
pub mod device;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod keystore;
pub mod net;
mod pipeline;
pub mod store;
pub mod sync;

pub use contacts::{ConflictView, ContactFields, ImportSummary};
pub use device::{Device, DeviceInfo, PendingLink, RecoveryKeyText};
pub use error::ClientError;
pub use kith_protocol::record::Contact;
pub use sync::{CompactReport, SyncReport};
