//! `pgevents worker` and `pgevents action-runner`: the rules, the job runner and the consumer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pgevents_actions::{
    declare_work_topology, AllowList, DeadLetters, HttpCaller, HttpSettings, JobRunner, Secrets, StageConsumer,
    WorkKey, WorkTopology,
};
use pgevents_consumer::ConnectionWatch;
use pgevents_rules::{OwnerSessions, RulesCache};
use pgevents_telemetry::Readiness;
use tokio_util::sync::CancellationToken;

use crate::cli::{
    ActionArgs, ActionRunnerArgs, RabbitUrlArgs, RequeueDeadArgs, TelemetryArgs, WorkTopologyArgs, WorkerArgs,
};
use crate::pg_args::PgArgs;

const DURATION_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

fn topology(args: &WorkTopologyArgs) -> anyhow::Result<WorkTopology> {
    let key = match &args.work_key_file {
        Some(file) => {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read --work-key-file {}", file.display()))?;
            Some(WorkKey::new(bytes)?)
        }
        None => None,
    };
    Ok(WorkTopology {
        work_exchange: args.work_exchange.clone(),
        work_queue: args.work_queue.clone(),
        dead_exchange: args.dead_letter_exchange.clone(),
        dead_queue: args.dead_letter_queue.clone(),
        key,
        queue_type: args.queue_type.into(),
    })
}

/// `host:pid`, recorded in `action_run.worker`.
fn worker_name(role: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{role}@{host}:{}", std::process::id())
}

/// Everything both commands set up: telemetry, rules, queues, the job runner.
struct Setup {
    stage: StageConsumer,
    pool: pgevents_pg::Pool,
    rules: Arc<RulesCache>,
    runner: Arc<JobRunner>,
}

