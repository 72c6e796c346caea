//! A blocking netlink socket that sends one request at a time and collects its reply.
//!
//! Each kernel-backend operation opens its own socket: requests are rare (configuration changes,
//! status reads), and a socket per call keeps [`super::KernelDevice`] free of shared state.

use std::fmt::Debug;
use std::io;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

use crate::{Error, Result};

/// Large enough for any single datagram the kernel sends on a dump (it sizes them to a page or
/// `NLMSG_GOODSIZE`, well under this).
const RECV_BUFFER_LEN: usize = 64 * 1024;

pub(crate) struct NetlinkSocket {
    socket: Socket,
    sequence: u32,
    /// What is being talked to, for error messages ("generic netlink", "rtnetlink").
    what: &'static str,
}

impl NetlinkSocket {
    /// Opens and binds a socket of `protocol` (`netlink_sys::protocols::NETLINK_*`).
    pub(crate) fn open(protocol: isize, what: &'static str) -> Result<Self> {
        let mut socket =
            Socket::new(protocol).map_err(|e| Error::io(format!("opening a {what} socket"), e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::io(format!("binding a {what} socket"), e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io(format!("connecting a {what} socket"), e))?;
        Ok(Self {
            socket,
            sequence: 0,
            what,
        })
    }

    /// Sends `payload` with `NLM_F_REQUEST | NLM_F_ACK | extra_flags` and waits for the ack.
    /// Returns the messages that came before the ack (a `GET` without dump answers with one).
    pub(crate) fn request<M>(
        &mut self,
        payload: M,
        extra_flags: u16,
        context: &str,
    ) -> Result<Vec<M>>
    where
        M: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        let sequence = self.send(payload, NLM_F_REQUEST | NLM_F_ACK | extra_flags, context)?;
        self.receive(sequence, Reply::UntilAck, context)
    }

    /// Sends `payload` as a dump request and returns every message of the reply. Retries (a few
    /// times) when the kernel reports the dump was interrupted by a concurrent change.
    pub(crate) fn dump<M>(&mut self, payload: &M, context: &str) -> Result<Vec<M>>
    where
        M: NetlinkSerializable + NetlinkDeserializable + Debug + Clone,
    {
        const ATTEMPTS: usize = 5;
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let sequence = self.send(payload.clone(), NLM_F_REQUEST | NLM_F_DUMP, context)?;
            match self.receive(sequence, Reply::UntilDone, context) {
                Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EINTR) => {
                    last_error = Some(source);
                }
                other => return other,
            }
        }
        Err(Error::io(
            format!("{context}: the dump kept changing"),
            last_error.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINTR)),
        ))
    }

    fn send<M>(&mut self, payload: M, flags: u16, context: &str) -> Result<u32>
    where
        M: NetlinkSerializable + Debug,
    {
        self.sequence = self.sequence.wrapping_add(1);
        let bytes = encode(payload, flags, self.sequence);
        let sent = self
            .socket
            .send(&bytes, 0)
            .map_err(|e| Error::io(format!("{context}: sending to {}", self.what), e))?;
        if sent != bytes.len() {
            return Err(Error::io(
                format!("{context}: sending to {}", self.what),
                io::Error::new(io::ErrorKind::WriteZero, "short netlink send"),
            ));
        }
        Ok(self.sequence)
    }

    fn receive<M>(&mut self, sequence: u32, until: Reply, context: &str) -> Result<Vec<M>>
    where
        M: NetlinkDeserializable + Debug,
    {
        let mut messages = Vec::new();
        let mut buffer = vec![0u8; RECV_BUFFER_LEN];
        loop {
            let len = self
                .socket
                .recv(&mut &mut buffer[..], 0)
                .map_err(|e| Error::io(format!("{context}: receiving from {}", self.what), e))?;
            let datagram = buffer.get(..len).unwrap_or_default();
            if absorb(datagram, sequence, until, context, &mut messages)? {
                return Ok(messages);
            }
        }
    }
}

/// Takes the messages of one received datagram that answer request `sequence` into `out`.
/// Returns whether the reply is complete (ack or done seen); an error answer is an `Err`.
pub(crate) fn absorb<M>(
    datagram: &[u8],
    sequence: u32,
    until: Reply,
    context: &str,
    out: &mut Vec<M>,
) -> Result<bool>
where
    M: NetlinkDeserializable + Debug,
{
    for message in split_datagram::<M>(datagram, context)? {
        if message.header.sequence_number != sequence {
            continue; // a late answer to an earlier request
        }
        if message.header.flags & NLM_F_DUMP_INTR != 0 {
            return Err(Error::io(
                context,
                io::Error::from_raw_os_error(libc::EINTR),
            ));
        }
        match message.payload {
            NetlinkPayload::InnerMessage(inner) => out.push(inner),
            NetlinkPayload::Error(error) => match error.code {
                None if until == Reply::UntilAck => return Ok(true),
                None => {} // an ack inside a dump: keep reading until done
                Some(_) => return Err(Error::io(context, error.to_io())),
            },
            NetlinkPayload::Done(done) => {
                if done.code < 0 {
                    let errno = done.code.checked_neg().unwrap_or(libc::EIO);
                    return Err(Error::io(context, io::Error::from_raw_os_error(errno)));
                }
                return Ok(true);
            }
            NetlinkPayload::Overrun(_) => {
                return Err(Error::Netlink(format!("{context}: receive buffer overrun")))
            }
            _ => {} // Noop and anything newer: nothing to do
        }
    }
    Ok(false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    UntilAck,
    UntilDone,
}

/// The bytes of one netlink message carrying `payload`.
pub(crate) fn encode<M>(payload: M, flags: u16, sequence: u32) -> Vec<u8>
where
    M: NetlinkSerializable + Debug,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// Splits a datagram into its netlink messages, refusing any that is truncated or malformed.
pub(crate) fn split_datagram<M>(
    mut datagram: &[u8],
    context: &str,
) -> Result<Vec<NetlinkMessage<M>>>
where
    M: NetlinkDeserializable + Debug,
{
    let mut messages = Vec::new();
    while !datagram.is_empty() {
        let buffer = NetlinkBuffer::new_checked(datagram)
            .map_err(|e| Error::Netlink(format!("{context}: bad netlink header: {e}")))?;
        let len = buffer.length() as usize;
        let one = datagram.get(..len).unwrap_or_default();
        let message = NetlinkMessage::<M>::deserialize(one)
            .map_err(|e| Error::Netlink(format!("{context}: {e}")))?;
        messages.push(message);
        // Messages are aligned to 4 bytes; the last one may end without padding.
        let next = len.saturating_add(3) & !3;
        datagram = datagram.get(next..).unwrap_or_default();
    }
    Ok(messages)
}
