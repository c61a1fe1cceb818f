//! The record format: `MAGIC u32 | len u32 | crc32 u32 | payload`, little endian, the
//! payload an encoded [`RawDelivery`]; and reading a segment's intact records.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::ingest::delivery::{DeviceDoor, RawDelivery, Sender};
use crate::token::Token;

const MAGIC: u32 = 0x5452_5350; // "TRSP"
pub(super) const HEADER_LEN: usize = 12;
/// Version 1 holds a destination delivery (and is still what one is written as, so that a
/// spool replays after a rollback too); version 2 a device uplink, naming its sender.
const FORMAT_VERSION: u8 = 2;
const DESTINATION_ONLY: u8 = 1;
/// Sender kinds of format 2 (0, a destination, is only ever read).
const SENDER_DESTINATION: u8 = 0;
const SENDER_M2M: u8 = 1;
const SENDER_IP: u8 = 2;

/// Every intact record of a segment, stopping at the first torn or corrupt one.
pub(super) fn read_segment(path: &Path) -> std::io::Result<Vec<RawDelivery>> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let mut header = [0u8; HEADER_LEN];
        match read_full(&mut reader, &mut header)? {
            0 => break,
            n if n < HEADER_LEN => {
                tracing::warn!(segment = %path.display(), offset, "torn record header at the end of a spool segment; skipped");
                break;
            }
            _ => {}
        }
        let magic = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if magic != MAGIC {
            tracing::warn!(segment = %path.display(), offset, "corrupt spool record; rest of segment skipped");
            break;
        }
        let mut payload = vec![0u8; len];
        if read_full(&mut reader, &mut payload)? < len || crc32fast::hash(&payload) != crc {
            tracing::warn!(segment = %path.display(), offset, "torn or corrupt record at the end of a spool segment; skipped");
            break;
        }
        match decode(&payload) {
            Some(raw) => out.push(raw),
            None => {
                tracing::warn!(segment = %path.display(), offset, "undecodable spool record skipped")
            }
        }
        offset += (HEADER_LEN + len) as u64;
    }
    Ok(out)
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

pub(super) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

pub(super) fn encode(d: &RawDelivery) -> Vec<u8> {
    let headers = serde_json::to_vec(&d.headers).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = Vec::with_capacity(96 + headers.len() + d.body.len());
    match &d.sender {
        // Byte for byte as before: a spool written now still replays after a rollback.
        Sender::Destination { id, bind_plug } => {
            out.push(DESTINATION_ONLY);
            out.extend_from_slice(id.as_bytes());
            match bind_plug {
                Some(plug) => {
                    out.push(1);
                    out.extend_from_slice(plug.as_bytes());
                }
                None => out.push(0),
            }
        }
        Sender::Device {
            key_id,
            urn_key,
            door,
        } => {
            out.push(FORMAT_VERSION);
            out.push(match door {
                DeviceDoor::M2m => SENDER_M2M,
                DeviceDoor::Ip => SENDER_IP,
            });
            out.extend_from_slice(key_id.as_bytes());
            out.extend_from_slice(&(urn_key.len() as u32).to_le_bytes());
            out.extend_from_slice(urn_key.as_bytes());
        }
    }
    out.extend_from_slice(&d.token.0);
    out.extend_from_slice(&d.received_at.timestamp_micros().to_le_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    out.extend_from_slice(&headers);
    out.extend_from_slice(&(d.body.len() as u32).to_le_bytes());
    out.extend_from_slice(&d.body);
    out
}

fn decode(mut p: &[u8]) -> Option<RawDelivery> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if p.len() < n {
            return None;
        }
        let (head, tail) = p.split_at(n);
        *p = tail;
        Some(head)
    }
    let kind = match take(&mut p, 1)?[0] {
        DESTINATION_ONLY => SENDER_DESTINATION,
        FORMAT_VERSION => take(&mut p, 1)?[0],
        _ => return None,
    };
    let id = Uuid::from_slice(take(&mut p, 16)?).ok()?;
    let sender = match kind {
        SENDER_DESTINATION => Sender::Destination {
            id,
            bind_plug: match take(&mut p, 1)?[0] {
                0 => None,
                _ => Some(Uuid::from_slice(take(&mut p, 16)?).ok()?),
            },
        },
        SENDER_M2M | SENDER_IP => {
            let len = u32::from_le_bytes(take(&mut p, 4)?.try_into().ok()?) as usize;
            Sender::Device {
                key_id: id,
                urn_key: String::from_utf8(take(&mut p, len)?.to_vec()).ok()?,
                door: if kind == SENDER_M2M {
                    DeviceDoor::M2m
                } else {
                    DeviceDoor::Ip
                },
            }
        }
        _ => return None,
    };
    let token = Token(take(&mut p, 32)?.try_into().ok()?);
    let micros = i64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
    let received_at = DateTime::<Utc>::from_timestamp_micros(micros)?;
    let len = u32::from_le_bytes(take(&mut p, 4)?.try_into().ok()?) as usize;
    let headers = serde_json::from_slice(take(&mut p, len)?).ok()?;
    let len = u32::from_le_bytes(take(&mut p, 4)?.try_into().ok()?) as usize;
    let body = Bytes::copy_from_slice(take(&mut p, len)?);
    Some(RawDelivery {
        sender,
        token,
        received_at,
        body,
        headers,
    })
}
