//! SPDY/3.1 framing, the server side of what a port-forward needs: frames in and out,
//! and the compressed header blocks of `SYN_STREAM`/`SYN_REPLY`.
//!
//! Header blocks are one zlib stream per direction for the whole connection. The client's
//! is compressed with SPDY/3's preset dictionary (`spdy3_dictionary.bin`, the dictionary
//! of the SPDY/3 specification, section 2.6.10.1), so reading it needs an inflater that
//! accepts a dictionary. Ours is written as stored (uncompressed) deflate blocks, without
//! a dictionary: valid zlib any reader takes, and header blocks here are a few bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Decompress, FlushDecompress};
use std::collections::HashMap;

const VERSION: u16 = 3;
const DICTIONARY: &[u8] = include_bytes!("spdy3_dictionary.bin");
/// No header block here is larger; a bigger one is refused rather than inflated.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

pub const FLAG_FIN: u8 = 0x01;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// A frame read from the client.
#[derive(Debug, PartialEq)]
pub enum Frame {
    SynStream {
        stream: u32,
        fin: bool,
        headers: HashMap<String, String>,
    },
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    RstStream {
        stream: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY, anything newer: nothing to do.
    Ignored,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("malformed SPDY frame: {0}")]
    Malformed(&'static str),
    #[error("SPDY header block: {0}")]
    Headers(String),
}

/// Splits frames off a byte buffer and inflates header blocks.
pub struct Reader {
    inflater: Decompress,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            inflater: Decompress::new(true),
        }
    }
}

impl Reader {
    /// The next whole frame at the start of `buf` (consumed), or `None` until more bytes
    /// arrive.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7]);
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let head = buf.split_to(8);
        let mut body = buf.split_to(len).freeze();
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data {
                stream,
                fin: flags & FLAG_FIN != 0,
                data: body,
            }));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let need = |n: usize, body: &Bytes| {
            if body.len() < n {
                Err(Error::Malformed("control frame too short"))
            } else {
                Ok(())
            }
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                need(10, &body)?;
                let stream = body.get_u32() & 0x7fff_ffff;
                body.advance(6); // associated stream, priority, slot
                let headers = self.headers(&body)?;
                Frame::SynStream {
                    stream,
                    fin: flags & FLAG_FIN != 0,
                    headers,
                }
            }
            RST_STREAM => {
                need(8, &body)?;
                Frame::RstStream {
                    stream: body.get_u32() & 0x7fff_ffff,
                }
            }
            PING => {
                need(4, &body)?;
                Frame::Ping { id: body.get_u32() }
            }
            GOAWAY => Frame::GoAway,
            SYN_REPLY | HEADERS => {
                // Keep the inflater in step with the client's zlib stream.
                need(4, &body)?;
                body.advance(4);
                self.headers(&body)?;
                Frame::Ignored
            }
            SETTINGS | WINDOW_UPDATE => Frame::Ignored,
            _ => Frame::Ignored,
        }))
    }

    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let mut pos = 0;
        for _ in 0..1024 {
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            let (in_before, out_before) = (self.inflater.total_in(), out.len());
            match self
                .inflater
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflater
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| Error::Headers(e.to_string()))?;
                }
                Err(e) => return Err(Error::Headers(e.to_string())),
            }
            pos += usize::try_from(self.inflater.total_in() - in_before).unwrap_or(0);
            if out.len() > MAX_HEADER_BLOCK {
                return Err(Error::Headers("too large".into()));
            }
            let progressed = out.len() > out_before || self.inflater.total_in() > in_before;
            if pos >= input.len() && out.capacity() > out.len() && !progressed {
                return Ok(out);
            }
        }
        Err(Error::Headers("inflating does not end".into()))
    }

    fn headers(&mut self, block: &[u8]) -> Result<HashMap<String, String>, Error> {
        let raw = self.inflate(block)?;
        parse_headers(&raw)
    }
}

fn parse_headers(mut raw: &[u8]) -> Result<HashMap<String, String>, Error> {
    let short = || Error::Headers("truncated name/value block".into());
    let take = |raw: &mut &[u8]| -> Result<String, Error> {
        if raw.len() < 4 {
            return Err(short());
        }
        let n = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        if raw.len() < 4 + n {
            return Err(short());
        }
        let s = String::from_utf8_lossy(&raw[4..4 + n]).into_owned();
        *raw = &raw[4 + n..];
        Ok(s)
    };
    let count = take_u32(&mut raw).ok_or_else(short)?;
    let mut headers = HashMap::new();
    for _ in 0..count {
        let name = take(&mut raw)?;
        let value = take(&mut raw)?;
        headers.insert(name.to_ascii_lowercase(), value);
    }
    Ok(headers)
}

fn take_u32(raw: &mut &[u8]) -> Option<u32> {
    let (head, rest) = raw.split_first_chunk::<4>()?;
    *raw = rest;
    Some(u32::from_be_bytes(*head))
}

