//! A command's standard input when its spec asks for one (`stdin: true`, as Kubernetes
//! says it): a pipe whose read end is the guest's stdin and whose write end the node
//! writes to with what `kubectl attach -i` sends ([`crate::Runtime::stdin`]). Without it a
//! guest's stdin is at end of file.
//!
//! Closing the write end ([`Stdin::close`]: `stdinOnce` after the first attach) is end of
//! file for the guest. A guest that does not read fills the pipe ([`PIPE_BYTES`]) and the
//! writer then waits, as a process's writer on a full pipe does.

use std::io;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, ReadHalf, SimplexStream, WriteHalf};

/// How many bytes written but not yet read the pipe holds.
pub const PIPE_BYTES: usize = 64 * 1024;

/// The host's end of a guest's standard input; clones share it.
#[derive(Clone, Debug)]
pub struct Stdin {
    writer: Arc<tokio::sync::Mutex<Option<WriteHalf<SimplexStream>>>>,
}

/// A new pipe: the guest's end and the host's.
pub(crate) fn pipe() -> (ReadHalf<SimplexStream>, Stdin) {
    let (reader, writer) = tokio::io::simplex(PIPE_BYTES);
    let stdin = Stdin {
        writer: Arc::new(tokio::sync::Mutex::new(Some(writer))),
    };
    (reader, stdin)
}

impl Stdin {
    /// Writes `data` to the guest's input, waiting while the pipe is full; fails once the
    /// input is closed.
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        let mut writer = self.writer.lock().await;
        let Some(w) = writer.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the container's standard input is closed",
            ));
        };
        w.write_all(data).await?;
        w.flush().await
    }

    /// Closes the guest's input: it reads end of file after what was written.
    pub async fn close(&self) {
        if let Some(mut w) = self.writer.lock().await.take() {
            let _ = w.shutdown().await;
        }
    }

    /// Whether `other` is this same input.
    pub(crate) fn same(&self, other: &Stdin) -> bool {
        Arc::ptr_eq(&self.writer, &other.writer)
    }

    /// Whether [`Stdin::close`] was called.
    pub async fn is_closed(&self) -> bool {
        self.writer.lock().await.is_none()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn what_is_written_is_read_until_closed() {
        let (mut reader, stdin) = pipe();
        stdin.write(b"one\n").await.unwrap();
        stdin.clone().write(b"two\n").await.unwrap();
        stdin.close().await;
        assert!(stdin.is_closed().await);
        assert!(stdin.write(b"three\n").await.is_err());
        let mut read = String::new();
        reader.read_to_string(&mut read).await.unwrap();
        assert_eq!(read, "one\ntwo\n");
    }
}
