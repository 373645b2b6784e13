//! A `produce` route's call: the request stream written as records (keyed, correlated, ended by
//! a null record), then the replies from the reply topic streamed back until the final status,
//! within the call's deadline.

use super::*;

pub(super) struct ProduceCall {
    pub(super) frontend: Arc<Frontend>,
    pub(super) route: Arc<ProduceRoute>,
    pub(super) method: MethodDescriptor,
    pub(super) name: Arc<str>,
    /// The authenticated identity; `None` when anonymous.
    pub(super) caller: Option<Arc<str>>,
}

pub(super) type Replies = ReceiverStream<Result<Bytes, Status>>;

impl StreamingService<Bytes> for ProduceCall {
    type Response = Bytes;
    type ResponseStream = Replies;
    type Future = BoxFuture<'static, Result<Response<Replies>, Status>>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(produce_call(
            self.frontend.clone(),
            self.route.clone(),
            self.method.clone(),
            self.name.clone(),
            self.caller.clone(),
            request,
        ))
    }
}

/// What a call's records carry, fixed when it starts.
pub(super) struct CallRecords {
    topic: String,
    producer: Producer,
    headers: OwnedHeaders,
    /// The end-of-request (and cancel) records carry correlation headers only with a reply-to.
    correlated: bool,
    key: KeySource,
    input: prost_reflect::MessageDescriptor,
    status_header: String,
}

pub(super) enum KeySource {
    Fixed(String),
    Field(String),
}

pub(super) async fn produce_call(
    frontend: Arc<Frontend>,
    route: Arc<ProduceRoute>,
    method: MethodDescriptor,
    name: Arc<str>,
    caller: Option<Arc<str>>,
    request: Request<Streaming<Bytes>>,
) -> Result<Response<Replies>, Status> {
    let started = Instant::now();
    let config = &frontend.config;
    let metadata = request.metadata();
    let timeout = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(wire::parse_grpc_timeout)
        .unwrap_or(config.limits.default_timeout);
    // Answer a little before the client's own timer fires, so it sees DEADLINE_EXCEEDED from
    // us (with the reason) rather than a local cancellation racing the answer.
    let deadline = started + timeout - (timeout / 10).min(Duration::from_millis(100));
    let idempotency_key = metadata
        .get(config.idempotency_metadata.as_str())
        .and_then(|v| v.to_str().ok());
    let (service, method_name) = name.split_once('/').unwrap_or((&name, ""));
    let correlation_id = wire::correlation_id(
        idempotency_key,
        caller.as_deref(),
        &config.headers,
        service,
        method_name,
        route.reply_to.as_deref(),
    );
    let key = match route.key.as_deref() {
        Some(spec) if spec.starts_with("metadata:") => KeySource::Fixed(
            metadata
                .get(&spec["metadata:".len()..])
                .and_then(|v| v.to_str().ok())
                .unwrap_or(&correlation_id)
                .to_owned(),
        ),
        Some(spec) if spec.starts_with("field:") => {
            KeySource::Field(spec["field:".len()..].to_owned())
        }
        _ => KeySource::Fixed(correlation_id.clone()),
    };
    let mut pairs: Vec<(String, Vec<u8>)> = Vec::with_capacity(8);
    if let Some(reply_to) = &route.reply_to {
        let h = &config.headers;
        pairs.push((h.service.clone(), service.as_bytes().to_vec()));
        pairs.push((h.method.clone(), method_name.as_bytes().to_vec()));
        pairs.push((h.reply_to.clone(), reply_to.as_bytes().to_vec()));
        pairs.push((h.correlation_id.clone(), correlation_id.as_bytes().to_vec()));
        pairs.push((
            TIMEOUT_HEADER.into(),
            timeout.as_millis().to_string().into_bytes(),
        ));
    }
    pairs.extend(wire::metadata_to_headers(metadata, |name| {
        config.forward_metadata.forwards(name)
    }));
    let headers = owned_headers(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    let records = CallRecords {
        topic: route.topic.clone(),
        producer: frontend.producers[&route.acks].clone(),
        headers,
        correlated: route.reply_to.is_some(),
        key,
        input: method.input(),
        status_header: config.headers.status.clone(),
    };
    let replies = match &route.reply_to {
        Some(_) => match frontend.pending.register(&correlation_id) {
            Ok(rx) => Some(rx),
            Err(status) => {
                frontend
                    .metrics
                    .finished(&name, status.code(), started.elapsed());
                if status.code() == Code::ResourceExhausted {
                    frontend
                        .metrics
                        .limit_hits
                        .with_label_values(&["limits.maxPendingCalls"])
                        .inc();
                }
                return Err(status);
            }
        },
        None => None,
    };
    let (head_tx, head_rx) = oneshot::channel();
    let (out_tx, out_rx) = mpsc::channel(16);
    let span = tracing::info_span!("call", method = %name, correlation_id = %correlation_id);
    frontend.metrics.in_flight.inc();
    let call = Call {
        frontend: frontend.clone(),
        name,
        correlation_id,
        server_streaming: method.is_server_streaming(),
        started,
        deadline,
        head: Some(head_tx),
        out: out_tx,
        registered: replies.is_some(),
    };
    frontend.calls.spawn(
        call.run(records, request.into_inner(), replies)
            .instrument(span),
    );
    match head_rx.await {
        Ok(Ok(metadata)) => {
            let mut response = Response::new(ReceiverStream::new(out_rx));
            *response.metadata_mut() = metadata;
            Ok(response)
        }
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::internal("the call ended before answering")),
    }
}

