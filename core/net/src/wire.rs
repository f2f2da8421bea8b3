//! The datagram codec: what bytes go on the wire, and the one place that
//! decides whether bytes from the network are acceptable.
//!
//! Every datagram is `magic (2) | version (1) | channel (1) | length (2, BE)`
//! followed by exactly `length` bytes of body. The length makes truncation
//! detectable, the magic rejects stray traffic, and the version lets a newer
//! peer tell an older one it is too old: the [`Packet::VersionReject`] on the
//! `META` channel has a layout frozen for all versions, so every version can
//! read it.
//!
//! On the wire since version 2 only handshake packets, version rejects and
//! [`Packet::Sealed`] datagrams travel. A sealed datagram's plaintext is a
//! sequence of *frames*, each a control or data packet without the outer
//! header (see [`encode_frame`] and [`Frames`]): several small messages to
//! one peer (an ack, a data ack, a request) share one header, one counter
//! and one tag. That is why sealing costs less than the 6-byte header it
//! would otherwise add per packet once two or more frames share a datagram.
//!
//! Decoding never panics and never allocates: it borrows from the input and
//! checks every length before reading. All integers are big-endian.

/// "P2".
pub const MAGIC: [u8; 2] = [0x50, 0x32];
/// The protocol version this build speaks. 2: links are authenticated (an
/// address cookie, a Noise XX handshake) and every datagram on a link is
/// sealed; version 1 sent everything in the clear.
pub const VERSION: u8 = 2;
/// The oldest peer version this build still talks to (a version-1 peer
/// cannot authenticate, so it is told it is too old).
pub const MIN_VERSION: u8 = 2;
/// Size of the common header.
pub const HEADER_LEN: usize = 6;

/// The control channel: reliable and unreliable messages and their acks.
pub const CH_CONTROL: u8 = 0;
/// The data channel: chunk fragments and their acks.
pub const CH_DATA: u8 = 1;
/// Handshake packets: the only ones accepted in the clear (since version 2).
pub const CH_HANDSHAKE: u8 = 2;
/// A sealed (authenticated, encrypted) datagram of an established link,
/// whose plaintext is a whole control or data datagram.
pub const CH_SEALED: u8 = 3;
/// Version-independent channel (frozen layout).
pub const CH_META: u8 = 0xFF;

const T_UNRELIABLE: u8 = 0;
const T_RELIABLE: u8 = 1;
const T_ACK: u8 = 2;
const T_DATA: u8 = 0;
const T_DATA_ACK: u8 = 1;
const T_VERSION_REJECT: u8 = 0;
const T_COOKIE_REQUEST: u8 = 0;
const T_COOKIE: u8 = 1;
const T_INIT: u8 = 2;
const T_RESP: u8 = 3;
const T_FIN: u8 = 4;

/// Smallest cookie request: a cookie reply ([`COOKIE_LEN`]) is smaller, so
/// answering a spoofed request amplifies nothing.
pub const COOKIE_REQUEST_LEN: usize = 64;
/// Size of a cookie reply.
pub const COOKIE_LEN: usize = HEADER_LEN + 1 + 8 + crate::auth::COOKIE_LEN;
/// Smallest handshake initiation (padded): the responder's answer is smaller.
pub const INIT_LEN: usize = 160;
/// Bytes of the truncated counter a sealed datagram carries: the receiver
/// rebuilds the 64-bit AEAD nonce from the highest one it authenticated
/// ([`expand_counter`]), as QUIC does with packet numbers.
pub const COUNTER_LEN: usize = 4;
/// Bytes sealing adds to a datagram, whatever it carries: outer header,
/// counter, tag.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + COUNTER_LEN + crate::auth::TAG_LEN;
/// Bytes of a frame's header when another frame follows it (kind byte and
/// length); the last frame of a datagram has only the kind byte.
pub const FRAME_HEADER_LEN: usize = 3;
/// Bit of a frame's kind byte that says a length follows (another frame
/// comes after this one).
const FRAME_MORE: u8 = 0x80;

/// What a packet of `encoded` bytes (as [`encode`] writes it, header
/// included) costs as a frame that carries its length.
pub const fn frame_len(encoded: usize) -> usize {
    encoded - HEADER_LEN + FRAME_HEADER_LEN
}

