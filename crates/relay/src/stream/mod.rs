//! The relay's gRPC stream, both ends: r-proxy opens it ([`open_session`]), s-proxy serves it
//! ([`RelayServer`]), and each reads the other's frames through [`Incoming`].
//!
//! Frames are encoded by tonic's `EncodeBody`, but read here rather than by tonic's `Streaming`,
//! which copies every HTTP/2 DATA chunk into one buffer before decoding from it. A frame carries
//! up to 64 KiB of PUBLISH payloads, so that was a second copy of every payload in each proxy
//! (measurable in s-proxy's CPU: docs/benchmarks.md, "Figures the code's design rests on").
//! [`MessageReader`] decodes a message that arrives within one chunk straight from that chunk,
//! its payloads and topics becoming slices of it. On the relay link (256 KiB HTTP/2 frames both
//! ways) a few messages straddle two chunks, where the sender cut a DATA frame short; those are
//! decoded from both, and only a payload on the seam is copied.
//!
//! The sans-IO reading of messages out of chunks is [`MessageReader`] (in `reader`).

mod reader;

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body::Body as _;
use tonic::body::Body;
use tonic::client::GrpcService;
use tonic::codec::{EncodeBody, SingleMessageCompressionOverride};
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::codec::{Frame, RelayEncoder, decode_frame};
use crate::v1::{ClientFrame, ServerFrame};

/// The service's name, and the path of its one method.
pub const SERVICE: &str = "strait.mqtt.v1.MqttRelay";
pub const SESSION_PATH: &str = "/strait.mqtt.v1.MqttRelay/Session";

const GRPC_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");

pub use reader::{FramingError, Message, MessageReader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// s-proxy reading r-proxy's request: it ends with the body (or a reset by r-proxy).
    Server,
    /// r-proxy reading s-proxy's response: it ends with a grpc-status trailer.
    Client,
}

/// Frames arriving on a relay stream.
pub struct Incoming<T> {
    body: Body,
    reader: MessageReader,
    side: Side,
    /// Set once the stream has ended: `Ok(())` cleanly, or with the status to report.
    ended: Option<Result<(), Status>>,
    frames: PhantomData<fn() -> T>,
}

impl<T: Frame> Incoming<T> {
    fn new(body: Body, side: Side, max_message: usize) -> Self {
        Self {
            body,
            reader: MessageReader::new(max_message),
            side,
            ended: None,
            frames: PhantomData,
        }
    }

    /// The next frame; `Ok(None)` once the stream has ended cleanly. Cancel-safe: everything
    /// received is kept in `self` between awaits.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<T>, Status>> {
        loop {
            match self.reader.next_message() {
                Ok(Some(message)) => return Poll::Ready(decode_frame(message).map(Some)),
                Ok(None) => {}
                Err(error) => {
                    // The bytes after a bad header cannot be framed: the stream ends here.
                    self.reader = MessageReader::new(self.reader.max_message);
                    self.ended = Some(Err(error.into()));
                }
            }
            if let Some(ended) = &self.ended {
                return Poll::Ready(ended.clone().map(|()| None));
            }
            let frame = match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(status)) => {
                    // r-proxy resetting its request is how a session it dropped ends.
                    let ended = if self.side == Side::Server && status.code() == Code::Cancelled {
                        Ok(())
                    } else {
                        Err(status)
                    };
                    self.ended = Some(ended);
                    continue;
                }
                None => {
                    self.ended = Some(self.end_of_body(None));
                    continue;
                }
            };
            match frame.into_data() {
                Ok(data) => self.reader.push(data),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.ended = Some(self.end_of_body(Some(&trailers)));
                    }
                }
            }
        }
    }

    fn end_of_body(&self, trailers: Option<&HeaderMap>) -> Result<(), Status> {
        if !self.reader.is_idle() {
            return Err(Status::internal("relay stream ended inside a frame"));
        }
        match (self.side, trailers.and_then(Status::from_header_map)) {
            (Side::Server, _) => Ok(()),
            (Side::Client, Some(status)) if status.code() == Code::Ok => Ok(()),
            (Side::Client, Some(status)) => Err(status),
            (Side::Client, None) => {
                Err(Status::internal("relay stream ended without a grpc-status"))
            }
        }
    }
}

