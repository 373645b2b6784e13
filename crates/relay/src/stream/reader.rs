//! gRPC's length-prefixed messages split out of the chunks an HTTP/2 body delivers, without
//! copying a message that arrives within one chunk (see the module above).

use std::collections::VecDeque;

use bytes::buf::Chain;
use bytes::{Buf, Bytes, BytesMut};
use tonic::Status;

/// Bytes before each gRPC message: a compressed flag and a big-endian u32 length.
const HEADER_LEN: usize = 5;

/// Why a gRPC message stream cannot be read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The relay never negotiates compression, so no message may claim it.
    #[error("message has compressed flag {0}, but the relay does not use compression")]
    Compressed(u8),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

impl From<FramingError> for Status {
    fn from(error: FramingError) -> Self {
        match error {
            FramingError::TooLarge { .. } => Status::out_of_range(error.to_string()),
            FramingError::Compressed(_) => Status::internal(error.to_string()),
        }
    }
}

/// One gRPC message, as it arrived: within one chunk (the second part is then empty) or across two.
pub type Message = Chain<Bytes, Bytes>;

/// Splits gRPC's length-prefixed messages out of the chunks a body delivers (sans-IO).
#[derive(Debug)]
pub struct MessageReader {
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    buffered: usize,
    /// The length of the message whose header has been read.
    pending: Option<usize>,
    pub(super) max_message: usize,
}

impl MessageReader {
    pub fn new(max_message: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            buffered: 0,
            pending: None,
            max_message,
        }
    }

    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.buffered += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// True when no part of a message is waiting: a stream may end here.
    pub fn is_idle(&self) -> bool {
        self.buffered == 0 && self.pending.is_none()
    }

    /// The next whole message, if it has arrived: one chunk's slice, or two when it straddles
    /// chunks (decoding slices payloads from either side and copies only the one that straddles).
    pub fn next_message(&mut self) -> Result<Option<Message>, FramingError> {
        let len = match self.pending {
            Some(len) => len,
            None => {
                if self.buffered < HEADER_LEN {
                    return Ok(None);
                }
                let mut header = [0; HEADER_LEN];
                self.copy_to_slice(&mut header);
                if header[0] != 0 {
                    return Err(FramingError::Compressed(header[0]));
                }
                let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
                if len > self.max_message {
                    return Err(FramingError::TooLarge {
                        len,
                        max: self.max_message,
                    });
                }
                self.pending = Some(len);
                len
            }
        };
        if self.buffered < len {
            return Ok(None);
        }
        self.pending = None;
        let first = self.take_from_front(len);
        let rest = len - first.len();
        let message = match self.chunks.front() {
            Some(second) if rest > 0 && second.len() >= rest => {
                first.chain(self.take_from_front(rest))
            }
            _ if rest > 0 => {
                // Across three chunks or more (chunks far smaller than frames): join them.
                let mut joined = BytesMut::with_capacity(len);
                joined.extend_from_slice(&first);
                while joined.len() < len {
                    joined.extend_from_slice(&self.take_from_front(len - joined.len()));
                }
                joined.freeze().chain(Bytes::new())
            }
            _ => first.chain(Bytes::new()),
        };
        Ok(Some(message))
    }

    /// Up to `len` bytes from the front chunk.
    fn take_from_front(&mut self, len: usize) -> Bytes {
        let Some(front) = self.chunks.front_mut() else {
            return Bytes::new();
        };
        let taken = if front.len() > len {
            front.split_to(len)
        } else {
            self.chunks.pop_front().expect("front exists")
        };
        self.buffered -= taken.len();
        taken
    }

    fn copy_to_slice(&mut self, out: &mut [u8]) {
        let mut filled = 0;
        while filled < out.len() {
            let piece = self.take_from_front(out.len() - filled);
            out[filled..filled + piece.len()].copy_from_slice(&piece);
            filled += piece.len();
        }
    }
}

/// `messages` as gRPC puts them on the wire (uncompressed).
#[cfg(test)]
pub(super) fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut wire = Vec::new();
    for message in messages {
        wire.push(0);
        wire.extend_from_slice(&(message.len() as u32).to_be_bytes());
        wire.extend_from_slice(message);
    }
    wire
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(reader: &mut MessageReader) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| reader.next_message().unwrap())
            .map(|mut m| m.copy_to_bytes(m.remaining()).to_vec())
            .collect()
    }

    proptest! {
        /// However the bytes are cut into chunks, the same messages come out, and the reader is
        /// idle exactly when all of them have.
        #[test]
        fn messages_survive_any_chunking(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let wire = framed(&messages);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            cuts.extend([0, wire.len()]);
            cuts.sort_unstable();
            let wire = Bytes::from(wire);
            let mut reader = MessageReader::new(1024);
            let mut out = Vec::new();
            for pair in cuts.windows(2) {
                reader.push(wire.slice(pair[0]..pair[1]));
                out.extend(read_all(&mut reader));
            }
            prop_assert_eq!(out, messages);
            prop_assert!(reader.is_idle());
        }
    }

    #[test]
    fn a_message_within_one_chunk_is_a_slice_of_it() {
        let chunk = Bytes::from(framed(&[vec![1; 100], vec![2; 50]]));
        let mut reader = MessageReader::new(1024);
        reader.push(chunk.clone());
        let first = reader.next_message().unwrap().unwrap();
        assert_eq!(
            first.first_ref().as_ptr(),
            chunk[HEADER_LEN..].as_ptr(),
            "not copied"
        );
        assert!(first.last_ref().is_empty());
        assert_eq!(read_all(&mut reader), vec![vec![2; 50]]);
        assert!(reader.is_idle());
    }

    #[test]
    fn a_message_across_two_chunks_is_two_slices() {
        let wire = Bytes::from(framed(&[vec![1; 100]]));
        let mut reader = MessageReader::new(1024);
        reader.push(wire.slice(..60));
        reader.push(wire.slice(60..));
        let message = reader.next_message().unwrap().unwrap();
        assert_eq!(message.first_ref().as_ptr(), wire[HEADER_LEN..].as_ptr());
        assert_eq!(message.last_ref().as_ptr(), wire[60..].as_ptr());
        assert_eq!(message.remaining(), 100);
    }

    #[test]
    fn a_partial_message_waits_and_keeps_the_reader_busy() {
        let wire = framed(&[vec![9; 10]]);
        let mut reader = MessageReader::new(1024);
        reader.push(Bytes::copy_from_slice(&wire[..8]));
        assert!(reader.next_message().unwrap().is_none());
        assert!(!reader.is_idle(), "a stream must not end here");
        reader.push(Bytes::copy_from_slice(&wire[8..]));
        assert_eq!(read_all(&mut reader), vec![vec![9; 10]]);
    }

    #[test]
    fn oversized_and_compressed_messages_are_errors() {
        let mut reader = MessageReader::new(10);
        reader.push(Bytes::from(framed(&[vec![0; 11]])));
        assert_eq!(
            reader.next_message().unwrap_err(),
            FramingError::TooLarge { len: 11, max: 10 }
        );

        let mut wire = framed(&[vec![0; 3]]);
        wire[0] = 1;
        let mut reader = MessageReader::new(10);
        reader.push(Bytes::from(wire));
        assert_eq!(
            reader.next_message().unwrap_err(),
            FramingError::Compressed(1)
        );
    }
}
