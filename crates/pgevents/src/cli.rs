//! The command line: one binary, subcommands, every option also an environment variable.

use crate::secret_arg::SecretArg;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::logging::LogFormat;
use crate::pg_args::PgArgs;

#[derive(Debug, Parser)]
#[command(
    name = "pgevents",
    version,
    about = "Change data capture from PostgreSQL to RabbitMQ",
    propagate_version = true
)]
pub struct Cli {
    /// Log format (logs go to stderr)
    #[arg(long, env = "PGEVENTS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// TOML file with settings (keys are the long option names; [producer] etc. for one subcommand); flags and environment variables win over it
    #[arg(long, env = "PGEVENTS_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Parsed once at start, so the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream every INSERT/UPDATE/DELETE/TRUNCATE from a logical replication slot to a RabbitMQ topic exchange
    Producer(ProducerArgs),
    /// Print the events arriving on the exchange (one per line on stdout)
    #[command(name = "consumer_debug", visible_alias = "event_logger", alias = "consumer-debug")]
    ConsumerDebug(ConsumerDebugArgs),
    /// Push events to browsers and apps over Server-Sent Events: replay by Last-Event-ID from a RabbitMQ stream, JWT grants down to a row
    Serve(ServeArgs),
    /// Check the producer's settings against PostgreSQL and RabbitMQ (wal_level, role, tables, publication, slot, broker) without changing anything
    Check(CheckArgs),
    /// Manage the rule tables (schema pgevents) that turn events into work
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Turn events into work: match them against the rules, run sync actions, queue async ones
    Worker(WorkerArgs),
    /// Run the actions queued by workers (async work items)
    #[command(name = "action-runner", alias = "action_runner")]
    ActionRunner(ActionRunnerArgs),
    /// Send dead jobs from the dead-letter queue back to the action runners, with a fresh attempt budget
    #[command(name = "requeue-dead")]
    RequeueDead(RequeueDeadArgs),
    /// Backfill tables while streaming (no lock, no long transaction), show backfills, or cancel one
    Snapshot(SnapshotArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["table", "status", "cancel"])))]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub pg: PgArgs,
    /// Ask the producer to backfill this table (schema.table; repeat for several): its rows are published as R events
    #[arg(long)]
    pub table: Vec<String>,
    /// Only the producer of this slot takes the request [default: whichever producer streams the table]
    #[arg(long)]
    pub slot: Option<String>,
    /// A partial backfill: only the rows for which this SQL condition on the row holds (e.g. "updated_at > now() - interval '7 days'"); it runs with the rights of the role asking
    #[arg(long = "where", requires = "table")]
    pub r#where: Option<String>,
    /// Show the latest backfills: status, rows done, estimate, rate, time left
    #[arg(long)]
    pub status: bool,
    /// Cancel the queued or running backfill with this id
    #[arg(long)]
    pub cancel: Option<i64>,
}

#[derive(Debug, Args)]
pub struct RequeueDeadArgs {
    #[command(flatten)]
    pub rabbit: RabbitUrlArgs,
    /// Only the jobs of this work item [default: every job]
    #[arg(long)]
    pub work_item: Option<String>,
    /// Jobs to move at most
    #[arg(long, default_value_t = 10_000)]
    pub limit: u64,
    #[command(flatten)]
    pub topology: WorkTopologyArgs,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Create or upgrade the rule tables (idempotent: applies only missing migrations)
    Install(RulesInstallArgs),
    /// Check every rule as the worker will run it: its owner, that its text parses as one statement in its owner's session (nothing is run), that its owner may use its action; exit 1 when one cannot run
    Check(RulesInstallArgs),
}

#[derive(Debug, Args)]
pub struct RulesInstallArgs {
    #[command(flatten)]
    pub pg: PgArgs,
}

#[derive(Debug, Clone, Args)]
pub struct WorkTopologyArgs {
    /// Topic exchange for async jobs (routing key: the action name)
    #[arg(long, env = "PGEVENTS_WORK_EXCHANGE", default_value = "pgevents.work")]
    pub work_exchange: String,
    /// Durable queue the action runners share
    #[arg(long, env = "PGEVENTS_WORK_QUEUE", default_value = "pgevents.actions")]
    pub work_queue: String,
    /// Topic exchange for jobs that failed for good and unreadable messages
    #[arg(long, env = "PGEVENTS_DEAD_LETTER_EXCHANGE", default_value = "pgevents.dead")]
    pub dead_letter_exchange: String,
    /// Durable queue keeping what reaches the dead-letter exchange
    #[arg(long, env = "PGEVENTS_DEAD_LETTER_QUEUE", default_value = "pgevents.dead")]
    pub dead_letter_queue: String,
    /// File holding the key (32 bytes or more) work messages are signed with: workers sign, action runners and requeue-dead refuse what it did not sign [default: unsigned, with a warning]
    #[arg(long = "work-key-file", env = "PGEVENTS_WORK_KEY_FILE")]
    pub work_key_file: Option<std::path::PathBuf>,
    /// Type of the queues declared here (the worker's, the work and the dead-letter queue): quorum for a RabbitMQ cluster (replicated; a queue's type cannot change once it exists)
    #[arg(long = "queue-type", env = "PGEVENTS_QUEUE_TYPE", value_enum, default_value_t = QueueTypeArg::Classic)]
    pub queue_type: QueueTypeArg,
}

