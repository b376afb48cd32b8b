//! `TruncateStream`: a device drops its own envelopes before `before_seq`, after writing a
//! snapshot there (docs/PROTOCOL.md §9). The stream's last seq is unchanged.

use kith_protocol::proto::TruncateStream;

use super::{Reply, authorized, durable, ok, truncate_stream};
use crate::error::RequestError;
use crate::state::{Conn, Shared};

pub(crate) async fn handle(shared: &Shared, conn: &Conn, req: TruncateStream) -> Reply {
    let (account, device) = authorized(shared, conn)?;
    {
        let mut inner = account.lock();
        let meta = inner.streams.get(&device).copied().unwrap_or_default();
        if req.before_seq == 0 || req.before_seq > meta.last_seq {
            return Err(RequestError::invalid(format!(
                "before_seq must be in 1..={} (the snapshot stays)",
                meta.last_seq
            )));
        }
        let after = truncate_stream(
            shared,
            &mut inner,
            &account.id,
            &device,
            meta,
            req.before_seq,
        )?;
        inner.streams.insert(device, after);
    }
    durable(shared).await?;
    ok()
}
