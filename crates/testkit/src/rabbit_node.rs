//! A private RabbitMQ node for fault tests: its own node name, ports and data directory, so it
//! can be stopped and started without disturbing the shared broker other tests use.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::tls::TestCa;

/// A `rabbitmq-server` started by a test (killed when dropped).
pub struct RabbitNode {
    pub node: String,
    pub port: u16,
    /// The AMQPS port of a node started with [`RabbitNode::start_tls`].
    pub tls_port: Option<u16>,
    /// The stream protocol's port of a node started with [`RabbitNode::start_with_stream`].
    pub stream_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

fn rabbit_bin(name: &str) -> PathBuf {
    let lib = PathBuf::from("/usr/lib/rabbitmq/bin").join(name);
    if lib.exists() {
        lib
    } else {
        PathBuf::from(name)
    }
}

/// A command run as the `rabbitmq` user when the tests run as root (RabbitMQ refuses root and
/// needs that user's Erlang cookie), with the node's environment.
fn rabbit_command(program: &str, env: &[(String, String)]) -> Command {
    let mut cmd = if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "rabbitmq", "--", "env", "HOME=/var/lib/rabbitmq"]);
        for (k, v) in env {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.arg(rabbit_bin(program));
        cmd
    } else {
        let mut cmd = Command::new(rabbit_bin(program));
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    };
    cmd.stdin(Stdio::null());
    cmd
}

impl RabbitNode {
    /// Starts a node and waits until it accepts AMQP connections.
    pub async fn start() -> RabbitNode {
        Self::start_with("").await
    }

    /// Starts a node with further `rabbitmq.conf` lines (e.g. `max_message_size = 65536`).
    pub async fn start_with(config: &str) -> RabbitNode {
        Self::start_node(config, "", None).await
    }

    /// Starts a node that also listens for AMQPS with a server certificate of `ca` (for
    /// `localhost` and `127.0.0.1`), asks clients for a certificate (without requiring one) and
    /// accepts SASL EXTERNAL, the certificate's common name being the user name.
    pub async fn start_tls(ca: &TestCa) -> RabbitNode {
        let server = ca.server("rabbit", &["localhost", "127.0.0.1"]);
        ca.give_to("rabbitmq");
        let tls_port = free_port();
        let config = format!(
            "listeners.ssl.default = {tls_port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = false\n\
             auth_mechanisms.1 = PLAIN\n\
             auth_mechanisms.2 = AMQPLAIN\n\
             auth_mechanisms.3 = EXTERNAL\n\
             ssl_cert_login_from = common_name\n",
            ca.cert().display(),
            server.cert.display(),
            server.key.display()
        );
        Self::start_node(&config, "rabbitmq_auth_mechanism_ssl", Some(tls_port)).await
    }

    /// Starts a node that also speaks the stream protocol (plugin `rabbitmq_stream`) on a port of
    /// its own, advertised as `127.0.0.1` (see [`RabbitNode::stream_url`]).
    pub async fn start_with_stream() -> RabbitNode {
        Self::start_streaming("").await
    }

    /// [`RabbitNode::start_with_stream`] with further plugins (comma-separated Erlang atoms).
    async fn start_streaming(plugins: &str) -> RabbitNode {
        let stream_port = free_port();
        let config = format!(
            "stream.listeners.tcp.1 = {stream_port}\n\
             stream.advertised_host = 127.0.0.1\n\
             stream.advertised_port = {stream_port}\n"
        );
        let plugins =
            if plugins.is_empty() { "rabbitmq_stream".to_owned() } else { format!("rabbitmq_stream,{plugins}") };
        let mut node = Self::start_node(&config, &plugins, None).await;
        node.stream_port = Some(stream_port);
        node
    }

    /// `rabbitmq-stream://guest:guest@127.0.0.1:<port>/%2f` of a node started with
    /// [`RabbitNode::start_with_stream`].
    pub fn stream_url(&self) -> Option<String> {
        self.stream_port.map(|port| format!("rabbitmq-stream://guest:guest@127.0.0.1:{port}/%2f"))
    }

    /// Starts a node with these plugins enabled (comma-separated Erlang atoms).
    pub async fn start_with_plugins(plugins: &str) -> RabbitNode {
        Self::start_node("", plugins, None).await
    }

    async fn start_node(config: &str, plugins: &str, tls_port: Option<u16>) -> RabbitNode {
        let dir = tempfile::Builder::new().prefix("pgevents-rabbit-").tempdir().expect("temp dir");
        let port = free_port();
        let node = format!("pgevents_test_{port}@localhost");
        std::fs::write(dir.path().join("enabled_plugins"), format!("[{plugins}].\n")).expect("plugins file");
        std::fs::write(dir.path().join("rabbitmq.conf"), format!("loopback_users = none\n{config}\n"))
            .expect("config file");
        if is_root() {
            let status = std::process::Command::new("chown").args(["-R", "rabbitmq:rabbitmq"]).arg(dir.path()).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the node's directory");
        }
        let env = Self::env_for(&node, port, dir.path());
        let log = std::fs::File::create(std::env::temp_dir().join(format!("pgevents-rabbit-{port}.log"))).expect("log");
        let child = rabbit_command("rabbitmq-server", &env)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start rabbitmq-server");
        let broker = RabbitNode { node, port, tls_port, stream_port: None, dir, child };
        broker.wait_up(Duration::from_secs(90)).await;
        broker
    }

