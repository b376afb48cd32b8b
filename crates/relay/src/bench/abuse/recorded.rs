//! Connection attempts the abuser sends as recorded datagrams.
//!
//! An attempt the relay refuses at the address's cap costs the relay the same whoever sends
//! it: its Initial datagrams are read, their keys derived and their first packet decrypted,
//! and a `CONNECTION_REFUSED` close is sent back, before any TLS work. Made by a QUIC client,
//! the same attempt cost the abuser a connection's set-up and teardown (~70 µs, ~1,650
//! attempts a second: BENCHMARKS.md, finding 7, ninth session) on the two cores it shares with
//! the relay. So every attempt that the abuser makes while it already holds as many
//! connections as the relay admits from one address is sent as the datagrams a real attempt
//! of its own QUIC client sent: recorded once per run ([`record`]) by connecting the
//! abuser's client ([`super::abuse`]'s configuration: the same ClientHello, transport
//! parameters and key shares) to a socket that never answers, and replayed as they were.
//!
//! Each recorded attempt keeps its connection ids, so the relay's answers can be told apart;
//! the relay keeps nothing of a connection it refused, so the same datagrams sent again are a
//! new attempt to it. An attempt the relay answers with a handshake instead (it had room) is
//! counted and not replayed again: the relay holds that half-open connection until its
//! handshake timeout, and would take a later copy of the datagrams as a duplicate of it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};

/// The datagrams of one connection attempt of a QUIC client, as it sent them.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The client's source connection id: the destination id of the relay's answers.
    scid: Vec<u8>,
    /// The attempt's datagrams (Initial packets: a ClientHello that does not fit in one
    /// datagram takes two).
    datagrams: Vec<Vec<u8>>,
}

impl Recorded {
    /// The attempt's datagrams, in the order the client sent them.
    #[cfg(test)]
    pub fn datagrams(&self) -> &[Vec<u8>] {
        &self.datagrams
    }
}

/// How the relay answered a recorded attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A short Initial packet: the relay's close (`CONNECTION_REFUSED`), sent before any
    /// handshake.
    Refused,
    /// A Retry packet: the relay asked the attempt to prove its address first.
    Retry,
    /// Anything longer: the relay's handshake (its ServerHello alone carries an ML-KEM-768
    /// ciphertext of 1,088 bytes).
    Handshake,
}

/// The longest datagram taken for a refusal: quinn's close of a refused connection is one
/// unpadded Initial packet of about 50 bytes; a ServerHello is over a kilobyte.
const REFUSAL_MAX_BYTES: usize = 600;

/// After the last datagram of a recording, how long [`record`] waits for more before it takes
/// the attempts as complete (a client retransmits an unanswered Initial only after about a
/// second).
const RECORD_QUIET: Duration = Duration::from_millis(50);

/// Attempts recorded at once: their datagrams must fit in the recording socket's buffer.
const RECORD_CHUNK: usize = 32;

/// The destination and source connection ids of a long-header packet, or `None`.
fn long_header_ids(datagram: &[u8]) -> Option<(&[u8], &[u8])> {
    if datagram.first()? & 0x80 == 0 {
        return None;
    }
    let dcid_len = usize::from(*datagram.get(5)?);
    let dcid = datagram.get(6..6 + dcid_len)?;
    let scid_len = usize::from(*datagram.get(6 + dcid_len)?);
    let scid = datagram.get(7 + dcid_len..7 + dcid_len + scid_len)?;
    Some((dcid, scid))
}

/// How a datagram of the relay's answers a recorded attempt (`None`: not a long header).
fn classify(datagram: &[u8]) -> Option<Answer> {
    let first = *datagram.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    Some(match (first >> 4) & 0x03 {
        3 => Answer::Retry,
        0 if datagram.len() <= REFUSAL_MAX_BYTES => Answer::Refused,
        _ => Answer::Handshake,
    })
}

/// Records `n` connection attempts of `client` (a real QUIC client, from `source`), made to a
/// socket that never answers. Attempts whose datagrams did not all arrive are left out.
pub async fn record(
    source: IpAddr,
    client: &quinn::ClientConfig,
    n: usize,
) -> Result<Vec<Recorded>> {
    let sink = UdpSocket::bind(SocketAddr::new(source, 0)).await?;
    let sink_addr = sink.local_addr()?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(source, 0))?;
    endpoint.set_default_client_config(client.clone());
    let mut recorded: Vec<Recorded> = Vec::with_capacity(n);
    // Every connection id seen, with its place in `recorded`: a datagram of an earlier chunk's
    // attempt (its close, or a retransmission) is not a new attempt.
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut attempts = Vec::with_capacity(n);
    let mut buf = vec![0u8; 64 * 1024];
    let mut complete = 0;
    while complete < n {
        let chunk = RECORD_CHUNK.min(n - complete);
        let start = recorded.len();
        for _ in 0..chunk {
            attempts.push(endpoint.connect(sink_addr, "localhost")?);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let wait = if recorded.len() - start < chunk {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            } else {
                RECORD_QUIET
            };
            let Ok(received) = tokio::time::timeout(wait, sink.recv_from(&mut buf)).await else {
                break;
            };
            let (len, _) = received?;
            let datagram = &buf[..len];
            let Some((dcid, scid)) = long_header_ids(datagram) else {
                continue;
            };
            let at = *index.entry(dcid.to_vec()).or_insert_with(|| {
                recorded.push(Recorded {
                    scid: scid.to_vec(),
                    datagrams: Vec::new(),
                });
                recorded.len() - 1
            });
            if at >= start {
                recorded[at].datagrams.push(datagram.to_vec());
            }
        }
        // Every attempt sends the same number of datagrams; one that shows fewer lost some.
        let most = recorded[start..]
            .iter()
            .map(|r| r.datagrams.len())
            .max()
            .unwrap_or(0);
        if most == 0 {
            return Err(anyhow!(
                "recording connection attempts: no datagram arrived"
            ));
        }
        for r in &mut recorded[start..] {
            if r.datagrams.len() < most {
                r.datagrams.clear();
            }
        }
        complete += recorded[start..]
            .iter()
            .filter(|r| !r.datagrams.is_empty())
            .count();
    }
    endpoint.close(0u32.into(), b"");
    drop(attempts);
    recorded.retain(|r| !r.datagrams.is_empty());
    recorded.truncate(n);
    Ok(recorded)
}

