//! Bounds on everything decoded from untrusted bytes. Checked before anything is allocated.

/// Largest encoded envelope accepted anywhere (header, ciphertext and signature).
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;
/// Largest plaintext payload (before padding) a device will seal.
pub const MAX_PAYLOAD_BYTES: usize = MAX_ENVELOPE_BYTES - 64 * 1024;
/// Largest encoded envelope header.
pub const MAX_HEADER_BYTES: usize = 256;
/// Largest encoded signed roster.
pub const MAX_ROSTER_BYTES: usize = 256 * 1024;
/// Devices present in one roster.
pub const MAX_DEVICES: usize = 64;
/// Devices listed as removed in one roster.
pub const MAX_REMOVED_DEVICES: usize = 256;
/// Account-key rotations in one roster's key chain.
pub const MAX_KEY_ROTATIONS: usize = 1024;
/// Largest encrypted device name (plaintext at most 64 bytes plus the tag).
pub const MAX_DEVICE_NAME_BYTES: usize = 64;
/// Largest sealed bundle (link or recovery).
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
/// Largest encoded sealed epoch key (a well-formed one is about 1.3 KiB).
pub const MAX_SEALED_EPOCH_KEY_BYTES: usize = 2048;
/// Epoch secrets in one account bundle (one per epoch; every epoch after the first rotates the
/// account key, so this is one more than the key-chain bound).
pub const MAX_BUNDLE_EPOCHS: usize = MAX_KEY_ROTATIONS + 1;
/// Longest link code text accepted, whitespace included (a well-formed one is about 1.7 KiB).
pub const MAX_LINK_CODE_CHARS: usize = 8 * 1024;
/// Largest push-gateway token a device may register with its relay (docs/PROTOCOL.md §12.1):
/// room for an APNs or FCM token encrypted for the gateway, with a nonce and a tag.
pub const MAX_PUSH_TOKEN_BYTES: usize = 1024;
/// Operations in one batch.
pub const MAX_OPERATIONS_PER_BATCH: usize = 10_000;
/// Field writes in one operation.
pub const MAX_WRITES_PER_OPERATION: usize = 1_000;
/// Length of any string in a record (field key or text value).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// The largest encoded value of a field kind this version does not know, carried verbatim
/// (docs/PROTOCOL.md §8.1): a few strings' worth, so a newer kind of data has room and a
/// hostile writer still cannot make one register hold a whole payload.
pub const MAX_OPAQUE_VALUE_BYTES: usize = 4 * MAX_TEXT_BYTES;
