//! The daemon's ends of the helper's pipes, read and written against a
//! deadline.
//!
//! A helper that stops answering (the TPM or token hangs, or the process
//! is stopped) must not hold the daemon for ever: every read and write of
//! a conversation waits at most until the conversation's deadline, then
//! fails with [`std::io::ErrorKind::TimedOut`]. The pipe ends are put in
//! non-blocking mode (each end of a pipe is its own open file description,
//! so the helper's ends stay blocking) and waited on with `poll(2)`.
//!
//! Bytes pass straight through: nothing here buffers a message body (it may
//! be a private key on its way to the hardware).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// Puts `fd` in non-blocking mode, which [`Timed`] needs.
pub fn nonblocking(fd: impl AsFd) -> std::io::Result<()> {
    rustix::io::ioctl_fionbio(fd, true).map_err(std::io::Error::from)
}

/// A non-blocking pipe end whose reads and writes give up at `until`.
pub struct Timed<'a, T> {
    pub inner: &'a mut T,
    pub until: Instant,
}

impl<T: AsFd> Timed<'_, T> {
    /// Waits until the pipe is ready for `flags`, or fails at the deadline.
    fn wait(&self, flags: PollFlags) -> std::io::Result<()> {
        loop {
            let left = self.until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    "no answer before the deadline",
                ));
            }
            let timeout = timespec(left);
            let mut fds = [PollFd::new(&self.inner, flags)];
            match poll(&mut fds, Some(&timeout)) {
                // Readable, writable, or the other end closed (HUP/ERR):
                // the next read or write says which.
                Ok(n) if n > 0 => return Ok(()),
                Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    }
}

impl<T: AsFd + Read> Read for Timed<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.wait(PollFlags::IN)?,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

impl<T: AsFd + Write> Write for Timed<'_, T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.inner.write(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.wait(PollFlags::OUT)?,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let mut reader = reader;
        nonblocking(&reader).unwrap();
        let mut buf = [0u8; 4];
        let err = Timed {
            inner: &mut reader,
            until: Instant::now() + Duration::from_millis(50),
        }
        .read(&mut buf)
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);

        writer.write_all(b"ping").unwrap();
        let mut timed = Timed {
            inner: &mut reader,
            until: Instant::now() + Duration::from_secs(60),
        };
        timed.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        drop(writer);
        // The other end closed: end of file, not a wait until the deadline.
        assert_eq!(timed.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_full_pipe_times_out_the_writer() {
        let (_reader, writer) = std::io::pipe().unwrap();
        let mut writer = writer;
        nonblocking(&writer).unwrap();
        let chunk = vec![0u8; 1 << 16];
        let mut timed = Timed {
            inner: &mut writer,
            until: Instant::now() + Duration::from_millis(50),
        };
        // Nobody reads: the pipe fills up, and the writer gives up.
        let err = (0..64)
            .try_for_each(|_| timed.write_all(&chunk))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
    }
}