// Sizes on the wire, sealing included. Counters and offsets are LEB128
// varints (ids, packet numbers and sequence numbers are small in practice,
// and every byte of a header is paid on each of hundreds of datagrams a
// second); the `*_len` functions give a packet's exact size as a sealed
// datagram of its own, which is what is charged to the upload cap and
// counted when it is queued. A packet that shares a datagram gives back
// [`SHARED_SAVING`].

/// Bytes of `v` as a varint.
pub const fn var_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Bytes a control message costs on top of its payload at most (a
/// reliable request or response with the largest ids): what bounds a
/// control payload.
pub const RELIABLE_OVERHEAD: usize = SEAL_OVERHEAD + 1 + 1 + 4 + 10 + 10 + 4 + 1 + 10;
/// Bytes a data fragment costs beyond its payload at most: chunks are split
/// so that a fragment fits `max_payload` whatever its numbers.
pub const DATA_OVERHEAD: usize = SEAL_OVERHEAD + 1 + 1 + 10 + 4 + 8 + 10 + 5 + 5 + 5 + 5;
/// Bytes a data fragment costs beyond its payload in a long-running stream
/// (packet and sequence numbers below 2^21, chunks below 2 MB, up to 127
/// fragments): what the engine's uplink model charges per datagram, as the
/// network layer charges the cap the exact size.
pub const DATA_OVERHEAD_TYPICAL: usize = SEAL_OVERHEAD + 1 + 1 + 3 + 4 + 8 + 3 + 3 + 3 + 1 + 1;
/// Size of a data ack datagram of its own, at most.
pub const DATA_ACK_LEN: usize = SEAL_OVERHEAD + 1 + 1 + 10 + 8 + 4 + 2;
/// Size of a control ack datagram of its own, at most.
pub const ACK_LEN: usize = SEAL_OVERHEAD + 1 + 1 + 4 + 10 + 4;

/// Exact size of a reliable message as a sealed datagram of its own.
pub const fn reliable_len(id: u64, floor: u64, kind: ReliableKind, payload: usize) -> usize {
    let rid = match kind {
        ReliableKind::Message => 0,
        ReliableKind::Request(r) | ReliableKind::Response(r) => var_len(r),
    };
    let below = id.saturating_sub(floor);
    SEAL_OVERHEAD + 1 + 1 + 4 + var_len(id) + var_len(below) + 4 + 1 + rid + payload
}

/// Exact size of a control ack as a sealed datagram of its own.
pub const fn ack_len(id: u64) -> usize {
    SEAL_OVERHEAD + 1 + 1 + 4 + var_len(id) + 4
}

/// Exact size of a data ack as a sealed datagram of its own.
pub const fn data_ack_len(largest: u64) -> usize {
    SEAL_OVERHEAD + 1 + 1 + var_len(largest) + 8 + 4 + 2
}

/// Exact size of a data fragment as a sealed datagram of its own.
pub const fn data_len(h: &DataHeader, payload: usize) -> usize {
    SEAL_OVERHEAD
        + 1
        + 1
        + var_len(h.pkt)
        + 4
        + 8
        + var_len(h.seq)
        + var_len(h.chunk_len as u64)
        + var_len(h.offset as u64)
        + var_len(h.index as u64)
        + var_len(h.count as u64)
        + payload
}

/// What a packet that rides in another packet's datagram saves: the outer
/// header, counter and tag, less the length its frame then carries.
pub const SHARED_SAVING: usize = SEAL_OVERHEAD - (FRAME_HEADER_LEN - 1);

/// What a reliable control message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReliableKind {
    /// A message the receiver's owner gets as an event.
    Message,
    /// A request with this id, to be answered.
    Request(u64),
    /// The response to the request with this id.
    Response(u64),
}

