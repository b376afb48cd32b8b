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
//!
//! The `sync` feature (on by default) holds everything but the importers. With
//! `default-features = false` the crate is [`import`] alone, without tokio, quinn, rustls or
//! sled: the fuzz crate builds it that way.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "sync")]
pub mod contacts;
#[cfg(feature = "sync")]
pub mod device;
#[cfg(feature = "sync")]
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
#[cfg(feature = "sync")]
pub mod keystore;
#[cfg(feature = "sync")]
pub mod net;
#[cfg(feature = "sync")]
mod pipeline;
#[cfg(feature = "sync")]
pub mod store;
#[cfg(feature = "sync")]
pub mod sync;

#[cfg(feature = "sync")]
pub use contacts::{ConflictView, ContactFields, ImportSummary};
#[cfg(feature = "sync")]
pub use device::{Device, DeviceInfo, PendingLink, RecoveryKeyText};
#[cfg(feature = "sync")]
pub use error::ClientError;
pub use kith_protocol::record::Contact;
#[cfg(feature = "sync")]
pub use sync::{CompactReport, SyncReport};