/// Opens a relay session on `channel`: `frames` are sent as they come, s-proxy's arrive on the
/// returned stream. Fails with s-proxy's status if it refuses the session at once.
pub async fn open_session(
    channel: &Channel,
    frames: impl Stream<Item = ClientFrame> + Send + 'static,
    max_message: usize,
) -> Result<Incoming<ServerFrame>, Status> {
    let body = EncodeBody::new_client(
        RelayEncoder::default(),
        frames.map(Ok),
        None,
        Some(max_message),
    );
    let mut request = http::Request::new(Body::new(body));
    *request.method_mut() = Method::POST;
    *request.version_mut() = http::Version::HTTP_2;
    // The channel adds the endpoint's scheme and authority.
    *request.uri_mut() = http::Uri::from_static(SESSION_PATH);
    let headers = request.headers_mut();
    headers.insert(TE, HeaderValue::from_static("trailers"));
    headers.insert(CONTENT_TYPE, GRPC_CONTENT_TYPE);

    let mut channel = channel.clone();
    poll_fn(|cx| GrpcService::poll_ready(&mut channel, cx))
        .await
        .map_err(|error| Status::from_error(error.into()))?;
    let response = GrpcService::call(&mut channel, request)
        .await
        .map_err(|error| Status::from_error(error.into()))?;

    // A refusal comes as a response with the status in its headers and no body.
    if let Some(status) = Status::from_header_map(response.headers())
        && status.code() != Code::Ok
    {
        return Err(status);
    }
    if response.status() != StatusCode::OK {
        return Err(Status::unavailable(format!(
            "s-proxy answered HTTP {}",
            response.status()
        )));
    }
    Ok(Incoming::new(
        response.into_body(),
        Side::Client,
        max_message,
    ))
}

/// What s-proxy does with a session: reads its frames from `inbound` and returns the stream of
/// frames (ending in an error status, or not) to send back.
pub trait SessionHandler: Send + Sync + 'static {
    type Outbound: Stream<Item = Result<ServerFrame, Status>> + Send + 'static;

    fn session(
        &self,
        inbound: Incoming<ClientFrame>,
    ) -> impl Future<Output = Result<Self::Outbound, Status>> + Send;
}

/// The relay service for tonic's server: its one method, `Session`, served by `H`.
pub struct RelayServer<H> {
    handler: std::sync::Arc<H>,
    max_message: usize,
}

impl<H> RelayServer<H> {
    pub fn new(handler: H, max_message: usize) -> Self {
        Self {
            handler: std::sync::Arc::new(handler),
            max_message,
        }
    }
}

impl<H> Clone for RelayServer<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            max_message: self.max_message,
        }
    }
}

impl<H> NamedService for RelayServer<H> {
    const NAME: &'static str = SERVICE;
}