/// One decoded datagram, borrowing its payload from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Fire-and-forget control message.
    Unreliable {
        /// The message.
        payload: &'a [u8],
    },
    /// Control message that must be acknowledged.
    Reliable {
        /// Random id of the sending endpoint's incarnation.
        session: u32,
        /// Per-peer message id (starts at 1).
        id: u64,
        /// Every id below this is settled at the sender (acked or given up):
        /// the receiver may forget them.
        floor: u64,
        /// Sender's clock (µs, wrapping), echoed in the ack for RTT.
        ts: u32,
        /// What it is.
        kind: ReliableKind,
        /// The message.
        payload: &'a [u8],
    },
    /// Acknowledges one reliable message.
    Ack {
        /// The session of the message acknowledged.
        session: u32,
        /// Its id.
        id: u64,
        /// Its `ts`, for the sender's RTT sample.
        ts_echo: u32,
    },
    /// One fragment of a media chunk.
    Data(DataHeader, &'a [u8]),
    /// Selective ack of data datagrams plus a one-way delay sample.
    DataAck {
        /// Highest datagram number received.
        largest: u64,
        /// Bit i set: datagram `largest - 1 - i` was received.
        bitmap: u64,
        /// Receiver clock minus sender timestamp (µs, wrapping): one-way
        /// delay plus an unknown constant clock offset.
        delay: u32,
        /// How long the receiver held this ack after `largest` arrived, in
        /// units of 16 µs (saturating): the sender takes it off its RTT
        /// sample, so acks held for company do not read as path delay.
        ack_delay: u16,
    },
    /// "Your version is not one I speak": the range this peer speaks.
    VersionReject {
        /// The oldest version it speaks.
        min: u8,
        /// The newest version it speaks.
        max: u8,
    },
    /// "Give me a cookie": the first packet to an address with no link.
    /// `pad` makes it at least [`COOKIE_REQUEST_LEN`] bytes.
    CookieRequest {
        /// The asker's handshake nonce, echoed in the answer.
        nonce: u64,
        /// Padding, so that the answer is smaller than the question.
        pad: &'a [u8],
    },
    /// The stateless answer: a MAC over the asker's address and nonce.
    Cookie {
        /// The nonce of the request it answers.
        nonce: u64,
        /// The MAC ([`crate::auth::COOKIE_LEN`] bytes).
        cookie: &'a [u8],
    },
    /// Noise XX message 1 with the cookie that proves the address; padded
    /// to at least [`INIT_LEN`].
    Init {
        /// The initiator's handshake nonce.
        nonce: u64,
        /// The cookie the responder issued for this address and nonce.
        cookie: &'a [u8],
        /// Noise XX message 1 (`e`).
        noise: &'a [u8],
        /// Padding, so that the answer is smaller than the question.
        pad: &'a [u8],
    },
    /// Noise XX message 2 (the responder's static key).
    Resp {
        /// The initiator's handshake nonce.
        nonce: u64,
        /// Noise XX message 2 (`e, ee, s, es`).
        noise: &'a [u8],
    },
    /// Noise XX message 3 (the initiator's static key): the link is up.
    Fin {
        /// The initiator's handshake nonce.
        nonce: u64,
        /// Noise XX message 3 (`s, se`).
        noise: &'a [u8],
    },
    /// A datagram sealed with the link's keys: its frames, encrypted and
    /// authenticated.
    Sealed {
        /// The low 32 bits of the AEAD nonce (never reused on a link,
        /// checked for replays after [`expand_counter`]).
        counter: u32,
        /// The sealed plaintext datagram and its tag.
        ciphertext: &'a [u8],
    },
}

/// The fixed fields of a data fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Per-peer datagram number, never reused (retransmissions get a new one).
    pub pkt: u64,
    /// Sender clock (µs, wrapping) for one-way delay.
    pub ts: u32,
    /// The stream the chunk belongs to.
    pub stream: u64,
    /// The chunk's sequence number.
    pub seq: u64,
    /// The whole chunk's length.
    pub chunk_len: u32,
    /// Where this fragment's bytes go.
    pub offset: u32,
    /// This fragment's number.
    pub index: u32,
    /// How many fragments the chunk has.
    pub count: u32,
}

