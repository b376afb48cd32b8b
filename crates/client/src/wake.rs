//! Wake-up notifications (docs/PROTOCOL.md §12.1): a device registers with its relay the opaque
//! token its app obtained from a push gateway; when another device of the account pushes, the
//! relay hands the token (and nothing else) to the gateway, which wakes the app to sync.
//!
//! The token is opaque to Kith: the app gets it from its gateway, typically an APNs or FCM
//! token encrypted for the gateway, so the relay cannot use it. `crates/ffi/README.md` says
//! what a gateway receives and how to write one.

use kith_protocol::limits::MAX_PUSH_TOKEN_BYTES;
use kith_protocol::proto::{self, request, response};

use crate::device::Device;
use crate::error::{ClientError, Result};
use crate::net::NetError;

impl Device {
    /// Registers `token` (1 to 1024 bytes, from the app's push gateway) as this device's push
    /// target, replacing an earlier one: the relay then wakes this device through the gateway
    /// whenever another device of the account pushes (at most once per the relay's interval).
    /// Register again whenever the app starts or its platform token changes.
    ///
    /// [`ClientError::Unsupported`] if the relay does not send wake-up notifications (its
    /// operator configured no gateway, or it predates them).
    pub async fn register_push_target(&self, token: &[u8]) -> Result<()> {
        if token.is_empty() || token.len() > MAX_PUSH_TOKEN_BYTES {
            return Err(ClientError::InvalidInput(format!(
                "a push token must be 1 to {MAX_PUSH_TOKEN_BYTES} bytes, not {}",
                token.len()
            )));
        }
        self.push_target_request(request::Kind::RegisterPushTarget(
            proto::RegisterPushTarget {
                token: token.to_vec(),
            },
        ))
        .await
    }

    /// Removes this device's push target: the relay stops waking it. Succeeds whether or not
    /// one was registered.
    pub async fn unregister_push_target(&self) -> Result<()> {
        self.push_target_request(request::Kind::UnregisterPushTarget(
            proto::UnregisterPushTarget {},
        ))
        .await
    }

    async fn push_target_request(&self, kind: request::Kind) -> Result<()> {
        let mut slot = self.inner.connection.lock().await;
        let connection = self.connection(&mut slot).await?.clone();
        drop(slot);
        match connection.request(kind).await {
            Ok(response::Kind::Ok(_)) => Ok(()),
            Ok(_) => Err(NetError::Protocol("expected ok".into()).into()),
            Err(NetError::Relay {
                code: proto::ErrorCode::Unsupported,
                message,
            }) => Err(ClientError::Unsupported(message)),
            // How a relay that predates these requests (kith-relay 0.1) answers one: it skips
            // the unknown field and finds an empty request (docs/PROTOCOL.md §12.1).
            Err(NetError::Relay {
                code: proto::ErrorCode::Malformed,
                ..
            }) => Err(ClientError::Unsupported(
                "the relay predates wake-up notifications (kith-relay 0.1); ask its operator \
                 to update it"
                    .into(),
            )),
            Err(err) => Err(err.into()),
        }
    }
}
