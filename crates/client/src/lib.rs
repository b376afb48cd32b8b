#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// First: its macros define enums of the modules below.
#[macro_use]
mod mirror;

#[cfg(feature = "sync")]
pub mod account;
#[cfg(feature = "sync")]
pub mod clock;
#[cfg(feature = "sync")]
pub mod contacts;
#[cfg(feature = "sync")]
pub mod device;
#[cfg(feature = "sync")]
pub mod error;
pub mod export;
#[cfg(feature = "sync")]
pub mod heal;
#[cfg(feature = "sync")]
pub mod history;
pub mod import;
#[cfg(feature = "sync")]
pub mod keystore;
#[cfg(feature = "sync")]
pub mod merging;
#[cfg(feature = "sync")]
pub mod net;
#[cfg(feature = "sync")]
mod pipeline;
#[cfg(feature = "sync")]
pub mod recovery;
#[cfg(feature = "sync")]
pub mod store;
#[cfg(feature = "sync")]
pub mod sync;
#[cfg(feature = "sync")]
pub mod wake;

#[cfg(feature = "sync")]
pub use account::{AccountDetail, AccountInfo, StreamInfo};
#[cfg(feature = "sync")]
pub use clock::ClockSkew;
#[cfg(feature = "sync")]
pub use contacts::{ClearField, ConflictView, ContactFields, EditOptions, ImportSummary};
#[cfg(feature = "sync")]
pub use device::{Device, DeviceInfo, LinkApproval, PendingLink, RecoveryKeyText};
#[cfg(feature = "sync")]
pub use error::ClientError;
#[cfg(feature = "sync")]
pub use heal::{CutStream, RelayHeal, RelayMove, StreamRestore};
#[cfg(feature = "sync")]
pub use history::{MeetingView, ParticipantView};
pub use kith_protocol::contact::Contact;
#[cfg(feature = "sync")]
pub use recovery::{RecoveryState, RecoveryStatus};
#[cfg(feature = "sync")]
pub use sync::{CompactReport, NewerFormat, PastEnd, SyncReport, Withheld};