/// Why a datagram was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its header or declared length.
    #[error("shorter than its header or declared length")]
    Truncated,
    /// Not a p2ner datagram.
    #[error("bad magic")]
    BadMagic,
    /// A protocol version we do not speak.
    #[error("unsupported protocol version {0}")]
    UnknownVersion(u8),
    /// Longer than the configured maximum.
    #[error("longer than the configured maximum")]
    Oversized,
    /// Length field disagrees with the datagram size.
    #[error("length field disagrees with the datagram size")]
    BadLength,
    /// Unknown channel or packet type.
    #[error("unknown channel or packet type")]
    UnknownType,
    /// Fields out of range.
    #[error("fields out of range")]
    Invalid,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    /// An unsigned LEB128 integer, minimally encoded (a longer encoding of
    /// the same value is refused, so every accepted datagram re-encodes to
    /// its own bytes).
    fn var(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(DecodeError::Invalid);
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(DecodeError::Invalid);
                }
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid)
    }
    fn var32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.var()?).map_err(|_| DecodeError::Invalid)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    fn done(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::BadLength)
        }
    }
}

/// Decode one datagram. `max_len` bounds the whole datagram.
pub fn decode(buf: &[u8], max_len: usize) -> Result<Packet<'_>, DecodeError> {
    if buf.len() > max_len {
        return Err(DecodeError::Oversized);
    }
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    if buf[0..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = buf[2];
    let channel = buf[3];
    let len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    let body = &buf[HEADER_LEN..];
    if body.len() < len {
        return Err(DecodeError::Truncated);
    }
    if body.len() > len {
        return Err(DecodeError::BadLength);
    }
    let mut r = Reader { buf: body };
    if channel == CH_META {
        // Frozen layout, readable whatever the version.
        return match r.u8()? {
            T_VERSION_REJECT => {
                let min = r.u8()?;
                let max = r.u8()?;
                r.done()?;
                if min > max {
                    return Err(DecodeError::Invalid);
                }
                Ok(Packet::VersionReject { min, max })
            }
            _ => Err(DecodeError::UnknownType),
        };
    }
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(DecodeError::UnknownVersion(version));
    }
    if channel == CH_SEALED {
        let counter = r.u32()?;
        let ciphertext = r.rest();
        if ciphertext.len() < crate::auth::TAG_LEN + 1 {
            return Err(DecodeError::Invalid);
        }
        return Ok(Packet::Sealed {
            counter,
            ciphertext,
        });
    }
    decode_body(channel, body)
}

/// Decode a packet's body (type byte onwards) on `channel`.
fn decode_body(channel: u8, body: &[u8]) -> Result<Packet<'_>, DecodeError> {
    let mut r = Reader { buf: body };
    match (channel, r.u8()?) {
        (CH_CONTROL, T_UNRELIABLE) => Ok(Packet::Unreliable { payload: r.rest() }),
        (CH_CONTROL, T_RELIABLE) => {
            let session = r.u32()?;
            let id = r.var()?;
            let below = r.var()?;
            let ts = r.u32()?;
            let kind = match r.u8()? {
                0 => ReliableKind::Message,
                1 => ReliableKind::Request(r.var()?),
                2 => ReliableKind::Response(r.var()?),
                _ => return Err(DecodeError::Invalid),
            };
            let Some(floor) = id.checked_sub(below) else {
                return Err(DecodeError::Invalid);
            };
            if id == 0 {
                return Err(DecodeError::Invalid);
            }
            Ok(Packet::Reliable {
                session,
                id,
                floor,
                ts,
                kind,
                payload: r.rest(),
            })
        }
        (CH_CONTROL, T_ACK) => {
            let session = r.u32()?;
            let id = r.var()?;
            let ts_echo = r.u32()?;
            r.done()?;
            Ok(Packet::Ack {
                session,
                id,
                ts_echo,
            })
        }
        (CH_DATA, T_DATA) => {
            let h = DataHeader {
                pkt: r.var()?,
                ts: r.u32()?,
                stream: r.u64()?,
                seq: r.var()?,
                chunk_len: r.var32()?,
                offset: r.var32()?,
                index: r.var32()?,
                count: r.var32()?,
            };
            let payload = r.rest();
            let end = h.offset as u64 + payload.len() as u64;
            if h.count == 0
                || h.index >= h.count
                || end > h.chunk_len as u64
                || h.count > h.chunk_len.max(1)
                || (payload.is_empty() && h.chunk_len != 0)
            {
                return Err(DecodeError::Invalid);
            }
            Ok(Packet::Data(h, payload))
        }
        (CH_DATA, T_DATA_ACK) => {
            let largest = r.var()?;
            let bitmap = r.u64()?;
            let delay = r.u32()?;
            let ack_delay = r.u16()?;
            r.done()?;
            Ok(Packet::DataAck {
                largest,
                bitmap,
                delay,
                ack_delay,
            })
        }
        (CH_HANDSHAKE, T_COOKIE_REQUEST) => {
            let nonce = r.u64()?;
            let pad = r.rest();
            if body.len() + HEADER_LEN < COOKIE_REQUEST_LEN {
                return Err(DecodeError::Invalid);
            }
            Ok(Packet::CookieRequest { nonce, pad })
        }
        (CH_HANDSHAKE, T_COOKIE) => {
            let nonce = r.u64()?;
            let cookie = r.take(crate::auth::COOKIE_LEN)?;
            r.done()?;
            Ok(Packet::Cookie { nonce, cookie })
        }
        (CH_HANDSHAKE, T_INIT) => {
            let nonce = r.u64()?;
            let cookie = r.take(crate::auth::COOKIE_LEN)?;
            let n = u16::from_be_bytes([r.u8()?, r.u8()?]) as usize;
            let noise = r.take(n)?;
            let pad = r.rest();
            if body.len() + HEADER_LEN < INIT_LEN || noise.is_empty() {
                return Err(DecodeError::Invalid);
            }
            Ok(Packet::Init {
                nonce,
                cookie,
                noise,
                pad,
            })
        }
        (CH_HANDSHAKE, t @ (T_RESP | T_FIN)) => {
            let nonce = r.u64()?;
            let noise = r.rest();
            if noise.is_empty() {
                return Err(DecodeError::Invalid);
            }
            Ok(if t == T_RESP {
                Packet::Resp { nonce, noise }
            } else {
                Packet::Fin { nonce, noise }
            })
        }
        _ => Err(DecodeError::UnknownType),
    }
}