/// One call in progress: uploads the request stream, forwards replies, enforces the deadline.
pub(super) struct Call {
    frontend: Arc<Frontend>,
    name: Arc<str>,
    correlation_id: String,
    server_streaming: bool,
    started: Instant,
    deadline: Instant,
    head: Option<oneshot::Sender<Result<MetadataMap, Status>>>,
    out: mpsc::Sender<Result<Bytes, Status>>,
    registered: bool,
}

impl Call {
    async fn run(
        mut self,
        records: CallRecords,
        inbound: Streaming<Bytes>,
        mut replies: Option<mpsc::Receiver<ReplyEvent>>,
    ) {
        let produced = AtomicBool::new(false);
        let upload = upload(&records, inbound, &produced);
        tokio::pin!(upload);
        let mut uploaded = false;
        let mut answered = false;
        let code = loop {
            tokio::select! {
                result = &mut upload, if !uploaded => {
                    uploaded = true;
                    if let Err(status) = result {
                        tracing::debug!(%status, "request stream failed");
                        break self.fail(status).await;
                    }
                    if replies.is_none() {
                        // One-way: the records are written, so the call is done.
                        self.send_head(MetadataMap::new());
                        if !self.server_streaming {
                            let _ = self.out.send(Ok(Bytes::new())).await;
                        }
                        answered = true;
                        break Code::Ok;
                    }
                }
                event = next_reply(&mut replies) => {
                    let Some(event) = event else {
                        break self.fail(Status::resource_exhausted(
                            "replies arrived faster than the client read them",
                        )).await;
                    };
                    if let Some(code) = self.reply(event).await {
                        answered = code != Code::Cancelled;
                        break code;
                    }
                }
                () = tokio::time::sleep_until(self.deadline) => {
                    break self.fail(Status::deadline_exceeded(format!(
                        "no answer within the call's deadline of {:?}",
                        self.deadline - self.started
                    ))).await;
                }
                () = self.out.closed() => break Code::Cancelled,
            }
        };
        if !answered && code != Code::Ok && produced.load(Ordering::Acquire) && records.correlated {
            // Tell kafka-grpc the client gave up so it can stop working on the call.
            let cancel_code = (code as i32).to_string();
            let headers = records.headers.clone().insert(rdkafka::message::Header {
                key: &records.status_header,
                value: Some(cancel_code.as_bytes()),
            });
            let key = match &records.key {
                KeySource::Fixed(key) => key.clone(),
                KeySource::Field(_) => self.correlation_id.clone(),
            };
            let record = FutureRecord::<String, [u8]>::to(&records.topic)
                .key(&key)
                .headers(headers);
            if let Err((error, _)) = records.producer.send_result(record) {
                tracing::warn!(%error, "cannot write the cancel record");
            }
        }
        self.frontend
            .metrics
            .finished(&self.name, code, self.started.elapsed());
    }

    /// Handles one reply record; `Some(code)` when it ended the call.
    async fn reply(&mut self, event: ReplyEvent) -> Option<Code> {
        let status_of = |headers: &CallHeaders| {
            let code = Code::from_i32(headers.status.unwrap_or(Code::Unknown as i32));
            Status::with_metadata(
                code,
                headers.message.clone().unwrap_or_default(),
                headers.metadata(),
            )
        };
        if self.head.is_some() {
            let metadata = event.headers.metadata();
            if event.value.is_none() {
                let status = status_of(&event.headers);
                if status.code() != Code::Ok {
                    return Some(self.fail(status).await);
                }
            }
            self.send_head(metadata);
        }
        match event.value {
            Some(value) => {
                if self.out.send(Ok(value)).await.is_err() {
                    return Some(Code::Cancelled);
                }
                None
            }
            None => {
                let status = status_of(&event.headers);
                let code = status.code();
                if code != Code::Ok {
                    let _ = self.out.send(Err(status)).await;
                }
                Some(code)
            }
        }
    }

    fn send_head(&mut self, metadata: MetadataMap) {
        if let Some(head) = self.head.take() {
            let _ = head.send(Ok(metadata));
        }
    }

    async fn fail(&mut self, status: Status) -> Code {
        let code = status.code();
        match self.head.take() {
            Some(head) => {
                let _ = head.send(Err(status));
            }
            None => {
                let _ = self.out.send(Err(status)).await;
            }
        }
        code
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.registered {
            self.frontend.pending.remove(&self.correlation_id);
        }
        self.frontend.metrics.in_flight.dec();
    }
}