/// `--queue-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueTypeArg {
    Classic,
    Quorum,
}

impl From<QueueTypeArg> for pgevents_amqp::QueueType {
    fn from(arg: QueueTypeArg) -> pgevents_amqp::QueueType {
        match arg {
            QueueTypeArg::Classic => pgevents_amqp::QueueType::Classic,
            QueueTypeArg::Quorum => pgevents_amqp::QueueType::Quorum,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ActionArgs {
    /// Base URL for HTTP actions whose URL starts with {base_url} [default: the base_url row of pgevents.setting]
    #[arg(long, env = "PGEVENTS_BASE_URL")]
    pub base_url: Option<String>,
    /// Jobs (worker: events) handled at once; with 1 the worker keeps the events' order
    #[arg(long, env = "PGEVENTS_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Messages RabbitMQ sends ahead of acknowledgements [default: twice --concurrency; for the worker at least --concurrency times --batch-size]
    #[arg(long, env = "RABBITMQ_PREFETCH")]
    pub prefetch: Option<u16>,
    /// Seconds between rule reloads when no change notification arrives
    #[arg(long = "rules-refresh", env = "PGEVENTS_RULES_REFRESH", default_value_t = 60)]
    pub rules_refresh_secs: u64,
    /// Milliseconds the database's yes to "may this rule's owner read the columns this event carries" is reused for events of the same table and columns before it is asked again (0: asked for every event); a no is never reused
    #[arg(long = "access-recheck-ms", env = "PGEVENTS_ACCESS_RECHECK_MS", default_value_t = 1000)]
    pub access_recheck_ms: u64,
    /// Hosts (api.example.com, *.example.com) and networks (10.0.0.0/8, 203.0.113.7) HTTP actions may call, comma-separated [default: anywhere, with a warning]
    #[arg(long = "http-allow", env = "PGEVENTS_HTTP_ALLOW", value_delimiter = ',')]
    pub http_allow: Vec<String>,
    /// PEM file of CA certificates HTTP actions trust besides the Mozilla roots
    #[arg(long = "http-ca-file", env = "PGEVENTS_HTTP_CA_FILE")]
    pub http_ca_file: Option<std::path::PathBuf>,
    /// Directory of secret files for {{secret.NAME}} in HTTP actions (file NAME holds the value); PGEVENTS_SECRET_NAME variables work too
    #[arg(long = "secrets-dir", env = "PGEVENTS_SECRETS_DIR")]
    pub secrets_dir: Option<std::path::PathBuf>,
    /// Proxy for HTTP actions (http://host:port); without it the system's proxy variables (HTTP_PROXY, HTTPS_PROXY) are ignored, so that --http-allow sees every destination
    #[arg(long = "http-proxy", env = "PGEVENTS_HTTP_PROXY")]
    pub http_proxy: Option<SecretArg>,
    /// Longest time a work item's filter or work_item_query may run, in milliseconds (statement_timeout); longer is a failed run, recorded
    #[arg(long = "rule-timeout-ms", env = "PGEVENTS_RULE_TIMEOUT_MS", default_value_t = 10_000)]
    pub rule_timeout_ms: u64,
    /// Parameters rows a work item's query may return for one event (more is a failed run, recorded)
    #[arg(long = "max-parameter-rows", env = "PGEVENTS_MAX_PARAMETER_ROWS", default_value_t = 10_000)]
    pub max_parameter_rows: usize,
    /// Bytes of parameters (as JSON) a work item's query may return for one event
    #[arg(long = "max-parameter-bytes", env = "PGEVENTS_MAX_PARAMETER_BYTES", default_value_t = 16 << 20)]
    pub max_parameter_bytes: usize,
    /// Deliveries of a message that keeps failing (an outage excepted: that is waited out) before it goes to the dead-letter exchange
    #[arg(long = "max-deliveries", env = "PGEVENTS_MAX_DELIVERIES", default_value_t = 10)]
    pub max_deliveries: u32,
    /// Connections to the database per rule owner (each rule runs in a session of the role that wrote it) [default: --concurrency]
    #[arg(long = "owner-connections", env = "PGEVENTS_OWNER_CONNECTIONS")]
    pub owner_connections: Option<usize>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub pg: PgArgs,
    #[command(flatten)]
    pub rabbit: RabbitArgs,
    /// The worker's durable queue on the events exchange; workers on one queue share the events
    #[arg(long = "queue-name", env = "RABBITMQ_QUEUE_NAME", default_value = "pgevents.worker")]
    pub queue_name: String,
    /// Binding keys of the queue, comma-separated
    #[arg(long = "binding-keys", env = "RABBITMQ_BINDING_KEYS", value_delimiter = ',', default_value = "#")]
    pub binding_keys: Vec<String>,
    /// Events already waiting that are handled together, at most (sync SQL work: one round trip to PostgreSQL per owner for their filters and queries, one transaction per owner for their actions; anything else, or anything that fails, runs alone); 1: one event at a time. The prefetch then defaults to --concurrency times this
    #[arg(long = "batch-size", env = "PGEVENTS_BATCH_SIZE", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub batch_size: u16,
    #[command(flatten)]
    pub actions: ActionArgs,
    #[command(flatten)]
    pub topology: WorkTopologyArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

#[derive(Debug, Args)]
pub struct ActionRunnerArgs {
    #[command(flatten)]
    pub pg: PgArgs,
    #[command(flatten)]
    pub rabbit: RabbitUrlArgs,
    #[command(flatten)]
    pub actions: ActionArgs,
    #[command(flatten)]
    pub topology: WorkTopologyArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RabbitUrlArgs {
    /// RabbitMQ URL; for a cluster, one per node (repeat the option, or separate them with commas):
    /// the list is shuffled at start, and a client whose node fails connects to the next
    #[arg(
        long = "rabbitmq-url",
        env = "RABBITMQ_URL",
        alias = "rabbitmq_url",
        default_value = "amqp://guest:guest@localhost:5672/%2f",
        hide_env_values = true,
        action = clap::ArgAction::Append
    )]
    pub url: Vec<SecretArg>,
    /// File holding the RabbitMQ password (replaces the URL's), so that none sits in a command line or compose file
    #[arg(long = "rabbitmq-password-file", env = "RABBITMQ_PASSWORD_FILE")]
    pub password_file: Option<std::path::PathBuf>,
    /// CA certificate(s) to verify the broker with, for amqps:// (PEM) [default: the Mozilla roots]
    #[arg(long = "rabbitmq-ca-file", env = "RABBITMQ_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate for amqps:// (PEM); with ?auth_mechanism=external it is the login
    #[arg(long = "rabbitmq-cert-file", env = "RABBITMQ_CERT_FILE")]
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(long = "rabbitmq-key-file", env = "RABBITMQ_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,
}

impl RabbitUrlArgs {
    /// The nodes, with the password file and the TLS files applied to each (they win over the
    /// URLs'), in a random order.
    pub fn parse(&self) -> anyhow::Result<pgevents_amqp::Brokers> {
        use anyhow::Context;
        let password = match &self.password_file {
            Some(file) => Some(read_password_file(file, "--rabbitmq-password-file")?),
            None => None,
        };
        let mut nodes = Vec::new();
        for text in &self.url {
            nodes.extend(pgevents_amqp::Brokers::parse_list(text.expose()).context("RABBITMQ_URL / --rabbitmq-url")?);
        }
        for url in &mut nodes {
            if let Some(password) = &password {
                url.password.clone_from(password);
            }
            let tls = &mut url.tls_options;
            for (option, value) in [
                (&mut tls.ca_file, &self.ca_file),
                (&mut tls.cert_file, &self.cert_file),
                (&mut tls.key_file, &self.key_file),
            ] {
                if value.is_some() {
                    option.clone_from(value);
                }
            }
            url.check().context("RABBITMQ_URL / --rabbitmq-url with the --rabbitmq-*-file options")?;
        }
        pgevents_amqp::Brokers::new(nodes).context("RABBITMQ_URL / --rabbitmq-url")
    }
}

/// Reads a password file (one line; the final newline is not part of the password).
pub fn read_password_file(file: &std::path::Path, option: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {option} {}", file.display()))?;
    Ok(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_owned())
}

/// How `pgevents serve` reads its history stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HistoryProtocolArg {
    Amqp,
    Stream,
}

/// The stream output of the producer (RabbitMQ's stream protocol, plugin `rabbitmq_stream`).
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// Where row events go: the AMQP exchange (routing, work queues), a RabbitMQ stream over the stream protocol (a replayable log, each change exactly once), or both (each event confirmed by both before its LSN moves); outbox messages always go to their exchange
    #[arg(long, env = "PGEVENTS_PUBLISH_TO", value_enum, default_value_t = PublishToArg::Exchange)]
    pub publish_to: PublishToArg,
    /// The stream row events are written to with --publish-to stream or both (declared if missing); it must be written by this producer only [default: none]
    #[arg(long = "stream", env = "PGEVENTS_STREAM")]
    pub stream: Option<String>,
    #[command(flatten)]
    pub connection: StreamConnectionArgs,
    /// How long the stream keeps events, set when it is declared (RabbitMQ units: Y, M, D, h, m, s)
    #[arg(long, env = "PGEVENTS_STREAM_MAX_AGE", default_value = "7D")]
    pub stream_max_age: String,
    /// How many bytes the stream keeps at most, set when it is declared
    #[arg(long, env = "PGEVENTS_STREAM_MAX_BYTES", default_value_t = 20 << 30)]
    pub stream_max_bytes: u64,
}

/// Where RabbitMQ's stream protocol is reached (the producer's `--publish-to stream`, the
/// gateway's `--history-protocol stream`, the same variables).
#[derive(Debug, Clone, Args)]
pub struct StreamConnectionArgs {
    /// RabbitMQ's stream protocol URL: rabbitmq-stream://user:password@host:5552/vhost, or rabbitmq-stream+tls://... (port 5551); a cluster's nodes comma-separated (same settings, other host and port), tried in order
    #[arg(
        long = "stream-url",
        env = "PGEVENTS_STREAM_URL",
        default_value = "rabbitmq-stream://guest:guest@localhost:5552/%2f",
        hide_env_values = true
    )]
    pub stream_url: SecretArg,
    /// File holding the stream protocol password (replaces the URL's)
    #[arg(long = "stream-password-file", env = "PGEVENTS_STREAM_PASSWORD_FILE")]
    pub stream_password_file: Option<std::path::PathBuf>,
    /// CA certificate(s) to verify the broker with, for rabbitmq-stream+tls:// (PEM) [default: the Mozilla roots]
    #[arg(long = "stream-ca-file", env = "PGEVENTS_STREAM_CA_FILE")]
    pub stream_ca_file: Option<std::path::PathBuf>,
    /// Client certificate for rabbitmq-stream+tls:// (PEM)
    #[arg(long = "stream-cert-file", env = "PGEVENTS_STREAM_CERT_FILE")]
    pub stream_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(long = "stream-key-file", env = "PGEVENTS_STREAM_KEY_FILE")]
    pub stream_key_file: Option<std::path::PathBuf>,
}