/// Appends datagrams to a buffer. Callers check sizes first (see the
/// `*_OVERHEAD` constants); the body length must fit in a u16.
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Writer<'a> {
    fn begin(out: &'a mut Vec<u8>, version: u8, channel: u8, ty: u8) -> Self {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.push(version);
        out.push(channel);
        out.extend_from_slice(&[0, 0]);
        out.push(ty);
        Writer { out, start }
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.out.extend_from_slice(v);
        self
    }
    fn var(&mut self, mut v: u64) -> &mut Self {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.out.push(b);
                return self;
            }
            self.out.push(b | 0x80);
        }
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn finish(self) {
        let len = self.out.len() - self.start - HEADER_LEN;
        let len = u16::try_from(len).expect("datagram body fits u16");
        self.out[self.start + 4..self.start + 6].copy_from_slice(&len.to_be_bytes());
    }
}

/// Encode a packet at the current version.
pub fn encode(p: &Packet<'_>, out: &mut Vec<u8>) {
    encode_version(p, VERSION, out)
}

/// Encode a packet claiming a given version (tests use it to play an old or
/// new peer).
pub fn encode_version(p: &Packet<'_>, version: u8, out: &mut Vec<u8>) {
    match *p {
        Packet::Unreliable { payload } => {
            let mut w = Writer::begin(out, version, CH_CONTROL, T_UNRELIABLE);
            w.bytes(payload);
            w.finish();
        }
        Packet::Reliable {
            session,
            id,
            floor,
            ts,
            kind,
            payload,
        } => {
            let mut w = Writer::begin(out, version, CH_CONTROL, T_RELIABLE);
            w.u32(session).var(id).var(id - floor.min(id)).u32(ts);
            match kind {
                ReliableKind::Message => w.u8(0),
                ReliableKind::Request(r) => w.u8(1).var(r),
                ReliableKind::Response(r) => w.u8(2).var(r),
            };
            w.bytes(payload);
            w.finish();
        }
        Packet::Ack {
            session,
            id,
            ts_echo,
        } => {
            let mut w = Writer::begin(out, version, CH_CONTROL, T_ACK);
            w.u32(session).var(id).u32(ts_echo);
            w.finish();
        }
        Packet::Data(h, payload) => {
            let mut w = Writer::begin(out, version, CH_DATA, T_DATA);
            w.var(h.pkt)
                .u32(h.ts)
                .u64(h.stream)
                .var(h.seq)
                .var(h.chunk_len as u64)
                .var(h.offset as u64)
                .var(h.index as u64)
                .var(h.count as u64)
                .bytes(payload);
            w.finish();
        }
        Packet::DataAck {
            largest,
            bitmap,
            delay,
            ack_delay,
        } => {
            let mut w = Writer::begin(out, version, CH_DATA, T_DATA_ACK);
            w.var(largest).u64(bitmap).u32(delay).u16(ack_delay);
            w.finish();
        }
        Packet::VersionReject { min, max } => {
            let mut w = Writer::begin(out, version, CH_META, T_VERSION_REJECT);
            w.u8(min).u8(max);
            w.finish();
        }
        Packet::CookieRequest { nonce, pad } => {
            let mut w = Writer::begin(out, version, CH_HANDSHAKE, T_COOKIE_REQUEST);
            w.u64(nonce).bytes(pad);
            w.finish();
        }
        Packet::Cookie { nonce, cookie } => {
            let mut w = Writer::begin(out, version, CH_HANDSHAKE, T_COOKIE);
            w.u64(nonce).bytes(cookie);
            w.finish();
        }
        Packet::Init {
            nonce,
            cookie,
            noise,
            pad,
        } => {
            let mut w = Writer::begin(out, version, CH_HANDSHAKE, T_INIT);
            w.u64(nonce)
                .bytes(cookie)
                .u16(noise.len() as u16)
                .bytes(noise)
                .bytes(pad);
            w.finish();
        }
        Packet::Resp { nonce, noise } => {
            let mut w = Writer::begin(out, version, CH_HANDSHAKE, T_RESP);
            w.u64(nonce).bytes(noise);
            w.finish();
        }
        Packet::Fin { nonce, noise } => {
            let mut w = Writer::begin(out, version, CH_HANDSHAKE, T_FIN);
            w.u64(nonce).bytes(noise);
            w.finish();
        }
        Packet::Sealed {
            counter,
            ciphertext,
        } => {
            let start = out.len();
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&[version, CH_SEALED, 0, 0]);
            out.extend_from_slice(&counter.to_be_bytes());
            out.extend_from_slice(ciphertext);
            let len =
                u16::try_from(out.len() - start - HEADER_LEN).expect("datagram body fits u16");
            out[start + 4..start + 6].copy_from_slice(&len.to_be_bytes());
        }
    }
}

