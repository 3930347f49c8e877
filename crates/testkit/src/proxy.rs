//! A TCP proxy that can cut the network: the fault suite puts it between the producer and
//! RabbitMQ or PostgreSQL. `cut` closes every forwarded connection and refuses new ones (the
//! port stops listening); `restore` listens again on the same port. `freeze` keeps every
//! connection open but forwards nothing (a peer gone silent), until `thaw`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A proxy forwarding `127.0.0.1:<port>` to a target.
pub struct FaultProxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    frozen: Arc<AtomicBool>,
}

#[derive(Default)]
struct ProxyState {
    acceptor: Option<JoinHandle<()>>,
    connections: Vec<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = FaultProxy {
            addr,
            target,
            state: Arc::new(Mutex::new(ProxyState::default())),
            frozen: Arc::new(AtomicBool::new(false)),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (target, state, frozen) = (self.target, self.state.clone(), self.frozen.clone());
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let frozen = frozen.clone();
                let task = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::select! {
                            _ = pump(client_read, server_write, frozen.clone()) => {}
                            _ = pump(server_read, client_write, frozen) => {}
                        }
                    }
                });
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                state.connections.retain(|c| !c.is_finished());
                state.connections.push(task);
            }
        });
        self.state.lock().unwrap_or_else(|e| e.into_inner()).acceptor = Some(acceptor);
    }

    /// Closes every connection through the proxy and stops accepting (connects are refused).
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(acceptor) = state.acceptor.take() {
            acceptor.abort();
        }
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    /// Keeps every connection open but forwards nothing: to both ends the other has gone silent.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Forwards again what `freeze` held back, and what follows.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Accepts connections again, on the same port.
    pub async fn restore(&self) {
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the proxy could not listen on {} again", self.addr);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` to `to`, holding the bytes back while `frozen`.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, frozen: Arc<AtomicBool>) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