    fn env_for(node: &str, port: u16, dir: &std::path::Path) -> Vec<(String, String)> {
        let path = |name: &str| dir.join(name).display().to_string();
        vec![
            ("RABBITMQ_NODENAME".into(), node.to_owned()),
            ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT".into(), port.to_string()),
            ("RABBITMQ_DIST_PORT".into(), free_port().to_string()),
            ("RABBITMQ_MNESIA_BASE".into(), path("mnesia")),
            ("RABBITMQ_LOG_BASE".into(), path("log")),
            ("RABBITMQ_PID_FILE".into(), path("pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), path("enabled_plugins")),
            ("RABBITMQ_CONFIG_FILE".into(), path("rabbitmq")),
        ]
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn wait_up(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(url) = self.url().parse() {
                if let Ok(connection) = pgevents_amqp::connect(&url, "pgevents test probe").await {
                    let _ = connection.close().await;
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the private RabbitMQ node did not start within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Runs `rabbitmqctl -n <node> <args>` (e.g. `set_disk_free_limit 1000GB` to raise a disk
    /// alarm) and asserts that it succeeded.
    pub async fn ctl(&self, args: &[&str]) {
        let status = rabbit_command("rabbitmqctl", &[])
            .args(["-n", &self.node])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("rabbitmqctl");
        assert!(status.success(), "rabbitmqctl {args:?} failed");
    }

    /// What `rabbitmqctl -q -n <node> <args>` prints (e.g. `list_connections user frame_max`).
    pub async fn ctl_output(&self, args: &[&str]) -> String {
        let out = rabbit_command("rabbitmqctl", &[])
            .args(["-q", "-n", &self.node])
            .args(args)
            .output()
            .await
            .expect("rabbitmqctl");
        assert!(out.status.success(), "rabbitmqctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the broker (every connection closed, the port refused), keeping its data.
    pub async fn stop_app(&self) {
        self.ctl(&["stop_app"]).await;
    }

    /// Starts it again and waits until it accepts connections.
    pub async fn start_app(&self) {
        self.ctl(&["start_app"]).await;
        self.wait_up(Duration::from_secs(60)).await;
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// A RabbitMQ cluster of private nodes on this machine (each with its own name, ports and data
/// directory), joined with `rabbitmqctl join_cluster`; every node is killed when dropped.
pub struct RabbitCluster {
    pub nodes: Vec<RabbitNode>,
}

impl RabbitCluster {
    /// Starts `size` nodes (with the consistent-hash exchange plugin) and joins them to the
    /// first.
    pub async fn start(size: usize) -> RabbitCluster {
        Self::start_nodes(size, false).await
    }

    /// [`RabbitCluster::start`] with nodes that also speak the stream protocol, each on a port of
    /// its own ([`RabbitNode::stream_url`]), advertised as `127.0.0.1`.
    pub async fn start_with_stream(size: usize) -> RabbitCluster {
        Self::start_nodes(size, true).await
    }

    async fn start_nodes(size: usize, stream: bool) -> RabbitCluster {
        const PLUGINS: &str = "rabbitmq_consistent_hash_exchange";
        let mut starting = tokio::task::JoinSet::new();
        for _ in 0..size {
            if stream {
                starting.spawn(RabbitNode::start_streaming(PLUGINS));
            } else {
                starting.spawn(RabbitNode::start_with_plugins(PLUGINS));
            }
        }
        let mut nodes = Vec::new();
        while let Some(node) = starting.join_next().await {
            nodes.push(node.expect("a node started"));
        }
        let seed = nodes[0].node.clone();
        for node in &nodes[1..] {
            node.ctl(&["stop_app"]).await;
            node.ctl(&["reset"]).await;
            node.ctl(&["join_cluster", &seed]).await;
            node.start_app().await;
        }
        let cluster = RabbitCluster { nodes };
        let running = cluster.nodes[0].ctl_output(&["eval", "length(rabbit_nodes:all_running())."]).await;
        assert_eq!(running.trim(), size.to_string(), "every node joined the cluster");
        cluster
    }

    /// Every node's URL, comma-separated (the form `--rabbitmq-url` takes).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(RabbitNode::url).collect::<Vec<_>>().join(",")
    }

    /// The node whose AMQP port is `port`.
    pub fn by_port(&self, port: u16) -> Option<&RabbitNode> {
        self.nodes.iter().find(|n| n.port == port)
    }

    /// The node holding the connection named `name` (as the client named it), asked of `via`.
    pub async fn node_of_connection(&self, via: &RabbitNode, name: &str) -> Option<&RabbitNode> {
        let listed = via.ctl_output(&["list_connections", "port", "client_properties"]).await;
        listed
            .lines()
            .filter(|line| line.contains(&format!("\"{name}\"")))
            .find_map(|line| line.split_whitespace().next()?.parse::<u16>().ok())
            .and_then(|port| self.by_port(port))
    }

    /// The node that leads quorum queue or stream `queue`, asked of `via`.
    pub async fn leader_of(&self, via: &RabbitNode, queue: &str) -> Option<&RabbitNode> {
        let listed = via.ctl_output(&["list_queues", "name", "leader"]).await;
        let leader = listed.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next()? == queue).then(|| fields.next().map(str::to_owned))?
        })?;
        self.nodes.iter().find(|n| n.node == leader)
    }

    /// A node other than `node`, to ask while `node` is stopped.
    pub fn other_than(&self, node: &RabbitNode) -> &RabbitNode {
        self.nodes.iter().find(|n| n.node != node.node).expect("a cluster has two nodes or more")
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        // runuser's child, the Erlang VM, outlives it, and its command line does not name the
        // node: stop it by the pid it wrote (the directory is still there until after this).
        let pid = std::fs::read_to_string(self.dir.path().join("pid")).unwrap_or_default();
        let pid = pid.trim();
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            let _ = std::process::Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}
