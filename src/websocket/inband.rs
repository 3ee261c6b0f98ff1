//! The client-to-backend direction: every byte passes through as it came, except the
//! renewal messages the gateway takes for itself.
//!
//! A text message small enough to be a renewal is held back until it is complete (it may be
//! fragmented, split across reads, masked and compressed); if it turns out to be a renewal it
//! is dropped, otherwise its bytes go on unchanged. Anything else is forwarded as it arrives.

use bytes::BytesMut;
use flate2::{Decompress, FlushDecompress};

use super::frame::{self, Head, Piece, Position, OP_CLOSE, OP_CONTINUATION, OP_TEXT};

/// The shape of a renewal message: a JSON object with `type_field` equal to `type_value` and
/// the new token under `token_field`.
#[derive(Debug, Clone)]
pub struct RenewalShape {
    pub type_field: String,
    pub type_value: String,
    pub token_field: String,
    /// Longest renewal message, after decompression.
    pub max_bytes: usize,
}

impl RenewalShape {
    /// The token, if `message` is a renewal.
    fn token_of(&self, message: &[u8]) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(message).ok()?;
        let object = value.as_object()?;
        if object.get(&self.type_field)?.as_str()? != self.type_value {
            return None;
        }
        object.get(&self.token_field)?.as_str().map(str::to_owned)
    }
}

/// What the client did that the gateway acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A renewal message, already removed from the stream.
    Renewal(String),
    /// The client started the closing handshake (forwarded as usual).
    Close(Option<u16>),
}

/// A candidate renewal message, held back.
struct Held {
    /// The frames as they came, to forward unchanged if it is not a renewal.
    raw: BytesMut,
    /// The unmasked payload so far.
    payload: Vec<u8>,
    compressed: bool,
}

pub struct ClientStream<'a> {
    /// `None`: the connection takes no renewals, every message goes through.
    shape: Option<&'a RenewalShape>,
    /// permessage-deflate was negotiated, without context takeover for the client.
    deflate: bool,
    position: Position,
    /// A fragmented data message is in progress.
    in_message: bool,
    held: Option<Held>,
    /// The current frame's bytes go to `held`.
    holding_frame: bool,
    /// Payload of a Close frame being read.
    close_payload: Option<Vec<u8>>,
}

impl<'a> ClientStream<'a> {
    pub fn new(shape: Option<&'a RenewalShape>, deflate: bool) -> Self {
        Self {
            shape,
            deflate,
            position: Position::default(),
            in_message: false,
            held: None,
            holding_frame: false,
            close_payload: None,
        }
    }

    /// Whether what has been forwarded ends on a frame boundary, so the gateway may write a
    /// frame of its own after it. A frame being held has not been forwarded.
    pub fn forwarded_boundary(&self) -> bool {
        self.position.at_boundary() || self.holding_frame
    }

    /// Takes in bytes read from the client: what goes on to the backend is appended to `out`,
    /// what the gateway must act on to `events`.
    pub fn push(&mut self, data: &[u8], out: &mut BytesMut, events: &mut Vec<Event>) {
        let mut position = std::mem::take(&mut self.position);
        position.feed(data, |piece| match piece {
            Piece::Header(head, bytes) => self.header(head, &bytes, out),
            Piece::Payload(head, bytes, offset) => {
                if self.holding_frame {
                    if let Some(held) = &mut self.held {
                        held.raw.extend_from_slice(bytes);
                        frame::unmask(head.mask, bytes, offset, &mut held.payload);
                    }
                } else {
                    out.extend_from_slice(bytes);
                    if let Some(p) = &mut self.close_payload {
                        frame::unmask(head.mask, bytes, offset, p);
                    }
                }
            }
            Piece::End(head) => self.end(head, out, events),
        });
        self.position = position;
    }