pub(super) async fn next_reply(
    replies: &mut Option<mpsc::Receiver<ReplyEvent>>,
) -> Option<ReplyEvent> {
    match replies {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes each request message as a record (checked against the method's input type), then
/// the null end record; waits until Kafka acknowledged them all.
pub(super) async fn upload(
    records: &CallRecords,
    mut inbound: Streaming<Bytes>,
    produced: &AtomicBool,
) -> Result<(), Status> {
    const MAX_UNACKED: usize = 64;
    let mut deliveries = FuturesOrdered::new();
    let mut key: Option<String> = match &records.key {
        KeySource::Fixed(key) => Some(key.clone()),
        KeySource::Field(_) => None,
    };
    loop {
        let next = inbound.message().await?;
        if let Some(bytes) = &next {
            let message =
                DynamicMessage::decode(records.input.clone(), bytes.as_ref()).map_err(|e| {
                    Status::invalid_argument(format!(
                        "request message is not a valid {}: {e}",
                        records.input.full_name()
                    ))
                })?;
            if key.is_none()
                && let KeySource::Field(field) = &records.key
            {
                key = Some(field_key(&message, field)?);
            }
        }
        if !records.correlated && next.is_none() {
            break; // one-way calls have no end record (Zilla's layout)
        }
        let key = key.as_deref().unwrap_or_default();
        let mut record = FutureRecord::<str, [u8]>::to(&records.topic)
            .key(key)
            .headers(records.headers.clone());
        if let Some(bytes) = &next {
            record = record.payload(bytes.as_ref());
        }
        match records.producer.send_result(record) {
            Ok(delivery) => deliveries.push_back(delivery),
            Err((error, _)) => {
                return Err(Status::unavailable(format!(
                    "cannot write to topic {}: {error}",
                    records.topic
                )));
            }
        }
        produced.store(true, Ordering::Release);
        while deliveries.len() >= MAX_UNACKED {
            acked(&records.topic, deliveries.next().await)?;
        }
        if next.is_none() {
            break;
        }
    }
    while let Some(delivery) = deliveries.next().await {
        acked(&records.topic, Some(delivery))?;
    }
    Ok(())
}

pub(super) fn acked(
    topic: &str,
    delivery: Option<
        Result<
            rdkafka::producer::future_producer::OwnedDeliveryResult,
            futures::channel::oneshot::Canceled,
        >,
    >,
) -> Result<(), Status> {
    match delivery {
        Some(Ok(Ok(_))) | None => Ok(()),
        Some(Ok(Err((error, _)))) => Err(Status::unavailable(format!(
            "Kafka did not acknowledge the request on topic {topic}: {error}"
        ))),
        Some(Err(_)) => Err(Status::unavailable("the Kafka producer is shutting down")),
    }
}

pub(super) fn field_key(message: &DynamicMessage, field: &str) -> Result<String, Status> {
    let descriptor = message.descriptor();
    let Some(field_descriptor) = descriptor.get_field_by_name(field) else {
        return Err(Status::internal(format!(
            "the route's key field {field:?} is not a field of {}",
            descriptor.full_name()
        )));
    };
    let value = message.get_field(&field_descriptor);
    Ok(match value.as_ref() {
        prost_reflect::Value::String(s) => s.clone(),
        prost_reflect::Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        prost_reflect::Value::I32(v) | prost_reflect::Value::EnumNumber(v) => v.to_string(),
        prost_reflect::Value::I64(v) => v.to_string(),
        prost_reflect::Value::U32(v) => v.to_string(),
        prost_reflect::Value::U64(v) => v.to_string(),
        prost_reflect::Value::Bool(v) => v.to_string(),
        other => {
            return Err(Status::internal(format!(
                "the route's key field {field:?} is not a scalar ({other:?})"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_type() -> prost_reflect::MessageDescriptor {
        let dir = std::env::temp_dir().join(format!(
            "strait-field-key-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("k.proto"),
            "syntax = \"proto3\"; package k; \
             message M { string tenant = 1; int64 id = 2; bytes raw = 3; repeated string tags = 4; }",
        )
        .unwrap();
        let protos = Protos::load(strait_config::grpc::Protos {
            paths: vec![dir],
            includes: vec![],
            reload_interval: Duration::ZERO,
        })
        .unwrap();
        protos.pool().get_message_by_name("k.M").unwrap()
    }

    #[test]
    fn record_keys_come_from_scalar_fields() {
        let descriptor = message_type();
        // tenant = "acme", id = 42, tags = ["x"]
        let bytes = [0x0a, 4, b'a', b'c', b'm', b'e', 0x10, 42, 0x22, 1, b'x'];
        let message = DynamicMessage::decode(descriptor, &bytes[..]).unwrap();
        assert_eq!(field_key(&message, "tenant").unwrap(), "acme");
        assert_eq!(field_key(&message, "id").unwrap(), "42");
        assert_eq!(field_key(&message, "raw").unwrap(), "");
        let error = field_key(&message, "tags").unwrap_err();
        assert!(error.message().contains("not a scalar"), "{error:?}");
        let error = field_key(&message, "nope").unwrap_err();
        assert!(error.message().contains("not a field of k.M"), "{error:?}");
    }
}