async fn setup(
    role: &str,
    pg: &PgArgs,
    rabbit: &RabbitUrlArgs,
    actions: &ActionArgs,
    topology_args: &WorkTopologyArgs,
    telemetry: &TelemetryArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Setup> {
    let readiness = super::telemetry::start(
        telemetry.metrics_addr,
        &[(pgevents_actions::metric::ACTION_DURATION, DURATION_BUCKETS)],
        "starting",
        shutdown,
    )
    .await?;
    let url = rabbit.parse()?;
    let settings = pg.connect_config(&format!("pgevents {role}"))?;
    let pool = pgevents_pg::pool(&settings, role, actions.concurrency.max(1) + 1)?;
    let owner_connections = actions.owner_connections.unwrap_or(actions.concurrency).max(1);
    let sessions = OwnerSessions::new(settings.clone(), owner_connections);
    let refresh = Duration::from_secs(actions.rules_refresh_secs.max(1));
    let access_recheck = Duration::from_millis(actions.access_recheck_ms);
    let rules = RulesCache::start(settings.clone(), sessions, refresh, access_recheck, shutdown.clone())
        .await
        .context("cannot load the rules")?;
    let topology = topology(topology_args)?;
    declare_work_topology(&url, &topology).await.context("cannot declare the work and dead-letter queues")?;
    let http = HttpCaller::new(http_settings(actions)?).map_err(anyhow::Error::msg)?;
    let dead = DeadLetters::start(url.clone(), &topology);
    let runner =
        Arc::new(JobRunner::new(pool.clone(), rules.clone(), http, dead, worker_name(role), actions.base_url.clone()));
    let stage = StageConsumer {
        url,
        topology,
        prefetch: prefetch(actions),
        concurrency: actions.concurrency.max(1),
        on_connected: readiness_watch(&readiness),
        max_deliveries: std::num::NonZeroU32::new(actions.max_deliveries).unwrap_or(std::num::NonZeroU32::MIN),
    };
    Ok(Setup { stage, pool, rules, runner })
}

/// `--http-allow`, `--http-ca-file` and the secrets, with a warning when any destination is
/// allowed.
fn http_settings(actions: &ActionArgs) -> anyhow::Result<HttpSettings> {
    let allow = AllowList::parse(&actions.http_allow).map_err(anyhow::Error::msg)?;
    if !allow.is_restricted() {
        tracing::warn!("HTTP actions may call any address (no --http-allow): set it to the hosts or networks your actions call, so that a rule cannot reach internal services");
    }
    let secrets = Secrets::load(std::env::vars(), actions.secrets_dir.as_deref())?;
    tracing::info!(secrets = ?secrets.names().collect::<Vec<_>>(), "secrets for HTTP actions");
    let proxy = actions.http_proxy.as_ref().map(|p| p.expose().to_owned());
    Ok(HttpSettings { allow, ca_file: actions.http_ca_file.clone(), secrets, proxy })
}

/// Ready while consuming; not ready, with the reason, while reconnecting to RabbitMQ.
fn readiness_watch(readiness: &Readiness) -> ConnectionWatch {
    readiness.set_not_ready("connecting to RabbitMQ");
    let readiness = readiness.clone();
    ConnectionWatch::new(move |connected| {
        if connected {
            readiness.set_ready();
        } else {
            readiness.set_not_ready("RabbitMQ connection lost; reconnecting");
        }
    })
}

fn prefetch(actions: &ActionArgs) -> u16 {
    actions.prefetch.unwrap_or_else(|| u16::try_from(actions.concurrency.max(1) * 2).unwrap_or(u16::MAX))
}

pub async fn run_worker(args: WorkerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut s =
        setup("worker", &args.pg, &args.rabbit.server, &args.actions, &args.topology, &args.telemetry, &shutdown)
            .await?;
    if args.actions.prefetch.is_none() {
        // Room for a batch per handler slot.
        let wanted = args.actions.concurrency.max(1).saturating_mul(usize::from(args.batch_size));
        s.stage.prefetch = s.stage.prefetch.max(u16::try_from(wanted).unwrap_or(u16::MAX));
    }
    let config = pgevents_workitems::WorkerConfig {
        stage: s.stage,
        exchange: args.rabbit.exchange.clone(),
        queue: args.queue_name.clone(),
        binding_keys: args.binding_keys.iter().filter(|k| !k.is_empty()).cloned().collect(),
        rule_timeout: Duration::from_millis(args.actions.rule_timeout_ms.max(1)),
        row_limits: pgevents_workitems::RowLimits {
            rows: args.actions.max_parameter_rows.max(1),
            bytes: args.actions.max_parameter_bytes.max(1),
        },
        batch_size: usize::from(args.batch_size),
    };
    tracing::info!(queue = %config.queue, exchange = %config.exchange, concurrency = config.stage.concurrency, batch_size = config.batch_size, "worker starting");
    pgevents_workitems::run_worker(config, s.pool, s.rules, s.runner, shutdown).await?;
    Ok(())
}

pub async fn run_action_runner(args: ActionRunnerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let s = setup("action-runner", &args.pg, &args.rabbit, &args.actions, &args.topology, &args.telemetry, &shutdown)
        .await?;
    tracing::info!(queue = %s.stage.topology.work_queue, concurrency = s.stage.concurrency, "action runner starting");
    pgevents_actions::run_action_runner(s.stage, s.runner, shutdown).await?;
    Ok(())
}

pub async fn requeue_dead(args: RequeueDeadArgs) -> anyhow::Result<()> {
    let url = args.rabbit.parse()?;
    let topology = topology(&args.topology)?;
    let report = pgevents_actions::requeue_dead(&url, &topology, args.work_item.as_deref(), args.limit)
        .await
        .context("cannot requeue the dead jobs")?;
    println!(
        "requeued {} dead jobs to {}; left {} other messages in {}",
        report.requeued, topology.work_exchange, report.kept, topology.dead_queue
    );
    if report.unsigned > 0 {
        println!("{} of them are jobs whose signature does not hold (--work-key-file): left alone", report.unsigned);
    }
    Ok(())
}
