//! End-to-end tests live in `tests/tests/`; this library holds what several of them share.

use std::path::Path;
use std::time::Duration;

use kith_client::net::RelayTarget;
use kith_client::{Device, PendingLink};

/// Links a new device at `home` to `approver`'s account, the two sides run concurrently as
/// on two machines: the new device shows its code and waits, the approver approves it.
/// Waits up to 60 s for the approval and the first pull. Panics if either side fails.
pub async fn link(approver: &Device, home: &Path, relay: RelayTarget, name: &str) -> Device {
    let pending = PendingLink::new(home, relay, name).unwrap();
    let code = pending.code().to_string();
    let (linked, approved) = tokio::join!(
        pending.complete(Duration::from_secs(60)),
        approver.approve_link(&code)
    );
    approved.unwrap();
    linked.unwrap()
}
