//! The operating system's randomness, read 4 KiB at a time per thread: for the nonces drawn
//! for every sealed value, where one `getrandom` call per 24-byte nonce was a fifth of each
//! seal (BENCHMARKS.md, "B's pull (issue 18), eleventh session").
//!
//! Each thread keeps its own buffer, so two threads never hand out the same bytes. Bytes are
//! handed out once: the buffer's cursor only moves forward, and what it hands out is zeroized
//! in the buffer at once; the rest is zeroized when the thread ends. A forked child copies its
//! parent's memory, buffer included, so every draw compares the process id with the one the
//! buffer was filled under and discards the buffer when they differ: a child never hands out
//! bytes its parent may also hand out (docs/PROTOCOL.md §13, the pull's step: "a fresh random
//! 192-bit nonce"). The one case a process id cannot tell: a process that never drew forks,
//! its parent exits, and a descendant is given the parent's id again; it then starts from the
//! copy of the parent's buffer it inherited. Process ids are reused only after the counter
//! wraps (`pid_max`), and the bytes are nonces, never keys.

use std::cell::RefCell;
use std::convert::Infallible;

use zeroize::Zeroize;

/// Bytes read from the operating system per refill.
const BUFFER_LEN: usize = 4096;

/// Draws of more than this many bytes go to the operating system directly.
const DIRECT_ABOVE: usize = BUFFER_LEN / 4;

/// The operating system's random generator behind a per-thread buffer, as a `CryptoRng`: what
/// [`buffered_rng`] returns. It holds no state of its own (the buffer is the thread's), so it
/// can be created wherever one is needed, and cloning it copies no bytes.
///
/// # Panics
/// When the operating system cannot provide randomness, as [`super::system_rng`] does.
#[derive(Debug, Clone, Copy, Default)]
pub struct BufferedOsRng;

/// The operating system's random generator behind a per-thread buffer (see
/// [`BufferedOsRng`]); for nonces, where one system call per draw would dominate.
pub fn buffered_rng() -> BufferedOsRng {
    BufferedOsRng
}

thread_local! {
    static BUFFER: RefCell<Buffer> = RefCell::new(Buffer::empty());
}

/// Fills `dst` from the operating system, or panics: nothing is safe to do without randomness.
fn os_fill(dst: &mut [u8]) {
    if let Err(err) = getrandom::fill(dst) {
        panic!("the operating system provides no randomness: {err}");
    }
}