    fn header(&mut self, head: Head, bytes: &[u8], out: &mut BytesMut) {
        self.holding_frame = false;
        if head.is_control() {
            // Forwarding it ahead of held fragments would reorder the stream: give up on the
            // held message instead. Clients do not interleave control frames into a renewal.
            self.release(out);
            out.extend_from_slice(bytes);
            self.close_payload = (head.opcode == OP_CLOSE).then(Vec::new);
            return;
        }
        let starts = !self.in_message;
        self.in_message = !head.fin;
        let Some(shape) = self.shape else {
            out.extend_from_slice(bytes);
            return;
        };
        if starts
            && head.opcode == OP_TEXT
            && !head.other_rsv
            && (!head.rsv1 || self.deflate)
            && head.len <= shape.max_bytes as u64
        {
            let mut raw = BytesMut::with_capacity(bytes.len() + head.len as usize);
            raw.extend_from_slice(bytes);
            self.held = Some(Held {
                raw,
                payload: Vec::with_capacity(head.len as usize),
                compressed: head.rsv1,
            });
            self.holding_frame = true;
            return;
        }
        if head.opcode == OP_CONTINUATION {
            if let Some(held) = &mut self.held {
                // A declared length near 2^64 must not wrap around into "small enough".
                if (held.payload.len() as u64).saturating_add(head.len) <= shape.max_bytes as u64 {
                    held.raw.extend_from_slice(bytes);
                    self.holding_frame = true;
                    return;
                }
            }
        }
        self.release(out);
        out.extend_from_slice(bytes);
    }

    fn end(&mut self, head: Head, out: &mut BytesMut, events: &mut Vec<Event>) {
        if let Some(payload) = self.close_payload.take() {
            events.push(Event::Close(frame::close_code(&payload)));
            return;
        }
        if !(self.holding_frame && head.fin) {
            return;
        }
        self.holding_frame = false;
        let (Some(held), Some(shape)) = (self.held.take(), self.shape) else {
            return;
        };
        let token = if held.compressed {
            inflate(&held.payload, shape.max_bytes).and_then(|m| shape.token_of(&m))
        } else {
            shape.token_of(&held.payload)
        };
        match token {
            Some(token) => events.push(Event::Renewal(token)),
            None => out.extend_from_slice(&held.raw),
        }
    }

    /// Sends a held message on as it came.
    fn release(&mut self, out: &mut BytesMut) {
        if let Some(held) = self.held.take() {
            out.extend_from_slice(&held.raw);
        }
    }
}

