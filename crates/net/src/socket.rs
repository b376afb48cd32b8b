//! A QUIC endpoint's UDP socket with a look at every datagram it receives, before quinn does:
//! the relay's gate drops new connections from quiet addresses ([`Inspect`] may give a
//! datagram a length of zero, which quinn skips), and a client notes that its relay answered
//! at all.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// What looks at received datagrams.
pub trait Inspect: std::fmt::Debug + Send + Sync + 'static {
    /// Called after each successful receive with the datagrams read: `bufs[i]` holds
    /// `meta[i].len` bytes (several segments of `meta[i].stride` bytes after a coalesced
    /// read). Setting a `meta.len` to 0 drops that datagram.
    fn received(&self, bufs: &[IoSliceMut<'_>], meta: &mut [RecvMeta]);
}

/// quinn's socket for the runtime, with [`Inspect::received`] called on what it reads;
/// sending and everything else is the inner socket's.
#[derive(Debug)]
pub struct InspectedSocket<I> {
    inner: Arc<dyn AsyncUdpSocket>,
    inspect: Arc<I>,
}

impl<I: Inspect> InspectedSocket<I> {
    /// Wraps `inner` (from `quinn::Runtime::wrap_udp_socket`).
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, inspect: Arc<I>) -> Self {
        Self { inner, inspect }
    }
}

impl<I: Inspect> AsyncUdpSocket for InspectedSocket<I> {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let received = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(count)) = received {
            let count = count.min(bufs.len()).min(meta.len());
            self.inspect.received(&bufs[..count], &mut meta[..count]);
        }
        received
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