/// Encodes frames to the client.
#[derive(Default)]
pub struct Writer {
    /// Whether the zlib header of our header-block stream is out.
    started: bool,
}

impl Writer {
    fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + body.len());
        out.put_u16(0x8000 | VERSION);
        out.put_u16(kind);
        out.put_u32((u32::from(flags) << 24) | body.len() as u32);
        out.extend_from_slice(body);
        out
    }

    /// The next piece of our zlib stream holding `raw`: stored deflate blocks and a sync
    /// flush.
    fn deflate(&mut self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len() + 16);
        if !self.started {
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        for chunk in raw.chunks(0xffff) {
            let n = chunk.len() as u16;
            out.push(0x00); // not final, stored
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&(!n).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        // The sync-flush marker (an empty stored block): a reader hands out what it has
        // inflated when it meets one, without reading past the frame for the next block.
        out.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        out
    }

    pub fn syn_reply(&mut self, stream: u32) -> Vec<u8> {
        let mut body = stream.to_be_bytes().to_vec();
        // An empty name/value block.
        body.extend(self.deflate(&0u32.to_be_bytes()));
        Self::control(SYN_REPLY, 0, &body)
    }

    pub fn rst_stream(stream: u32, status: u32) -> Vec<u8> {
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&status.to_be_bytes());
        Self::control(RST_STREAM, 0, &body)
    }

    pub fn ping(id: u32) -> Vec<u8> {
        Self::control(PING, 0, &id.to_be_bytes())
    }

    pub fn data(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + data.len());
        out.put_u32(stream & 0x7fff_ffff);
        let flags = if fin { FLAG_FIN } else { 0 };
        out.put_u32((u32::from(flags) << 24) | data.len() as u32);
        out.extend_from_slice(data);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A client's SYN_STREAM: headers compressed with the SPDY dictionary, as Go's
    /// framer does (one zlib stream for the connection, sync-flushed per frame).
    fn syn_stream(c: &mut Compress, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            raw.extend((k.len() as u32).to_be_bytes());
            raw.extend(k.as_bytes());
            raw.extend((v.len() as u32).to_be_bytes());
            raw.extend(v.as_bytes());
        }
        let mut block = Vec::with_capacity(raw.len() + 64);
        c.compress_vec(&raw, &mut block, FlushCompress::Sync)
            .expect("compress");
        let mut body = stream.to_be_bytes().to_vec();
        body.extend([0, 0, 0, 0, 0, 0]);
        body.extend(block);
        Writer::control(SYN_STREAM, 0, &body)
    }

    #[test]
    fn reads_dictionary_compressed_headers_across_frames() {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(DICTIONARY).expect("dictionary");
        let mut buf = BytesMut::new();
        buf.extend(syn_stream(
            &mut c,
            1,
            &[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ],
        ));
        buf.extend(syn_stream(
            &mut c,
            3,
            &[("streamtype", "data"), ("port", "8080"), ("requestid", "0")],
        ));
        buf.extend(Writer::data(3, true, b"GET /"));
        buf.extend(Writer::ping(7));
        let mut r = Reader::default();
        let Some(Frame::SynStream {
            stream, headers, ..
        }) = r.next(&mut buf).expect("ok")
        else {
            panic!("a SYN_STREAM");
        };
        assert_eq!((stream, headers["streamtype"].as_str()), (1, "error"));
        let Some(Frame::SynStream {
            stream, headers, ..
        }) = r.next(&mut buf).expect("ok")
        else {
            panic!("a SYN_STREAM");
        };
        assert_eq!(
            (
                stream,
                headers["streamtype"].as_str(),
                headers["port"].as_str()
            ),
            (3, "data", "8080")
        );
        assert_eq!(
            r.next(&mut buf).expect("ok"),
            Some(Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::from_static(b"GET /")
            })
        );
        assert_eq!(r.next(&mut buf).expect("ok"), Some(Frame::Ping { id: 7 }));
        assert_eq!(r.next(&mut buf).expect("ok"), None);
    }

    #[test]
    fn our_header_blocks_are_zlib_any_reader_takes() {
        let mut w = Writer::default();
        let mut d = Decompress::new(true);
        for stream in [1u32, 3] {
            let frame = w.syn_reply(stream);
            assert_eq!(&frame[..4], &[0x80, 0x03, 0x00, 0x02]);
            assert_eq!(&frame[8..12], &stream.to_be_bytes());
            let mut out = Vec::with_capacity(64);
            d.decompress_vec(&frame[12..], &mut out, FlushDecompress::Sync)
                .expect("inflates");
            assert_eq!(out, 0u32.to_be_bytes());
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let frame = Writer::data(5, false, b"hello");
        let mut buf = BytesMut::from(&frame[..7]);
        let mut r = Reader::default();
        assert_eq!(r.next(&mut buf).expect("ok"), None);
        buf.extend_from_slice(&frame[7..]);
        assert!(matches!(
            r.next(&mut buf).expect("ok"),
            Some(Frame::Data { stream: 5, .. })
        ));
    }
}
