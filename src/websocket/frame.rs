//! RFC 6455 framing: just enough to find frame boundaries in a byte stream that arrives in
//! arbitrary pieces, read the few messages the gateway acts on, and write its own Close
//! frames. Payloads the gateway does not act on are never copied or unmasked.

use bytes::{BufMut, BytesMut};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;

/// The header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    /// RSV1: the message is compressed (permessage-deflate), on its first frame.
    pub rsv1: bool,
    /// RSV2 or RSV3: an extension the gateway does not know.
    pub other_rsv: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
    /// Bytes the header took on the wire.
    pub header_len: usize,
}

impl Head {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// Parses a header from the start of `buf`; `None` while more bytes are needed.
    pub fn parse(buf: &[u8]) -> Option<Head> {
        let (&b0, rest) = buf.split_first()?;
        let &b1 = rest.first()?;
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
                4,
            ),
            127 => {
                let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
                (u64::from_be_bytes(bytes), 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            Some(m)
        } else {
            None
        };
        Some(Head {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            other_rsv: b0 & 0x30 != 0,
            opcode: b0 & 0x0f,
            mask,
            len,
            header_len: at,
        })
    }
}

/// Where a direction of the stream stands, fed piece by piece.
#[derive(Debug, Default)]
pub struct Position {
    /// Header bytes seen of a frame whose header is not complete yet.
    header: Vec<u8>,
    /// The frame being read and how much of its payload is still to come.
    frame: Option<(Head, u64)>,
}

/// What a piece of the stream holds, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A complete header, with its bytes (which may have arrived over several reads).
    Header(Head, Vec<u8>),
    /// Payload bytes of the current frame, as on the wire (still masked), and the offset of
    /// the first of them within the frame's payload.
    Payload(Head, &'a [u8], u64),
    /// The current frame is complete.
    End(Head),
}

impl Position {
    /// Whether everything fed so far ends exactly on a frame boundary, so a frame of the
    /// gateway's own may be written next.
    pub fn at_boundary(&self) -> bool {
        self.frame.is_none() && self.header.is_empty()
    }

    /// Splits `data` into pieces, carrying partial headers and payloads over to the next call.
    pub fn feed<'a>(&mut self, mut data: &'a [u8], mut on: impl FnMut(Piece<'a>)) {
        loop {
            if let Some((head, left)) = self.frame {
                let take = usize::try_from(left).map_or(data.len(), |l| l.min(data.len()));
                if take > 0 {
                    on(Piece::Payload(head, &data[..take], head.len - left));
                    data = &data[take..];
                }
                let left = left - take as u64;
                if left > 0 {
                    self.frame = Some((head, left));
                    return;
                }
                self.frame = None;
                on(Piece::End(head));
            }
            if data.is_empty() {
                return;
            }
            // Complete the header a byte at a time only while it is split across reads.
            let parsed = if self.header.is_empty() {
                Head::parse(data).map(|h| {
                    let bytes = data[..h.header_len].to_vec();
                    data = &data[h.header_len..];
                    (h, bytes)
                })
            } else {
                let mut found = None;
                while let Some((&b, rest)) = data.split_first() {
                    self.header.push(b);
                    data = rest;
                    if let Some(h) = Head::parse(&self.header) {
                        found = Some((h, std::mem::take(&mut self.header)));
                        break;
                    }
                }
                found
            };
            match parsed {
                Some((head, bytes)) => {
                    on(Piece::Header(head, bytes));
                    self.frame = Some((head, head.len));
                }
                None => {
                    self.header.extend_from_slice(data);
                    return;
                }
            }
        }
    }
}

/// Applies (or removes: the operation is its own inverse) a frame's mask to payload bytes
/// starting at `offset` within the payload.
pub fn unmask(mask: Option<[u8; 4]>, bytes: &[u8], offset: u64, out: &mut Vec<u8>) {
    match mask {
        None => out.extend_from_slice(bytes),
        Some(m) => out.extend(
            bytes
                .iter()
                .zip((offset as usize..).map(|i| m[i % 4]))
                .map(|(b, k)| b ^ k),
        ),
    }
}

