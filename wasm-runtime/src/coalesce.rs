//! Sending a guest's response whole when its body ends right after its head.
//!
//! A wasi:http guest hands over the response head (`response-outparam.set`) before it
//! writes the body, so when hyper gets the head the body's length is not known and it
//! answers with chunked encoding. Yet most bodies end microseconds later. A chunked answer
//! costs every hop after the pod: the node proxy and the Ingress learn that it ended only
//! from the terminating chunk, which needs one more wake-up of the upstream connection's
//! task and goes out as a separate write and TCP segment to the client.
//!
//! So the server waits a short window ([`WINDOW`]) for the body to end, keeping at most
//! [`MAX_WHOLE`] bytes. If it ends in time, the response goes out with an exact length
//! (hyper writes `Content-Length`, or omits it where HTTP forbids one: `204`, `304`,
//! `HEAD`) in one write. Otherwise the bytes already read go first and the rest streams as
//! before, so a streaming guest (server-sent events, a long download) has its head
//! delayed by at most the window and is never buffered beyond [`MAX_WHOLE`]. Go's
//! `net/http` makes the same choice for a handler that finishes within its buffer.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime_wasi_http::Error as ErrorCode;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// How long after the head the body may take to end and still go out whole.
pub const WINDOW: Duration = Duration::from_millis(1);

/// The largest body sent whole; a longer one streams.
pub const MAX_WHOLE: usize = 64 * 1024;

/// The response with its body whole if it ended within [`WINDOW`], else the frames read so
/// far followed by the rest of the stream.
pub async fn coalesce(
    response: http::Response<HyperOutgoingBody>,
) -> http::Response<HyperOutgoingBody> {
    let (parts, mut body) = response.into_parts();
    // The guest declared a length (the body enforces it) or sent nothing: as is.
    if body.size_hint().exact().is_some() || body.is_end_stream() {
        return http::Response::from_parts(parts, body);
    }
    let until = tokio::time::Instant::now() + WINDOW;
    let mut read: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut size = 0usize;
    let end = loop {
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(None) => break None,
            Ok(Some(Ok(frame))) => {
                let is_data = frame.is_data();
                if let Some(data) = frame.data_ref() {
                    size += data.len();
                }
                read.push_back(frame);
                if !is_data || size > MAX_WHOLE {
                    // Trailers, or too long to hold: stream from here.
                    break Some(Ok(()));
                }
            }
            Ok(Some(Err(error))) => break Some(Err(error)),
            // Still streaming at the end of the window.
            Err(_) => break Some(Ok(())),
        }
    };
    let body = match end {
        None => {
            let mut whole = BytesMut::with_capacity(size);
            for frame in read {
                if let Ok(data) = frame.into_data() {
                    whole.extend_from_slice(&data);
                }
            }
            // Full has an exact size hint: hyper sends the length.
            Full::new(whole.freeze())
                .map_err(|never| match never {})
                .boxed_unsync()
        }
        Some(end) => Prefixed {
            read,
            failed: end.err(),
            rest: body,
        }
        .boxed_unsync(),
    };
    http::Response::from_parts(parts, body)
}

/// The frames read during the window, then the error that ended it or the rest.
struct Prefixed {
    read: VecDeque<Frame<Bytes>>,
    failed: Option<ErrorCode>,
    rest: HyperOutgoingBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = ErrorCode;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ErrorCode>>> {
        if let Some(frame) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = self.failed.take() {
            return Poll::Ready(Some(Err(error)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.failed.is_none() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn response(body: HyperOutgoingBody) -> http::Response<HyperOutgoingBody> {
        http::Response::new(body)
    }

    /// A body whose frames come through a channel, as a guest's do.
    fn channel() -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, ErrorCode>>,
        HyperOutgoingBody,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        (tx, StreamBody::new(stream).boxed_unsync())
    }

    async fn collect(body: HyperOutgoingBody) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_body_that_ends_in_the_window_goes_out_whole() {
        let (tx, body) = channel();
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello "))))
            .await
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"world"))))
            .await
            .unwrap();
        drop(tx);
        let body = coalesce(response(body)).await.into_body();
        assert_eq!(body.size_hint().exact(), Some(11));
        assert_eq!(collect(body).await, b"hello world");
    }

    #[tokio::test]
    async fn a_body_still_streaming_after_the_window_streams_from_what_was_read() {
        let (tx, body) = channel();
        tx.send(Ok(Frame::data(Bytes::from_static(b"event 1\n"))))
            .await
            .unwrap();
        // The window passes with the body still open.
        let body = coalesce(response(body)).await.into_body();
        assert_eq!(body.size_hint().exact(), None);
        tx.send(Ok(Frame::data(Bytes::from_static(b"event 2\n"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(collect(body).await, b"event 1\nevent 2\n");
    }

    #[tokio::test]
    async fn long_bodies_trailers_and_errors_are_not_held() {
        // Longer than MAX_WHOLE: streams, though it ended.
        let big = Bytes::from(vec![b'x'; MAX_WHOLE + 1]);
        let (tx, body) = channel();
        tx.send(Ok(Frame::data(big.clone()))).await.unwrap();
        drop(tx);
        let body = coalesce(response(body)).await.into_body();
        assert_eq!(body.size_hint().exact(), None);
        assert_eq!(collect(body).await.len(), big.len());

        // Trailers keep their place after the data.
        let (tx, body) = channel();
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
        drop(tx);
        let collected = coalesce(response(body))
            .await
            .into_body()
            .collect()
            .await
            .unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "x");

        // An error after some data: the data, then the error.
        let (tx, body) = channel();
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        tx.send(Err(ErrorCode::InternalError(Some("broken".into()))))
            .await
            .unwrap();
        let mut body = coalesce(response(body)).await.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "x");
        assert!(body.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_body_of_known_length_is_left_as_it_is() {
        let body = Full::new(Bytes::from_static(b"abc"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let body = coalesce(response(body)).await.into_body();
        assert_eq!(body.size_hint().exact(), Some(3));
        assert_eq!(collect(body).await, b"abc");
    }
}