impl StreamConnectionArgs {
    /// The stream protocol URL with the password file and the TLS files applied.
    pub fn url(&self) -> anyhow::Result<pgevents_stream::StreamUrl> {
        use anyhow::Context;
        let mut url: pgevents_stream::StreamUrl =
            self.stream_url.expose().parse().context("PGEVENTS_STREAM_URL / --stream-url")?;
        if let Some(file) = &self.stream_password_file {
            url.set_password(&read_password_file(file, "--stream-password-file")?);
        }
        url.set_tls_files(
            self.stream_ca_file.as_deref(),
            self.stream_cert_file.as_deref(),
            self.stream_key_file.as_deref(),
        );
        url.check().context("PGEVENTS_STREAM_URL / --stream-url with the --stream-*-file options")?;
        Ok(url)
    }
}

#[derive(Debug, Clone, Args)]
pub struct RabbitArgs {
    #[command(flatten)]
    pub server: RabbitUrlArgs,
    /// Topic exchange the events are published to (declared durable if missing)
    #[arg(
        long = "rabbitmq-exchange",
        env = "RABBITMQ_EXCHANGE",
        alias = "rabbitmq_exchange",
        default_value = "table_exchange"
    )]
    pub exchange: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PluginArg {
    Pgoutput,
    Wal2json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnapshotArg {
    Never,
    Initial,
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HeadersArg {
    Full,
    Minimal,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishToArg {
    Exchange,
    Stream,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OversizeArg {
    Fail,
    Stub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
}

#[derive(Debug, Args)]
pub struct ProducerArgs {
    #[command(flatten)]
    pub pg: PgArgs,
    #[command(flatten)]
    pub rabbit: RabbitArgs,
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Replication slot, created if missing and never dropped [env: PGSLOT or PGREPLICATIONSLOT] [default: pgevents]
    #[arg(long = "pgslot", alias = "pg_replication_slot")]
    pub slot: Option<String>,
    /// Tables to stream, comma-separated (schema.table; a bare name means public.name) [default: all tables]
    #[arg(long = "pgtables", env = "PGTABLES", alias = "pg_tables", value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Publication (pgoutput), created if missing
    #[arg(long = "pgpublication", env = "PGPUBLICATION", alias = "pg_publication_name", default_value = "pgevents")]
    pub publication: String,
    /// Logical decoding plugin
    #[arg(long = "plugin", env = "PGOUTPUTPLUGIN", alias = "pg_output_plugin", value_enum, default_value_t = PluginArg::Pgoutput)]
    pub plugin: PluginArg,
    /// Have RabbitMQ return events no queue is bound for; the producer then waits and retries instead of letting them be dropped
    #[arg(long, env = "RABBITMQ_MANDATORY", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub mandatory: bool,
    /// Which headers and properties each event carries: full (the action, table and lsn headers; message id, content type, timestamp, app id), minimal (message id and content type; the routing key names the table) or none (persistence, and content_encoding when compressed); --pk-hash-header is carried whatever the choice
    #[arg(long, env = "PGEVENTS_HEADERS", value_enum, default_value_t = HeadersArg::Full)]
    pub headers: HeadersArg,
    /// Compress event bodies (announced in content_encoding)
    #[arg(long, env = "PGEVENTS_COMPRESSION", value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Add a header of this name holding a digest of `schema.table:<primary key>` to every event, for RabbitMQ's consistent-hash exchange (its `hash-header`): every event of a row then goes to the same worker queue [default: none]
    #[arg(long, env = "PGEVENTS_PK_HASH_HEADER")]
    pub pk_hash_header: Option<String>,
    /// Write numeric values as JSON strings instead of exact JSON numbers
    #[arg(long, env = "PGEVENTS_NUMERIC_AS_STRING", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub numeric_as_string: bool,
    /// Take unsigned pgevents messages (pg_logical_emit_message(true, 'pgevents', '{...}')) as transaction context, and {"skip": true} in them as a skip request, as before messages were signed: any role that can connect may send one. Off: only what pgevents.context(), pgevents.skip() and pgevents.outbox() signed is believed
    #[arg(long, env = "PGEVENTS_ALLOW_UNSIGNED_MESSAGES", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub allow_unsigned_messages: bool,
    /// Replaced by signed skip requests (pgevents.skip()) and --allow-unsigned-messages: on is refused with an explanation, off is ignored with a warning
    #[arg(long, env = "PGEVENTS_ALLOW_SKIP", value_parser = BoolishValueParser::new(), hide = true)]
    pub allow_skip: Option<bool>,
    /// The exchange outbox messages (pgevents.outbox()) are published to; never the events exchange, where they could pass for row events
    #[arg(long, env = "PGEVENTS_OUTBOX_EXCHANGE", default_value = "pgevents.outbox")]
    pub outbox_exchange: String,
    /// Rows per backfill chunk (pgevents.snapshot()): read between two watermarks and published together; a chunk is read again when more than 16 times as many rows change during its read
    #[arg(long, env = "PGEVENTS_BACKFILL_CHUNK_ROWS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub backfill_chunk_rows: u64,
    /// Backfill each table added to the publication while streaming (its rows as R events; changes stream from the ALTER PUBLICATION on in any case). pgoutput without PGTABLES only: the publication then says which tables are streamed
    #[arg(long, env = "PGEVENTS_SNAPSHOT_NEW_TABLES", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub snapshot_new_tables: bool,
    /// Rows per second a backfill publishes at most, to leave RabbitMQ room for the live changes (their latency grows while a backfill runs near the broker's limit) [default: 0, as fast as it can]
    #[arg(long, env = "PGEVENTS_BACKFILL_MAX_ROWS_PER_S", default_value_t = 0)]
    pub backfill_max_rows_per_s: u64,
    /// How often the producer looks for backfill requests, in milliseconds
    #[arg(long, env = "PGEVENTS_BACKFILL_POLL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub backfill_poll_ms: u64,
    /// Where signed outbox messages that cannot be published as written go, with the reason in a header; a durable queue of the same name is declared and bound to it
    #[arg(long, env = "PGEVENTS_OUTBOX_DEAD_LETTER_EXCHANGE", default_value = "pgevents.outbox.dead")]
    pub outbox_dead_letter_exchange: String,
    /// Largest transaction context (pg_logical_emit_message(true, 'pgevents', ...)), in bytes: it is copied into every event of its transaction, and any role that can write may send it; more is ignored, logged and counted
    #[arg(long, env = "PGEVENTS_MAX_CONTEXT_BYTES", default_value_t = 8 << 10)]
    pub max_context_bytes: usize,
    /// Messages published but not yet confirmed, at most
    #[arg(long, env = "PGEVENTS_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: u64,
    /// Bytes of message bodies published but not yet confirmed, at most (reading pauses above it)
    #[arg(long, env = "PGEVENTS_MAX_IN_FLIGHT_BYTES", default_value_t = 64 << 20)]
    pub max_in_flight_bytes: u64,
    /// Largest message body to publish, in bytes: set it to RabbitMQ's max_message_size (16 MiB by default since RabbitMQ 4.0, 128 MiB before)
    #[arg(long, env = "PGEVENTS_MAX_MESSAGE_BYTES", default_value_t = 16 << 20)]
    pub max_message_bytes: usize,
    /// What to do with a larger event: fail (halt, nothing after it is published) or stub (publish it with its largest values replaced by {"omitted_bytes": N} and an `omitted` header)
    #[arg(long, env = "PGEVENTS_OVERSIZE", value_enum, default_value_t = OversizeArg::Fail)]
    pub oversize: OversizeArg,
    /// Seconds between standby status updates to PostgreSQL
    #[arg(long = "status-interval", env = "PGEVENTS_STATUS_INTERVAL", default_value_t = 10)]
    pub status_interval_secs: u64,
    /// Memory (MiB) for one transaction's events before they spill to disk
    #[arg(long = "tx-memory-mb", env = "PGEVENTS_TX_MEMORY_MB", default_value_t = 16)]
    pub tx_memory_mb: usize,
    /// Directory for spill files of large transactions [default: the system temporary directory]
    #[arg(long, env = "PGEVENTS_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Seconds a graceful stop waits for outstanding confirms
    #[arg(long = "shutdown-timeout", env = "PGEVENTS_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
    /// Seconds to wait at start for a slot held by another connection before failing
    #[arg(long = "slot-busy-timeout", env = "PGEVENTS_SLOT_BUSY_TIMEOUT", default_value_t = 10)]
    pub slot_busy_timeout_secs: u64,
    /// Seconds a standby tolerates the slot's lock held while nobody streams the slot, before it reports the holder's PID and user (log, /readyz, pgevents_standby_lock_suspect)
    #[arg(long = "lock-holder-timeout", env = "PGEVENTS_LOCK_HOLDER_TIMEOUT", default_value_t = 60)]
    pub lock_holder_timeout_secs: u64,
    /// Seconds published messages may stay unconfirmed before the broker connection is presumed broken
    #[arg(long = "confirm-timeout", env = "PGEVENTS_CONFIRM_TIMEOUT", default_value_t = 60)]
    pub confirm_timeout_secs: u64,
    /// Longest delay, in seconds, between reconnection attempts (the delay doubles from 0.5 s up to it)
    #[arg(long = "backoff-max", env = "PGEVENTS_BACKOFF_MAX", default_value_t = 30)]
    pub backoff_max_secs: u64,
    /// A statement run every --heartbeat-interval, so the slot advances even when only other databases write
    /// (e.g. "SELECT pg_logical_emit_message(false, 'pgevents-heartbeat', '')") [default: none]
    #[arg(long, env = "PGEVENTS_HEARTBEAT_SQL")]
    pub heartbeat_sql: Option<String>,
    /// Seconds between runs of --heartbeat-sql
    #[arg(long = "heartbeat-interval", env = "PGEVENTS_HEARTBEAT_INTERVAL", default_value_t = 30)]
    pub heartbeat_interval_secs: u64,
    /// Read the subscribed tables as `R` events before streaming: when the slot is created (initial) or at every start (always)
    #[arg(long, env = "PGEVENTS_SNAPSHOT", value_enum, default_value_t = SnapshotArg::Never)]
    pub snapshot: SnapshotArg,
    /// Rows per snapshot batch (each batch is confirmed by RabbitMQ before its progress is recorded)
    #[arg(long, env = "PGEVENTS_SNAPSHOT_BATCH_ROWS", default_value_t = 1000)]
    pub snapshot_batch_rows: usize,
    #[command(flatten)]
    pub routing: RoutingArgs,
    /// Also keep every event in this RabbitMQ stream queue (the history `pgevents serve` replays from) [default: none]
    #[arg(long, env = "PGEVENTS_HISTORY_STREAM")]
    pub history_stream: Option<String>,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// How long the history stream keeps events (RabbitMQ units: Y, M, D, h, m, s)
    #[arg(long, env = "PGEVENTS_HISTORY_MAX_AGE", default_value = "7D")]
    pub history_max_age: String,
    /// How many bytes the history stream keeps at most
    #[arg(long, env = "PGEVENTS_HISTORY_MAX_BYTES", default_value_t = 10 << 30)]
    pub history_max_bytes: u64,
    /// Segment size of the history stream in bytes; retention removes whole segments [default: RabbitMQ's, 500 MB]
    #[arg(long, env = "PGEVENTS_HISTORY_SEGMENT_BYTES")]
    pub history_segment_bytes: Option<u64>,
    /// On how many RabbitMQ nodes the history stream is replicated when it is created [default: the broker decides]
    #[arg(long, env = "PGEVENTS_HISTORY_REPLICAS", value_parser = clap::value_parser!(u16).range(1..))]
    pub history_replicas: Option<u16>,
}

impl RetentionArgs {
    pub fn retention(&self) -> pgevents_amqp::Retention {
        pgevents_amqp::Retention {
            max_age: self.history_max_age.clone(),
            max_bytes: self.history_max_bytes,
            segment_bytes: self.history_segment_bytes,
            replicas: self.history_replicas,
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub rabbit: RabbitArgs,
    /// Address to serve /events, the live tail page (/), /healthz and /readyz on
    #[arg(long, env = "PGEVENTS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// The RabbitMQ stream with the event history (declared if missing; over AMQP, also bound to the exchange)
    #[arg(long, env = "PGEVENTS_HISTORY_STREAM", default_value = "pgevents_history")]
    pub history_stream: String,
    /// How the history stream is read: amqp (a stream queue bound to the exchange, filled by the producer's --history-stream) or stream (RabbitMQ's stream protocol, at --stream-url: the stream the producer writes with --publish-to stream --stream NAME, or its --history-stream)
    #[arg(long, env = "PGEVENTS_HISTORY_PROTOCOL", value_enum, default_value_t = HistoryProtocolArg::Amqp)]
    pub history_protocol: HistoryProtocolArg,
    #[command(flatten)]
    pub stream_connection: StreamConnectionArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Seconds between heartbeat comments on idle event streams
    #[arg(long = "heartbeat", env = "PGEVENTS_SSE_HEARTBEAT", default_value_t = 15)]
    pub heartbeat_secs: u64,
    /// Milliseconds a browser waits before reconnecting (the SSE retry field)
    #[arg(long = "sse-retry-ms", env = "PGEVENTS_SSE_RETRY_MS", default_value_t = 2000)]
    pub sse_retry_ms: u64,
    /// Events a subscriber may fall behind the live feed before it is cut off (it reconnects with Last-Event-ID); the gateway keeps this much of the feed in memory, shared by all subscribers
    #[arg(long, env = "PGEVENTS_CLIENT_BUFFER", default_value_t = 10_000)]
    pub client_buffer: usize,
    /// Bytes a subscriber may fall behind the live feed before it is cut off (the same buffer, counted in bytes)
    #[arg(long, env = "PGEVENTS_CLIENT_BUFFER_BYTES", default_value_t = 16 << 20)]
    pub client_buffer_bytes: usize,
    /// Subscribers at once; more get 503 with Retry-After
    #[arg(long, env = "PGEVENTS_MAX_CLIENTS", default_value_t = 10_000)]
    pub max_clients: usize,
    /// Replays from the history stream at once (subscribers whose Last-Event-ID is older than the buffered feed); the others wait for a slot
    #[arg(long, env = "PGEVENTS_MAX_REPLAYS", default_value_t = 16)]
    pub max_replays: usize,
    /// Seconds a client has to send its request headers (slow clients are disconnected)
    #[arg(long, env = "PGEVENTS_HEADER_READ_TIMEOUT", default_value_t = 10)]
    pub header_read_timeout: u64,
    /// Seconds a write to a subscriber may wait (it has stopped reading) before it is disconnected
    #[arg(long, env = "PGEVENTS_STALL_TIMEOUT", default_value_t = 30)]
    pub stall_timeout: u64,
    /// Longest query string of /events in bytes (414 beyond)
    #[arg(long, env = "PGEVENTS_MAX_QUERY_BYTES", default_value_t = 4096)]
    pub max_query_bytes: usize,
    /// Most filter values (tables, actions, columns, pk) in one subscription (400 beyond)
    #[arg(long, env = "PGEVENTS_MAX_FILTERS", default_value_t = 64)]
    pub max_filters: usize,
    /// Largest event accepted once decompressed, in bytes (larger ones are skipped, logged and counted)
    #[arg(long, env = "PGEVENTS_MAX_EVENT_BYTES", default_value_t = 64 << 20)]
    pub max_event_bytes: usize,
    /// Web origin allowed to read /events from a browser (repeatable, or comma-separated in the environment); '*' for any, only without authentication
    #[arg(long = "cors-origin", env = "PGEVENTS_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Serve /sessions/{id}/events: sessions and subscriptions kept in PostgreSQL (pgevents rules install), read with the --pg* settings
    #[arg(long, env = "PGEVENTS_SESSIONS", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub sessions: bool,
    #[command(flatten)]
    pub pg: PgArgs,
    /// Seconds after which a session no connection has read is removed, with its subscriptions
    #[arg(long = "session-ttl", env = "PGEVENTS_SESSION_TTL", default_value_t = 86_400)]
    pub session_ttl_secs: u64,
    /// Seconds between full reloads of the sessions (changes apply at once through NOTIFY; this covers notifications lost while reconnecting)
    #[arg(long = "sessions-refresh", env = "PGEVENTS_SESSIONS_REFRESH", default_value_t = 60)]
    pub sessions_refresh_secs: u64,
    /// Seconds a request may wait for a session not yet in memory to be read from the database (503 beyond)
    #[arg(long = "session-lookup-timeout", env = "PGEVENTS_SESSION_LOOKUP_TIMEOUT", default_value_t = 5)]
    pub session_lookup_timeout_secs: u64,
    /// Rows of tables with this column go only to the subscriber (consumer id, or session id) equal to its value: `column` for every table, or `table-glob=column`, comma-separated
    #[arg(long = "subscriber-column", env = "PGEVENTS_SUBSCRIBER_COLUMN", value_delimiter = ',')]
    pub subscriber_columns: Vec<String>,
    /// Without JWT, the host names (Host header) requests may use besides IP addresses and localhost, comma-separated: any other gets 421, so that a web page cannot reach the gateway through a name its DNS points here (DNS rebinding)
    #[arg(long = "allowed-hosts", env = "PGEVENTS_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Longest delay in seconds between reconnection attempts to RabbitMQ
    #[arg(long, env = "PGEVENTS_BACKOFF_MAX", default_value_t = 30)]
    pub backoff_max: u64,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub producer: ProducerArgs,
    /// The workers' --http-allow, to review (the same variable as the workers')
    #[arg(long = "http-allow", env = "PGEVENTS_HTTP_ALLOW", value_delimiter = ',')]
    pub http_allow: Vec<String>,
    /// The gateway's --listen, to review (the same variable as `pgevents serve`) [default: not reviewed]
    #[arg(long = "gateway-listen", env = "PGEVENTS_LISTEN")]
    pub gateway_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// The gateway's --sessions, to review (the same variable as `pgevents serve`)
    #[arg(long, env = "PGEVENTS_SESSIONS", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub sessions: bool,
    /// The workers' --work-key-file, to review (the same variable as the workers')
    #[arg(long = "work-key-file", env = "PGEVENTS_WORK_KEY_FILE")]
    pub work_key_file: Option<std::path::PathBuf>,
    /// The gateway's --subscriber-column, to review: tables it addresses need REPLICA IDENTITY FULL (the same variable as `pgevents serve`)
    #[arg(long = "subscriber-column", env = "PGEVENTS_SUBSCRIBER_COLUMN", value_delimiter = ',')]
    pub subscriber_columns: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct JwtArgs {
    /// Require a JWT signed with HS256 by this secret (the file's bytes are the key) on every /events request
    #[arg(long, env = "PGEVENTS_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<std::path::PathBuf>,
    /// Require a JWT signed with RS256 or ES256, checked with this PEM public key
    #[arg(long, env = "PGEVENTS_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// The aud claim tokens must carry
    #[arg(long, env = "PGEVENTS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The iss claim tokens must carry
    #[arg(long, env = "PGEVENTS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RoutingArgs {
    /// Routing key of each event; placeholders {database}, {schema}, {table}
    #[arg(long, env = "PGEVENTS_ROUTING_KEY_TEMPLATE", default_value = "{schema}.{table}")]
    pub routing_key_template: String,
    /// Per-table exchanges, comma-separated table-glob=exchange pairs, first match wins (e.g. public.orders=orders,audit.*=audit) [default: every table to --rabbitmq-exchange]
    #[arg(long, env = "PGEVENTS_EXCHANGE_MAP", value_delimiter = ',')]
    pub exchange_map: Vec<String>,
    /// Only stream tables matching one of these globs (schema.table, * matches anything) [default: all]
    #[arg(long, env = "PGEVENTS_INCLUDE_TABLES", value_delimiter = ',')]
    pub include_tables: Vec<String>,
    /// Never stream tables matching these globs (e.g. public.tmp_*)
    #[arg(long, env = "PGEVENTS_EXCLUDE_TABLES", value_delimiter = ',')]
    pub exclude_tables: Vec<String>,
    /// Leave these columns out of events: column or schema.table.column globs (e.g. password_hash,public.users.secret_*)
    #[arg(long, env = "PGEVENTS_EXCLUDE_COLUMNS", value_delimiter = ',')]
    pub exclude_columns: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Serve Prometheus metrics (/metrics), liveness (/healthz) and readiness (/readyz) on this address, e.g. 0.0.0.0:9187 [default: off]
    #[arg(long, env = "PGEVENTS_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// `routing_key action message_id body`
    Line,
    /// The body only, one per line (for jq)
    Json,
    /// Indented JSON
    Pretty,
}

#[derive(Debug, Args)]
pub struct ConsumerDebugArgs {
    #[command(flatten)]
    pub rabbit: RabbitArgs,
    /// Binding keys, comma-separated (public.users, public.*, #)
    #[arg(
        long = "binding-keys",
        env = "RABBITMQ_BINDING_KEYS",
        alias = "binding_keys",
        value_delimiter = ',',
        default_value = "#"
    )]
    pub binding_keys: Vec<String>,
    /// A durable queue to read (kept while away); without it a temporary queue is used
    #[arg(long = "queue-name", env = "RABBITMQ_QUEUE_NAME", alias = "queue_name")]
    pub queue_name: Option<String>,
    /// Type of the durable queue (--queue-name): quorum for a RabbitMQ cluster
    #[arg(long = "queue-type", env = "PGEVENTS_QUEUE_TYPE", value_enum, default_value_t = QueueTypeArg::Classic)]
    pub queue_type: QueueTypeArg,
    /// Output format
    #[arg(long, env = "PGEVENTS_OUTPUT_FORMAT", value_enum, default_value_t = OutputFormat::Line)]
    pub format: OutputFormat,
    /// Deliveries the broker may send ahead of acknowledgements
    #[arg(long, env = "RABBITMQ_PREFETCH", default_value_t = 100)]
    pub prefetch: u16,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Clap's own checks of every subcommand (unique argument names, ...), which otherwise run
    /// only when a subcommand is parsed.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
