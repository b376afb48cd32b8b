//! `Subscribe`: the stream stays open; the relay answers `Ok` once subscribed, then sends a
//! `Notification` whenever another device of the account pushes. It ends when the client
//! closes it, the account is deleted, or the relay shuts down.

use kith_protocol::proto::{ErrorCode, Notification, Ok as OkResponse, Response, response};
use std::time::Duration;

use kith_protocol::ids::DeviceId;
use tokio::sync::broadcast::{self, error::RecvError};

use super::authorized;
use crate::error::RequestError;
use crate::server::REQUEST_TIMED_OUT;
use crate::state::{Account, AccountEvent, Conn, Shared};
use kith_net::write_message;

fn notification(device: &DeviceId, last_seq: u64) -> Response {
    Response {
        kind: Some(response::Kind::Notification(Notification {
            device_id: device.as_bytes().to_vec(),
            last_seq,
        })),
    }
}

/// Writes one message, or resets the stream if the subscriber does not take it within
/// `deadline` (a subscriber that stops reading must not pin this task forever).
async fn deliver(
    send: &mut quinn::SendStream,
    message: &Response,
    deadline: Duration,
) -> Result<(), ()> {
    match tokio::time::timeout(deadline, write_message(send, message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(()),
        Err(_) => {
            tracing::debug!("subscriber not reading; subscription reset");
            let _ = send.reset(REQUEST_TIMED_OUT.into());
            Err(())
        }
    }
}

/// Runs a subscription on `send` until it ends. Errors before subscribing are returned for the
/// caller to send; afterwards the stream is simply finished. Every message must be taken by
/// the subscriber within `deadline`.
pub(crate) async fn run(
    shared: &Shared,
    conn: &Conn,
    send: &mut quinn::SendStream,
    deadline: Duration,
) -> Result<(), RequestError> {
    let (account, device) = authorized(shared, conn)?;
    let _live = shared.live.subscriptions.enter();
    let mut events = account.subscribe();
    let result = serve(shared, send, deadline, &account, device, &mut events).await;
    // The last subscriber to leave takes the account's notification channel with it.
    drop(events);
    account.unsubscribed();
    result
}

async fn serve(
    shared: &Shared,
    send: &mut quinn::SendStream,
    deadline: Duration,
    account: &Account,
    device: DeviceId,
    events: &mut broadcast::Receiver<AccountEvent>,
) -> Result<(), RequestError> {
    let mut shutdown = shared.shutdown.clone();
    let ok = Response {
        kind: Some(response::Kind::Ok(OkResponse {})),
    };
    if deliver(send, &ok, deadline).await.is_err() {
        return Ok(());
    }
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = shutdown.changed() => {
                let _ = deliver(send, &RequestError::new(ErrorCode::ShuttingDown, "the relay is shutting down").to_response(), deadline).await;
                return Ok(());
            }
            _ = send.stopped() => return Ok(()),
        };
        let sent = match event {
            Ok(AccountEvent::Pushed {
                device: writer,
                last_seq,
            }) if writer != device => {
                deliver(send, &notification(&writer, last_seq), deadline).await
            }
            Ok(AccountEvent::Pushed { .. }) => Ok(()),
            Ok(AccountEvent::Deleted) | Err(RecvError::Closed) => {
                let _ = deliver(
                    send,
                    &RequestError::account_deleted().to_response(),
                    deadline,
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
                    result = deliver(send, &notification(&writer, last_seq), deadline).await;
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