/// Append the packet `encoded` (as [`encode`] wrote it: a control or data
/// packet with its header) to a sealed datagram's plaintext as a frame.
/// `more`: another frame will follow, so this one carries its length.
/// Returns false (and appends nothing) for anything that is not a control
/// or data packet of ours.
pub fn encode_frame(encoded: &[u8], more: bool, out: &mut Vec<u8>) -> bool {
    if encoded.len() < HEADER_LEN + 1 || encoded[0..2] != MAGIC {
        return false;
    }
    let channel = encoded[3];
    if channel != CH_CONTROL && channel != CH_DATA {
        return false;
    }
    let body = &encoded[HEADER_LEN..];
    if more {
        let Ok(len) = u16::try_from(body.len()) else {
            return false;
        };
        out.push(channel | FRAME_MORE);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(channel);
    }
    out.extend_from_slice(body);
    true
}

/// The frames of a sealed datagram's plaintext, in order: each decoded
/// packet and the bytes its frame took. Stops after the first error.
pub struct Frames<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Frames<'a> {
    /// The frames of `plain`.
    pub fn new(plain: &'a [u8]) -> Self {
        Frames {
            buf: plain,
            failed: false,
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<(Packet<'a>, usize), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let kind = self.buf[0];
        let channel = kind & !FRAME_MORE;
        let (body, used) = if kind & FRAME_MORE != 0 {
            if self.buf.len() < FRAME_HEADER_LEN {
                self.failed = true;
                return Some(Err(DecodeError::Truncated));
            }
            let len = u16::from_be_bytes([self.buf[1], self.buf[2]]) as usize;
            let end = FRAME_HEADER_LEN + len;
            if self.buf.len() <= end {
                // Missing, or nothing after a frame that says more follows.
                self.failed = true;
                return Some(Err(DecodeError::BadLength));
            }
            (&self.buf[FRAME_HEADER_LEN..end], end)
        } else {
            (&self.buf[1..], self.buf.len())
        };
        self.buf = &self.buf[used..];
        let r = match channel {
            CH_CONTROL | CH_DATA => decode_body(channel, body).map(|p| (p, used)),
            _ => Err(DecodeError::UnknownType),
        };
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

/// The full 64-bit counter closest to `next` (the counter after the
/// highest one authenticated so far) whose low 32 bits are `truncated`
/// (QUIC's packet number decoding, RFC 9000 appendix A.3). Reordering up to
/// 2^31 datagrams is told apart; the replay window is far narrower anyway.
pub fn expand_counter(next: u64, truncated: u32) -> u64 {
    const WIN: u64 = 1 << 32;
    const HALF: u64 = WIN / 2;
    let candidate = (next & !(WIN - 1)) | truncated as u64;
    if candidate + HALF <= next && candidate < u64::MAX - WIN {
        candidate + WIN
    } else if candidate > next + HALF && candidate >= WIN {
        candidate - WIN
    } else {
        candidate
    }
}

/// Peek at the version of something that carries our magic, so a receiver
/// can answer an old peer with a [`Packet::VersionReject`].
pub fn peek_version(buf: &[u8]) -> Option<u8> {
    (buf.len() >= HEADER_LEN && buf[0..2] == MAGIC && buf[3] != CH_META).then(|| buf[2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn samples() -> Vec<Vec<u8>> {
        let pkts = [
            Packet::Unreliable { payload: b"hello" },
            Packet::Unreliable { payload: b"" },
            Packet::Reliable {
                session: 7,
                id: 3,
                floor: 2,
                ts: 99,
                kind: ReliableKind::Request(42),
                payload: b"req",
            },
            Packet::Reliable {
                session: 7,
                id: 1,
                floor: 1,
                ts: 0,
                kind: ReliableKind::Message,
                payload: b"",
            },
            Packet::Reliable {
                session: 1,
                id: u64::MAX,
                floor: 5,
                ts: u32::MAX,
                kind: ReliableKind::Response(1),
                payload: &[0xAB; 100],
            },
            Packet::Ack {
                session: 1,
                id: 2,
                ts_echo: 3,
            },
            Packet::Data(
                DataHeader {
                    pkt: 10,
                    ts: 11,
                    stream: 12,
                    seq: 13,
                    chunk_len: 2000,
                    offset: 1000,
                    index: 1,
                    count: 2,
                },
                &[7; 1000],
            ),
            Packet::DataAck {
                largest: 77,
                bitmap: 0xF0F0,
                delay: 1234,
                ack_delay: 77,
            },
            Packet::VersionReject { min: 1, max: 1 },
            Packet::CookieRequest {
                nonce: 9,
                pad: &[0; COOKIE_REQUEST_LEN - HEADER_LEN - 9],
            },
            Packet::Cookie {
                nonce: 9,
                cookie: &[3; crate::auth::COOKIE_LEN],
            },
            Packet::Init {
                nonce: 9,
                cookie: &[3; crate::auth::COOKIE_LEN],
                noise: &[4; 32],
                pad: &[0; INIT_LEN - HEADER_LEN - 1 - 8 - 16 - 2 - 32],
            },
            Packet::Resp {
                nonce: 9,
                noise: &[5; 96],
            },
            Packet::Fin {
                nonce: 9,
                noise: &[6; 64],
            },
            Packet::Sealed {
                counter: 77,
                ciphertext: &[8; 40],
            },
        ];
        pkts.iter()
            .map(|p| {
                let mut v = Vec::new();
                encode(p, &mut v);
                v
            })
            .collect()
    }

    #[test]
    fn round_trip_samples() {
        for s in samples() {
            let p = decode(&s, 65535).unwrap();
            let mut again = Vec::new();
            encode(&p, &mut again);
            assert_eq!(s, again);
        }
    }

    #[test]
    fn every_truncation_rejected() {
        for s in samples() {
            for n in 0..s.len() {
                assert!(decode(&s[..n], 65535).is_err(), "prefix {n} of {s:?}");
            }
        }
    }

    #[test]
    fn every_bit_flip_safe() {
        for s in samples() {
            for bit in 0..s.len() * 8 {
                let mut m = s.clone();
                m[bit / 8] ^= 1 << (bit % 8);
                // Either rejected or decoded; never a panic, and a decoded
                // packet re-encodes to the same bytes.
                if let Ok(p) = decode(&m, 65535) {
                    let mut again = Vec::new();
                    encode_version(&p, m[2], &mut again);
                    if m[3] != CH_META {
                        assert_eq!(m, again);
                    }
                }
            }
        }
    }

    #[test]
    fn oversized_and_versions() {
        let s = &samples()[0];
        assert_eq!(decode(s, s.len() - 1), Err(DecodeError::Oversized));
        let mut old = s.clone();
        old[2] = 0;
        assert_eq!(decode(&old, 2000), Err(DecodeError::UnknownVersion(0)));
        assert_eq!(peek_version(&old), Some(0));
        let mut newer = s.clone();
        newer[2] = VERSION + 1;
        assert_eq!(
            decode(&newer, 2000),
            Err(DecodeError::UnknownVersion(VERSION + 1))
        );
        // A reject from any version is understood.
        let mut rej = Vec::new();
        encode_version(&Packet::VersionReject { min: 9, max: 12 }, 12, &mut rej);
        assert_eq!(
            decode(&rej, 2000),
            Ok(Packet::VersionReject { min: 9, max: 12 })
        );
        let mut trailing = samples()[5].clone();
        trailing.push(0);
        assert!(decode(&trailing, 2000).is_err());
    }

    fn arb_packet() -> impl Strategy<Value = (u8, Vec<u8>, [u64; 6], [u32; 6])> {
        (
            0u8..6,
            proptest::collection::vec(any::<u8>(), 0..1500),
            any::<[u64; 6]>(),
            any::<[u32; 6]>(),
        )
    }

    proptest! {
        #[test]
        fn prop_round_trip((which, payload, u, v) in arb_packet()) {
            let id = u[0].max(1);
            let pkt = match which {
                0 => Packet::Unreliable { payload: &payload },
                1 => Packet::Reliable { session: v[0], id, floor: u[1] % id + 1, ts: v[1],
                    kind: match u[2] % 3 { 0 => ReliableKind::Message, 1 => ReliableKind::Request(u[3]), _ => ReliableKind::Response(u[3]) },
                    payload: &payload },
                2 => Packet::Ack { session: v[0], id: u[0], ts_echo: v[1] },
                3 => {
                    let chunk_len = (payload.len() as u32).max(1) + v[2] % 10_000;
                    let offset = v[3] % (chunk_len - payload.len() as u32 + 1);
                    let count = 1 + v[4] % chunk_len;
                    let payload: &[u8] = if payload.is_empty() { &[1] } else { &payload };
                    let offset = offset.min(chunk_len - payload.len() as u32);
                    Packet::Data(DataHeader { pkt: u[0], ts: v[0], stream: u[1], seq: u[2], chunk_len, offset, index: v[5] % count, count }, payload)
                }
                4 => Packet::DataAck { largest: u[0], bitmap: u[1], delay: v[0], ack_delay: v[1] as u16 },
                _ => Packet::VersionReject { min: (v[0] % 100) as u8, max: 100 + (v[1] % 100) as u8 },
            };
            let mut buf = Vec::new();
            encode(&pkt, &mut buf);
            prop_assert_eq!(decode(&buf, 65535), Ok(pkt));
        }

        #[test]
        fn prop_garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode(&buf, 1200);
        }

        #[test]
        fn prop_mutated_samples((idx, pos, val, cut) in (0usize..15, any::<usize>(), any::<u8>(), any::<usize>())) {
            let mut s = samples()[idx].clone();
            let p = pos % s.len();
            s[p] = val;
            let c = cut % (s.len() + 1);
            let _ = decode(&s[..c], 65535);
        }
    }
}