/// Sends recorded attempts to the relay from one socket and hands each the relay's answer.
pub struct Replayer {
    socket: UdpSocket,
    state: quinn::udp::UdpSocketState,
    relay: SocketAddr,
    /// Attempts waiting for an answer, by their source connection id.
    waiting: Mutex<HashMap<Vec<u8>, oneshot::Sender<Answer>>>,
}

impl Replayer {
    /// A replayer speaking from `source` to the relay at `relay`; its answers are read by
    /// [`Replayer::read_answers`], which the caller spawns.
    pub async fn bind(source: IpAddr, relay: SocketAddr) -> Result<Arc<Self>> {
        let socket = UdpSocket::bind(SocketAddr::new(source, 0)).await?;
        let state = quinn::udp::UdpSocketState::new((&socket).into())?;
        Ok(Arc::new(Self {
            socket,
            state,
            relay,
            waiting: Mutex::new(HashMap::new()),
        }))
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, oneshot::Sender<Answer>>> {
        match self.waiting.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Sends `attempt`'s datagrams as its client did (datagrams of one size in one segmented
    /// send where the socket can, as quinn sends them) and waits up to `wait` for the relay's
    /// answer.
    pub async fn attempt(&self, attempt: &Recorded, wait: Duration) -> Result<Option<Answer>> {
        let (answer, answered) = oneshot::channel();
        self.waiting().insert(attempt.scid.clone(), answer);
        if let Err(e) = self.send(&attempt.datagrams).await {
            self.waiting().remove(&attempt.scid);
            return Err(e.into());
        }
        let answer = tokio::time::timeout(wait, answered)
            .await
            .ok()
            .and_then(Result::ok);
        if answer.is_none() {
            self.waiting().remove(&attempt.scid);
        }
        Ok(answer)
    }

    async fn send(&self, datagrams: &[Vec<u8>]) -> std::io::Result<()> {
        let size = datagrams.first().map_or(0, Vec::len);
        let segmented = datagrams.len() > 1
            && datagrams.len() <= self.state.max_gso_segments()
            && datagrams[..datagrams.len() - 1]
                .iter()
                .all(|d| d.len() == size);
        let batches: Vec<(Vec<u8>, Option<usize>)> = if segmented {
            vec![(datagrams.concat(), Some(size))]
        } else {
            datagrams.iter().map(|d| (d.clone(), None)).collect()
        };
        for (contents, segment_size) in &batches {
            let transmit = quinn::udp::Transmit {
                destination: self.relay,
                ecn: None,
                contents,
                segment_size: *segment_size,
                src_ip: None,
            };
            self.socket
                .async_io(Interest::WRITABLE, || {
                    self.state.send((&self.socket).into(), &transmit)
                })
                .await?;
        }
        Ok(())
    }

    /// Reads the relay's answers and hands each to the attempt it names, until `stopped`.
    /// An answer to an attempt no longer waiting (a second refusal, or one after the wait) is
    /// dropped.
    pub async fn read_answers(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let received = tokio::select! {
                received = self.socket.recv_from(&mut buf) => received,
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            let Ok((len, from)) = received else { return };
            let datagram = &buf[..len];
            if from != self.relay {
                continue;
            }
            let (Some(answer), Some((dcid, _))) = (classify(datagram), long_header_ids(datagram))
            else {
                continue;
            };
            let waiter = self.waiting().remove(dcid);
            if let Some(waiter) = waiter {
                let _ = waiter.send(answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_told_apart_by_packet_type_and_length() {
        let mut refusal = vec![0xc0, 0, 0, 0, 1, 8];
        refusal.extend_from_slice(&[7; 8]);
        refusal.push(8);
        refusal.extend_from_slice(&[9; 8]);
        refusal.resize(50, 0);
        assert_eq!(classify(&refusal), Some(Answer::Refused));
        assert_eq!(
            long_header_ids(&refusal),
            Some((&[7u8; 8][..], &[9u8; 8][..]))
        );
        let mut handshake = refusal.clone();
        handshake.resize(1200, 0);
        assert_eq!(classify(&handshake), Some(Answer::Handshake));
        let mut retry = refusal.clone();
        retry[0] = 0xf0;
        assert_eq!(classify(&retry), Some(Answer::Retry));
        assert_eq!(classify(&[0x40, 1, 2, 3]), None);
        assert_eq!(long_header_ids(&refusal[..10]), None);
    }
}