/// Decompresses one permessage-deflate message compressed without context takeover, giving up
/// past `limit` bytes of output.
fn inflate(payload: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut input = Vec::with_capacity(payload.len() + 4);
    input.extend_from_slice(payload);
    // RFC 7692 §7.2.2: the sender removed this empty block's tail.
    input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    // One byte of room past the limit tells a message at the limit from a longer one.
    let mut out = Vec::with_capacity(limit + 1);
    let mut inflater = Decompress::new(false);
    inflater
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .ok()?;
    let whole = inflater.total_in() == input.len() as u64;
    (whole && out.len() <= limit).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn shape() -> RenewalShape {
        RenewalShape {
            type_field: "type".into(),
            type_value: "access_token".into(),
            token_field: "token".into(),
            max_bytes: 1024,
        }
    }

    fn frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        frame::unmask(Some(mask), payload, 0, &mut out);
        out
    }

    fn deflate(message: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(message.len() + 64);
        c.compress_vec(message, &mut out, FlushCompress::Sync)
            .expect("compress");
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    /// Pushes `wire` in pieces of `step`; returns what was forwarded and the events.
    fn run(wire: &[u8], step: usize, deflate: bool) -> (Vec<u8>, Vec<Event>) {
        let shape = shape();
        let mut s = ClientStream::new(Some(&shape), deflate);
        let mut out = BytesMut::new();
        let mut events = Vec::new();
        for chunk in wire.chunks(step) {
            s.push(chunk, &mut out, &mut events);
        }
        assert!(s.forwarded_boundary());
        (out.to_vec(), events)
    }

    const RENEWAL: &[u8] = br#"{"type":"access_token","token":"eyJ.new.token"}"#;

    #[test]
    fn a_renewal_is_taken_out_wherever_the_reads_split_it() {
        let before = frame(true, false, 0x2, &[1, 2, 3], [9, 8, 7, 6]);
        let after = frame(true, false, OP_TEXT, b"{\"type\":\"chat\"}", [1, 2, 3, 4]);
        let mut wire = before.clone();
        wire.extend(frame(false, false, OP_TEXT, &RENEWAL[..10], [5, 5, 5, 5]));
        wire.extend(frame(
            true,
            false,
            OP_CONTINUATION,
            &RENEWAL[10..],
            [6, 6, 6, 6],
        ));
        wire.extend(&after);
        let mut expected = before;
        expected.extend(&after);
        for step in [1, 2, 5, 11, wire.len()] {
            let (out, events) = run(&wire, step, false);
            assert_eq!(out, expected, "step {step}");
            assert_eq!(events, vec![Event::Renewal("eyJ.new.token".into())]);
        }
    }

    #[test]
    fn a_compressed_renewal_is_read() {
        let wire = frame(true, true, OP_TEXT, &deflate(RENEWAL), [1, 2, 3, 4]);
        let (out, events) = run(&wire, 3, true);
        assert!(out.is_empty());
        assert_eq!(events, vec![Event::Renewal("eyJ.new.token".into())]);
        // Without a negotiated deflate, RSV1 means something else: pass it on.
        let (out, events) = run(&wire, 3, false);
        assert_eq!(out, wire);
        assert!(events.is_empty());
    }

    #[test]
    fn other_messages_pass_byte_for_byte() {
        let big = vec![b'a'; 5000];
        let mut wire = frame(
            true,
            false,
            OP_TEXT,
            br#"{"type":"other","token":"x"}"#,
            [1; 4],
        );
        wire.extend(frame(true, false, OP_TEXT, &big, [2; 4]));
        wire.extend(frame(true, false, OP_TEXT, b"not json", [3; 4]));
        wire.extend(frame(true, false, 0x9, b"ping", [4; 4]));
        wire.extend(frame(
            true,
            true,
            OP_TEXT,
            &deflate(&vec![b'z'; 4000]),
            [5; 4],
        ));
        let (out, events) = run(&wire, 7, true);
        assert_eq!(out, wire);
        assert!(events.is_empty());
    }

    #[test]
    fn a_message_growing_past_the_limit_goes_on_unchanged() {
        let part = vec![b' '; 700];
        let mut wire = frame(false, false, OP_TEXT, &part, [1; 4]);
        wire.extend(frame(true, false, OP_CONTINUATION, &part, [2; 4]));
        let (out, events) = run(&wire, 64, false);
        assert_eq!(out, wire);
        assert!(events.is_empty());
    }

    #[test]
    fn a_continuation_claiming_an_endless_length_is_not_held() {
        let mut wire = frame(false, false, OP_TEXT, b"{", [1; 4]);
        // A continuation frame whose 64-bit length, added to what is held, passes 2^64.
        wire.extend([OP_CONTINUATION, 0x80 | 127]);
        wire.extend(u64::MAX.to_be_bytes());
        wire.extend([0; 4]);
        wire.extend([b' '; 16]);
        let shape = shape();
        let mut s = ClientStream::new(Some(&shape), false);
        let (mut out, mut events) = (BytesMut::new(), Vec::new());
        s.push(&wire, &mut out, &mut events);
        assert_eq!(&out[..], &wire[..], "forwarded as it came, nothing held");
        assert!(events.is_empty());
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let bomb = deflate(&vec![b'{'; 1_000_000]);
        assert!(inflate(&bomb, 1024).is_none());
        assert_eq!(inflate(&deflate(RENEWAL), 1024).as_deref(), Some(RENEWAL));
    }

    #[test]
    fn the_close_code_is_reported() {
        let wire = frame::close(1000, "bye", Some([3, 1, 4, 1]));
        let (out, events) = run(&wire, 1, false);
        assert_eq!(out, wire.to_vec());
        assert_eq!(events, vec![Event::Close(Some(1000))]);
    }
}