impl rand_core::TryRng for BufferedOsRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0u8; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0u8; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        if dst.len() > DIRECT_ABOVE {
            os_fill(dst);
            return Ok(());
        }
        let pid = std::process::id();
        // After the thread's buffer is gone (a destructor running at thread exit), or while
        // it is borrowed (cannot happen: nothing below draws again), read directly.
        let buffered = BUFFER
            .try_with(|buffer| {
                buffer
                    .try_borrow_mut()
                    .map(|mut buffer| buffer.take(dst, pid, os_fill))
                    .is_ok()
            })
            .unwrap_or(false);
        if !buffered {
            os_fill(dst);
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for BufferedOsRng {}

/// One thread's buffered bytes: `bytes[next..]` are not handed out yet, and were read from
/// the operating system in the process `pid`.
struct Buffer {
    bytes: Box<[u8; BUFFER_LEN]>,
    next: usize,
    pid: u32,
}

impl Buffer {
    /// A buffer with nothing left: the first draw fills it.
    fn empty() -> Self {
        Self {
            bytes: Box::new([0; BUFFER_LEN]),
            next: BUFFER_LEN,
            pid: 0,
        }
    }

    /// Fills `dst` (at most [`BUFFER_LEN`] bytes) with bytes not handed out before, in the
    /// process `pid`, refilling the buffer with `refill` when it runs out or was filled in
    /// another process.
    fn take(&mut self, dst: &mut [u8], pid: u32, mut refill: impl FnMut(&mut [u8])) {
        if pid != self.pid {
            self.bytes.zeroize();
            self.next = BUFFER_LEN;
            self.pid = pid;
        }
        let mut filled = 0;
        while filled < dst.len() {
            if self.next == BUFFER_LEN {
                refill(&mut self.bytes[..]);
                self.next = 0;
            }
            let n = (dst.len() - filled).min(BUFFER_LEN - self.next);
            let taken = &mut self.bytes[self.next..self.next + n];
            dst[filled..filled + n].copy_from_slice(taken);
            taken.zeroize();
            self.next += n;
            filled += n;
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand_core::Rng;

    use super::*;

    /// A source that fills with a counter, one distinct byte value per refill, counting them.
    fn counting(refills: &mut u8) -> impl FnMut(&mut [u8]) + '_ {
        move |bytes: &mut [u8]| {
            *refills += 1;
            bytes.fill(*refills);
        }
    }

    #[test]
    fn bytes_are_handed_out_once_and_zeroized_in_the_buffer() {
        let mut buffer = Buffer::empty();
        let mut refills = 0;
        let mut first = [0u8; 24];
        buffer.take(&mut first, 7, counting(&mut refills));
        assert_eq!((first, refills), ([1; 24], 1));
        assert!(buffer.bytes[..24].iter().all(|b| *b == 0));
        assert!(buffer.bytes[24..].iter().all(|b| *b == 1));
        // The rest of the buffer, across a refill: no byte twice, the cursor only forward.
        let mut rest = vec![0u8; BUFFER_LEN - 24 + 10];
        buffer.take(&mut rest, 7, counting(&mut refills));
        assert_eq!(refills, 2);
        assert!(rest[..BUFFER_LEN - 24].iter().all(|b| *b == 1));
        assert!(rest[BUFFER_LEN - 24..].iter().all(|b| *b == 2));
        assert_eq!(buffer.next, 10);
    }

    #[test]
    fn after_a_change_of_process_the_buffer_is_refilled() {
        let mut buffer = Buffer::empty();
        let mut refills = 0;
        let mut nonce = [0u8; 24];
        buffer.take(&mut nonce, 100, counting(&mut refills));
        buffer.take(&mut nonce, 100, counting(&mut refills));
        assert_eq!((nonce, refills), ([1; 24], 1));
        // As in a forked child: same buffer, another process id. Its bytes are the parent's.
        buffer.take(&mut nonce, 200, counting(&mut refills));
        assert_eq!((nonce, refills), ([2; 24], 2));
        assert!(buffer.bytes[..24].iter().all(|b| *b == 0));
        // And back in the parent's id (a grandchild), refilled again.
        buffer.take(&mut nonce, 100, counting(&mut refills));
        assert_eq!((nonce, refills), ([3; 24], 3));
    }

    #[test]
    fn two_threads_never_get_the_same_bytes() {
        let draws = || {
            let mut rng = buffered_rng();
            (0..2_000)
                .map(|_| {
                    let mut nonce = [0u8; 24];
                    rng.fill_bytes(&mut nonce);
                    nonce
                })
                .collect::<Vec<_>>()
        };
        let threads: Vec<_> = (0..4).map(|_| std::thread::spawn(draws)).collect();
        let mut seen = HashSet::new();
        for nonce in draws().into_iter().chain(
            threads
                .into_iter()
                .flat_map(|thread| thread.join().unwrap()),
        ) {
            assert!(seen.insert(nonce), "a nonce was handed out twice");
        }
        assert_eq!(seen.len(), 5 * 2_000);
    }

    #[test]
    fn large_draws_and_words_are_random_too() {
        let mut rng = buffered_rng();
        let mut big = vec![0u8; DIRECT_ABOVE + 1];
        rng.fill_bytes(&mut big);
        assert!(big.iter().any(|b| *b != 0));
        assert_ne!(
            (rng.next_u64(), rng.next_u32()),
            (rng.next_u64(), rng.next_u32())
        );
    }
}
