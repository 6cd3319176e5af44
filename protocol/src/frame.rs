//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes of a postcard-encoded
//! message. The length is checked against [`MAX_FRAME_BYTES`] before anything is allocated, so a
//! peer cannot make us buffer more than one frame's worth.

use crate::ProtocolError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest frame either side accepts: a 1 MiB file chunk plus headroom.
pub const MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;

/// Encodes `message` into one frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = vec![0u8; 4];
    let frame = postcard::to_extend(message, std::mem::take(&mut frame))
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let payload_len = frame.len() - 4;
    if payload_len > MAX_FRAME_BYTES {
        return Err(ProtocolError::FrameTooLarge {
            size: payload_len,
            limit: MAX_FRAME_BYTES,
        });
    }
    let mut frame = frame;
    frame[..4].copy_from_slice(&(payload_len as u32).to_be_bytes());
    Ok(frame)
}

/// Decodes one payload (without its length prefix).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtocolError> {
    postcard::from_bytes(payload).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Writes one frame to a QUIC send stream.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    message: &T,
) -> Result<(), ProtocolError> {
    let frame = encode(message)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the peer finished the stream cleanly between frames.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, ProtocolError> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(ProtocolError::Malformed(
                "stream ended inside a frame header".into(),
            ))
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(ProtocolError::Read(e.to_string())),
    }
    let size = u32::from_be_bytes(header) as usize;
    if size > MAX_FRAME_BYTES {
        return Err(ProtocolError::FrameTooLarge {
            size,
            limit: MAX_FRAME_BYTES,
        });
    }
    let mut payload = vec![0u8; size];
    match recv.read_exact(&mut payload).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(ProtocolError::Malformed(
                "stream ended inside a frame".into(),
            ))
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(ProtocolError::Read(e.to_string())),
    }
    decode(&payload).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Request;

    #[test]
    fn frame_carries_its_length() {
        let frame = encode(&Request::Status).expect("encode");
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        let back: Request = decode(&frame[4..]).expect("decode");
        assert!(matches!(back, Request::Status));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for garbage in [&[0xffu8, 0xff, 0xff, 0xff, 0xff][..], &[200, 1, 2], &[]] {
            assert!(matches!(
                decode::<Request>(garbage),
                Err(ProtocolError::Malformed(_))
            ));
        }
    }

    #[test]
    fn huge_claimed_vector_does_not_allocate_it() {
        // Variant index of ListModels-like request followed by a varint claiming 2^60 elements.
        let mut payload = vec![0u8];
        payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        let _ = decode::<Request>(&payload);
    }
}