/// A Close frame with `code` and `reason`, masked when it goes to a server.
pub fn close(code: u16, reason: &str, mask: Option<[u8; 4]>) -> BytesMut {
    // A control frame's payload is at most 125 bytes.
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    let mut frame = BytesMut::with_capacity(6 + payload.len());
    frame.put_u8(0x80 | OP_CLOSE);
    let len = payload.len() as u8;
    match mask {
        None => {
            frame.put_u8(len);
            frame.put_slice(&payload);
        }
        Some(m) => {
            frame.put_u8(0x80 | len);
            frame.put_slice(&m);
            let mut masked = Vec::with_capacity(payload.len());
            unmask(Some(m), &payload, 0, &mut masked);
            frame.put_slice(&masked);
        }
    }
    frame
}

/// The status code of a Close frame's (unmasked) payload.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(k) = mask {
            out.extend_from_slice(&k);
        }
        unmask(mask, payload, 0, &mut out);
        out
    }

    /// Feeds `wire` in pieces of `step` bytes and rebuilds every frame's payload.
    fn frames_of(wire: &[u8], step: usize) -> Vec<(u8, bool, Vec<u8>)> {
        let mut pos = Position::default();
        let mut frames = Vec::new();
        let mut current = Vec::new();
        for chunk in wire.chunks(step) {
            pos.feed(chunk, |p| match p {
                Piece::Header(..) => current.clear(),
                Piece::Payload(h, bytes, offset) => unmask(h.mask, bytes, offset, &mut current),
                Piece::End(h) => frames.push((h.opcode, h.fin, std::mem::take(&mut current))),
            });
        }
        assert!(pos.at_boundary());
        frames
    }

    #[test]
    fn frames_split_anywhere_are_read_whole() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = frame(false, OP_TEXT, b"hel", Some([1, 2, 3, 4]));
        wire.extend(frame(true, 0x9, b"", Some([9, 9, 9, 9])));
        wire.extend(frame(true, OP_CONTINUATION, b"lo", Some([5, 6, 7, 8])));
        wire.extend(frame(true, 0x2, &big, Some([0xde, 0xad, 0xbe, 0xef])));
        wire.extend(frame(true, 0x2, &big[..300], None));
        for step in [1, 2, 3, 7, 13, 4096, wire.len()] {
            let frames = frames_of(&wire, step);
            assert_eq!(frames.len(), 5, "step {step}");
            assert_eq!(frames[0], (OP_TEXT, false, b"hel".to_vec()));
            assert_eq!(frames[1], (0x9, true, Vec::new()));
            assert_eq!(frames[2], (OP_CONTINUATION, true, b"lo".to_vec()));
            assert_eq!(frames[3].2, big);
            assert_eq!(frames[4].2, big[..300].to_vec());
        }
    }

    #[test]
    fn a_partial_header_is_not_a_boundary() {
        let wire = frame(true, 0x2, &[0; 300], Some([1, 1, 1, 1]));
        let mut pos = Position::default();
        pos.feed(&wire[..3], |_| {});
        assert!(!pos.at_boundary());
        pos.feed(&wire[3..], |_| {});
        assert!(pos.at_boundary());
    }

    #[test]
    fn close_frames_round_trip() {
        for mask in [None, Some([7, 0, 7, 0])] {
            let wire = close(4001, "token expired", mask);
            let frames = frames_of(&wire, 1);
            assert_eq!(frames.len(), 1);
            let (op, fin, payload) = &frames[0];
            assert_eq!((*op, *fin), (OP_CLOSE, true));
            assert_eq!(close_code(payload), Some(4001));
            assert_eq!(&payload[2..], b"token expired");
        }
        let long = "x".repeat(300);
        assert!(close(1000, &long, None).len() <= 127);
    }
}
