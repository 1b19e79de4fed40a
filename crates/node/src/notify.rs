//! The service manager's readiness protocol (sd_notify): one datagram of
//! `KEY=VALUE` lines to the socket in NOTIFY_SOCKET, a path or, with a
//! leading `@`, a name in the abstract namespace. Sent from here because
//! Node's datagram sockets speak UDP only.

use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=...`) to NOTIFY_SOCKET.
/// False when no service manager listens (the variable is unset).
#[napi]
pub fn sd_notify(state: String) -> Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(false) };
    let target = target.to_string_lossy().into_owned();
    let address = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&target),
    }
    .map_err(|e| Error::from_reason(format!("NOTIFY_SOCKET={target} is no socket address: {e}")))?;
    let socket = UnixDatagram::unbound().map_err(|e| Error::from_reason(format!("sd_notify: {e}")))?;
    socket
        .send_to_addr(state.as_bytes(), &address)
        .map_err(|e| Error::from_reason(format!("sd_notify to {target}: {e}")))?;
    Ok(true)
}
