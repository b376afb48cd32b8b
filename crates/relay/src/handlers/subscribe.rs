//! `Subscribe`: the stream stays open; the relay answers `Ok` once subscribed, then sends a
//! `Notification` whenever another device of the account pushes. It ends when the client
//! closes it, the account is deleted, or the relay shuts down.

use kith_protocol::proto::{ErrorCode, Notification, Ok as OkResponse, Response, response};
use tokio::sync::broadcast::error::RecvError;

use super::authorized;
use crate::error::RequestError;
use crate::frame::write_message;
use crate::state::{AccountEvent, Conn, Shared};

fn notification(device: &kith_protocol::ids::DeviceId, last_seq: u64) -> Response {
    Response {
        kind: Some(response::Kind::Notification(Notification {
            device_id: device.as_bytes().to_vec(),
            last_seq,
        })),
    }
}

/// Runs a subscription on `send` until it ends. Errors before subscribing are returned for the
/// caller to send; afterwards the stream is simply finished.
pub(crate) async fn run(
    shared: &Shared,
    conn: &Conn,
    send: &mut quinn::SendStream,
) -> Result<(), RequestError> {
    let (account, device) = authorized(shared, conn)?;
    let mut events = account.events.subscribe();
    let mut shutdown = shared.shutdown.clone();
    let ok = Response {
        kind: Some(response::Kind::Ok(OkResponse {})),
    };
    if write_message(send, &ok).await.is_err() {
        return Ok(());
    }
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = shutdown.changed() => {
                let _ = write_message(send, &RequestError::new(ErrorCode::ShuttingDown, "the relay is shutting down").to_response()).await;
                return Ok(());
            }
            _ = send.stopped() => return Ok(()),
        };
        let sent = match event {
            Ok(AccountEvent::Pushed {
                device: writer,
                last_seq,
            }) if writer != device => write_message(send, &notification(&writer, last_seq)).await,
            Ok(AccountEvent::Pushed { .. }) => Ok(()),
            Ok(AccountEvent::Deleted) | Err(RecvError::Closed) => {
                let _ = write_message(
                    send,
                    &RequestError::new(ErrorCode::UnknownAccount, "the account was deleted")
                        .to_response(),
                )
                .await;
                return Ok(());
            }
            Err(RecvError::Lagged(_)) => {
                // Missed some: tell the current position of every other stream instead.
                let streams: Vec<_> = account
                    .lock()
                    .streams
                    .iter()
                    .filter(|(d, _)| **d != device)
                    .map(|(d, m)| (*d, m.last_seq))
                    .collect();
                let mut result = Ok(());
                for (writer, last_seq) in streams {
                    result = write_message(send, &notification(&writer, last_seq)).await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        };
        if sent.is_err() {
            return Ok(());
        }
    }
}