impl<H: SessionHandler> tower_service::Service<http::Request<Body>> for RelayServer<H> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let handler = self.handler.clone();
        let max_message = self.max_message;
        Box::pin(async move {
            if request.uri().path() != SESSION_PATH {
                let path = request.uri().path().to_string();
                return Ok(Status::unimplemented(format!("no method {path}")).into_http());
            }
            let inbound = Incoming::new(request.into_body(), Side::Server, max_message);
            let outbound = match handler.session(inbound).await {
                Ok(outbound) => outbound,
                Err(status) => return Ok(status.into_http()),
            };
            let body = EncodeBody::new_server(
                RelayEncoder::default(),
                outbound,
                None,
                SingleMessageCompressionOverride::default(),
                Some(max_message),
            );
            let mut response = http::Response::new(Body::new(body));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, GRPC_CONTENT_TYPE);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use bytes::Bytes;

    use super::reader::framed;
    use super::*;

    /// A body delivering `frames`, then ending.
    struct Frames(VecDeque<Result<http_body::Frame<Bytes>, Status>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn incoming<T: Frame>(
        side: Side,
        frames: Vec<Result<http_body::Frame<Bytes>, Status>>,
    ) -> Incoming<T> {
        Incoming::new(Body::new(Frames(frames.into())), side, 1 << 20)
    }

    fn data<T: prost::Message>(messages: &[T]) -> Result<http_body::Frame<Bytes>, Status> {
        let encoded: Vec<Vec<u8>> = messages.iter().map(|m| m.encode_to_vec()).collect();
        Ok(http_body::Frame::data(Bytes::from(framed(&encoded))))
    }

    fn trailers(status: Status) -> Result<http_body::Frame<Bytes>, Status> {
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        Ok(http_body::Frame::trailers(headers))
    }

    fn frame(close: u32) -> ServerFrame {
        ServerFrame {
            packets: Vec::new(),
            close: Some(crate::v1::SessionClose {
                reason_code: close,
                detail: String::new(),
            }),
        }
    }

    #[tokio::test]
    async fn a_client_gets_the_frames_then_the_status_in_the_trailers() {
        let mut stream = incoming::<ServerFrame>(
            Side::Client,
            vec![
                data(&[frame(1), frame(2)]),
                trailers(Status::unavailable("s-proxy stopping")),
            ],
        );
        assert_eq!(stream.message().await.unwrap(), Some(frame(1)));
        assert_eq!(stream.message().await.unwrap(), Some(frame(2)));
        let error = stream.message().await.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable);
        assert_eq!(error.message(), "s-proxy stopping");

        let mut clean = incoming::<ServerFrame>(
            Side::Client,
            vec![data(&[frame(3)]), trailers(Status::ok(""))],
        );
        assert_eq!(clean.message().await.unwrap(), Some(frame(3)));
        assert_eq!(clean.message().await.unwrap(), None);
        assert_eq!(clean.message().await.unwrap(), None, "stays ended");
    }

    #[tokio::test]
    async fn a_response_without_a_status_or_cut_inside_a_frame_is_an_error() {
        let mut no_status = incoming::<ServerFrame>(Side::Client, vec![data(&[frame(1)])]);
        assert_eq!(no_status.message().await.unwrap(), Some(frame(1)));
        assert_eq!(
            no_status.message().await.unwrap_err().code(),
            Code::Internal
        );

        let whole = data(&[frame(1)]).unwrap().into_data().unwrap();
        let cut = Ok(http_body::Frame::data(whole.slice(..whole.len() - 1)));
        let mut cut = incoming::<ServerFrame>(Side::Server, vec![cut]);
        let error = cut.message().await.unwrap_err();
        assert!(error.message().contains("inside a frame"), "{error}");
    }

    #[tokio::test]
    async fn a_server_sees_a_reset_request_as_the_end_and_other_failures_as_errors() {
        let client = ClientFrame::default();
        let mut reset = incoming::<ClientFrame>(
            Side::Server,
            vec![
                data(std::slice::from_ref(&client)),
                Err(Status::cancelled("reset")),
            ],
        );
        assert_eq!(reset.message().await.unwrap(), Some(client));
        assert_eq!(reset.message().await.unwrap(), None);

        let mut failed = incoming::<ClientFrame>(Side::Server, vec![Err(Status::internal("h2"))]);
        assert_eq!(failed.message().await.unwrap_err().code(), Code::Internal);
    }

    #[tokio::test]
    async fn a_bad_header_ends_the_stream_with_an_error() {
        let mut wire = framed(&[vec![0; 3], vec![0; 3]]);
        wire[0] = 1;
        let mut stream = incoming::<ClientFrame>(
            Side::Server,
            vec![Ok(http_body::Frame::data(Bytes::from(wire)))],
        );
        assert_eq!(stream.message().await.unwrap_err().code(), Code::Internal);
        assert_eq!(
            stream.message().await.unwrap_err().code(),
            Code::Internal,
            "stays failed"
        );
    }
}
