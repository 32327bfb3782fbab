//! Datagram bytes to a message, pure: no socket, no fd touched, so the
//! fuzz target runs it alone. Checks every cap before it parses.

use super::error::CtlError;
use super::messages::Message;
use crate::limits::{MAX_FDS, MAX_MSG};
use serde::Deserialize;

/// What one datagram says: a whole message, or that the message is in the
/// blob (the last fd attached) of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<M> {
    Message(M),
    Blob { len: usize },
}

/// The datagram of a blob: `{"msg":"blob","len":N}`, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobHead {
    msg: BlobTag,
    len: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum BlobTag {
    Blob,
}

/// Decode one message body (an inline datagram or a blob's contents) that
/// arrived with `fd_count` fds. Pure: no I/O, no fds touched (the fuzz
/// target's entry point, with [`decode_frame`]).
pub fn decode<M: Message>(body: &[u8], fd_count: usize) -> Result<M, CtlError> {
    if body.len() > M::MAX_BODY {
        return Err(CtlError::TooLarge(body.len()));
    }
    if fd_count > MAX_FDS {
        return Err(CtlError::TooManyFds);
    }
    let msg: M = serde_json::from_slice(body).map_err(|e| CtlError::Bad(e.to_string()))?;
    let expected = msg.fd_count();
    if expected != fd_count {
        return Err(CtlError::FdCount {
            expected,
            got: fd_count,
        });
    }
    Ok(msg)
}

/// Decode one datagram that arrived with `fd_count` fds: a message, or a
/// blob header (then the last fd is the blob and the message's own fds
/// are the others). Pure, like [`decode`].
pub fn decode_frame<M: Message>(datagram: &[u8], fd_count: usize) -> Result<Frame<M>, CtlError> {
    if datagram.len() > MAX_MSG {
        return Err(CtlError::TooLarge(datagram.len()));
    }
    // Tried first: a message is never a blob header (no type has a
    // "blob" variant), and serde stops at the first field that is not
    // the header's, so an ordinary message costs next to nothing here.
    if let Ok(h) = serde_json::from_slice::<BlobHead>(datagram) {
        let BlobTag::Blob = h.msg;
        if fd_count == 0 {
            return Err(CtlError::Blob("blob header without its memfd".into()));
        }
        if fd_count > MAX_FDS {
            return Err(CtlError::TooManyFds);
        }
        let len = usize::try_from(h.len).unwrap_or(usize::MAX);
        if len > M::MAX_BODY {
            return Err(CtlError::TooLarge(len));
        }
        return Ok(Frame::Blob { len });
    }
    decode(datagram, fd_count).map(Frame::Message)
}

/// The datagram that announces a blob of `len` bytes (what
/// [`decode_frame`] reads back as [`Frame::Blob`]).
pub(super) fn blob_head(len: usize) -> String {
    format!(r#"{{"msg":"blob","len":{len}}}"#)
}
