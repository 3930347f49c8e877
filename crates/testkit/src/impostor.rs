//! A server that pretends to be PostgreSQL to a replication client, as a man in the middle would:
//! it answers TLS with a certificate of its own (a client with `sslmode=require` does not check
//! it), offers SCRAM-SHA-256-PLUS, and then says "authenticated" without ever proving it knows
//! the password (it cannot: it does not). A client that accepts that streams whatever the
//! impostor sends.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::tls::{server_tls_acceptor, CertPair};

/// When the impostor declares the client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImpostorPlay {
    /// Right after the client's first SCRAM message.
    OkAfterClientFirst,
    /// After a server-first message and the client's proof, without a server-final message.
    OkWithoutServerFinal,
}

/// The impostor, listening until dropped.
pub struct ImpostorPg {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ImpostorPg {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_message<S: AsyncReadExt + Unpin>(stream: &mut S, typed: bool) -> std::io::Result<Vec<u8>> {
    if typed {
        stream.read_u8().await?;
    }
    let length = stream.read_u32().await? as usize;
    let mut body = vec![0u8; length.saturating_sub(4)];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

fn authentication(code: u32, data: &[u8]) -> Vec<u8> {
    let mut out = vec![b'R'];
    out.extend_from_slice(&(8 + data.len() as u32).to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(data);
    out
}

impl ImpostorPg {
    pub async fn start(certificate: &CertPair, play: ImpostorPlay) -> ImpostorPg {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the impostor");
        let addr = listener.local_addr().expect("the impostor's address");
        let acceptor = Arc::new(server_tls_acceptor(certificate));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = Self::pretend(stream, &acceptor, play).await;
                });
            }
        });
        ImpostorPg { addr, task }
    }

    async fn pretend(
        mut stream: tokio::net::TcpStream,
        acceptor: &tokio_rustls::TlsAcceptor,
        play: ImpostorPlay,
    ) -> std::io::Result<()> {
        read_message(&mut stream, false).await?; // SSLRequest
        stream.write_all(b"S").await?;
        let mut tls = acceptor.accept(stream).await?;
        read_message(&mut tls, false).await?; // the startup message
        tls.write_all(&authentication(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")).await?;
        let initial = read_message(&mut tls, true).await?;
        if play == ImpostorPlay::OkWithoutServerFinal {
            // ... mechanism\0, length, then the client-first-message "p=...,,n=,r=NONCE".
            let text = String::from_utf8_lossy(&initial).into_owned();
            let nonce = text.rsplit("r=").next().unwrap_or_default().trim_end_matches('\0').to_owned();
            let server_first = format!("r={nonce}impostor,s=c2FsdHNhbHQ=,i=4096");
            tls.write_all(&authentication(11, server_first.as_bytes())).await?;
            read_message(&mut tls, true).await?; // the client's proof
        }
        tls.write_all(&authentication(0, &[])).await?;
        // ReadyForQuery, for a client that believed it.
        tls.write_all(&[b'Z', 0, 0, 0, 5, b'I']).await?;
        tls.flush().await?;
        let mut rest = [0u8; 256];
        let _ = tls.read(&mut rest).await;
        Ok(())
    }
}
