//! The admission exchange on a fresh connection.
//!
//! The client proves first, on the first bidirectional stream. The server reads that proof
//! and verifies it before it sends anything at all: a node without the cluster secret gets the
//! connection closed with [`CLOSE_ADMISSION_FAILED`](super::CLOSE_ADMISSION_FAILED) and never
//! learns who the server is or whom it knows. Only then does the server send its own proof,
//! which the client verifies in turn.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::Connection;
use rustls::pki_types::CertificateDer;
use weft_crypto::admission::{
    AdmissionKey, Export, Proof, Role, EXPORTER_LABEL, EXPORT_LEN, PROOF_LEN,
};
use weft_crypto::{IdentityKey, NodeId};

use super::{Error, Result};

/// A peer that passed admission.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) node: NodeId,
    pub(crate) export: Export,
    pub(crate) certificate: Arc<[u8]>,
}

pub(crate) async fn as_client(
    conn: &Connection,
    key: &AdmissionKey,
    identity: &IdentityKey,
) -> Result<Admitted> {
    let addr = conn.remote_address();
    let export = export(conn)?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::from_connection(addr, e))?;
    let ours = Proof::create(key, identity, &export, Role::Client);
    send.write_all(&ours.to_bytes())
        .await
        .map_err(|e| write_error(addr, e))?;
    send.finish()
        .map_err(|e| stream_error(addr, "admission", e))?;
    let theirs = recv
        .read_to_end(PROOF_LEN)
        .await
        .map_err(|e| read_error(addr, e))?;
    let node = Proof::from_bytes(&theirs)
        .and_then(|p| p.verify(key, &export, Role::Server))
        .map_err(|reason| Error::AdmissionFailed { addr, reason })?;
    Ok(Admitted {
        node,
        export,
        certificate: certificate(conn)?,
    })
}

pub(crate) async fn as_server(
    conn: &Connection,
    key: &AdmissionKey,
    identity: &IdentityKey,
) -> Result<Admitted> {
    let addr = conn.remote_address();
    let export = export(conn)?;
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| Error::from_connection(addr, e))?;
    let theirs = recv
        .read_to_end(PROOF_LEN)
        .await
        .map_err(|e| read_error(addr, e))?;
    let node = Proof::from_bytes(&theirs)
        .and_then(|p| p.verify(key, &export, Role::Client))
        .map_err(|reason| Error::AdmissionFailed { addr, reason })?;
    let ours = Proof::create(key, identity, &export, Role::Server);
    send.write_all(&ours.to_bytes())
        .await
        .map_err(|e| write_error(addr, e))?;
    send.finish()
        .map_err(|e| stream_error(addr, "admission", e))?;
    Ok(Admitted {
        node,
        export,
        certificate: certificate(conn)?,
    })
}

fn export(conn: &Connection) -> Result<Export> {
    let mut out = [0u8; EXPORT_LEN];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, &[])
        .map_err(|_| Error::Tls("keying material export failed".into()))?;
    Ok(out)
}

fn certificate(conn: &Connection) -> Result<Arc<[u8]>> {
    let chain = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok());
    match chain.as_deref().and_then(|c| c.first()) {
        Some(leaf) => Ok(Arc::from(leaf.as_ref())),
        None => Err(Error::Tls(format!(
            "{addr}: peer sent no certificate",
            addr = conn.remote_address()
        ))),
    }
}

fn read_error(addr: SocketAddr, e: quinn::ReadToEndError) -> Error {
    match e {
        quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(c)) => {
            Error::from_connection(addr, c)
        }
        other => stream_error(addr, "admission", other),
    }
}

fn write_error(addr: SocketAddr, e: quinn::WriteError) -> Error {
    match e {
        quinn::WriteError::ConnectionLost(c) => Error::from_connection(addr, c),
        other => stream_error(addr, "admission", other),
    }
}

pub(crate) fn stream_error(
    addr: SocketAddr,
    what: &'static str,
    e: impl std::fmt::Display,
) -> Error {
    Error::Stream {
        addr,
        what,
        reason: e.to_string(),
    }
}
