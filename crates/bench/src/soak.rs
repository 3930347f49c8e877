//! The soak test: N randomized rounds of the fault suite's faults under a steady write load,
//! with a checker keyed on each change's message id (commit LSN and position in its
//! transaction). It prints, per round and in total, how many changes were lost, delivered more
//! than once, or delivered out of order. Not part of CI (it runs for minutes).
//!
//! `--cluster` runs it against a 3-node RabbitMQ cluster (a quorum queue, the producer given
//! every node), where the broker faults stop one node (the producer's, or another) and start it
//! again.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use pgevents_testkit::{
    write_ab_rows, EventQueue, FaultProxy, PgCluster, PgEventsProcess, RabbitCluster, RabbitNode, AB_TABLES,
};
use rand::RngExt;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "pgevents-soak",
    about = "Randomized faults under load; counts lost, duplicated and reordered changes"
)]
pub struct SoakArgs {
    /// Rounds (one fault each)
    #[arg(long, default_value_t = 100)]
    pub rounds: u32,
    /// Seconds of load around each fault
    #[arg(long, default_value_t = 2.0)]
    pub round_seconds: f64,
    /// The pgevents binary [default: a release build made now]
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Seed of the fault choice and timing [default: random]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run against a 3-node RabbitMQ cluster, with node stops among the faults
    #[arg(long)]
    pub cluster: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fault {
    KillProducer,
    RestartBroker,
    RestartPostgres,
    CutBroker,
    CutDatabase,
    /// Cluster mode: stop the node the producer publishes to, then start it again.
    StopProducersNode,
    /// Cluster mode: stop another node, then start it again.
    StopOtherNode,
}

const FAULTS: [Fault; 5] =
    [Fault::KillProducer, Fault::RestartBroker, Fault::RestartPostgres, Fault::CutBroker, Fault::CutDatabase];

const CLUSTER_FAULTS: [Fault; 5] =
    [Fault::KillProducer, Fault::StopProducersNode, Fault::StopOtherNode, Fault::RestartPostgres, Fault::CutDatabase];

/// The broker the soak runs against.
enum Broker {
    /// One node, reached through a proxy that can cut the connection.
    Single {
        node: Box<RabbitNode>,
        proxy: Box<FaultProxy>,
    },
    Cluster(RabbitCluster),
}

/// What the collector saw: per message id, the body; per table, ids in first-delivery order.
#[derive(Default)]
struct Seen {
    bodies: HashMap<String, Vec<u8>>,
    order: HashMap<String, Vec<i64>>,
    ids: HashSet<i64>,
    deliveries: u64,
    duplicates: u64,
    conflicting_duplicates: u64,
}

/// Totals over all rounds.
#[derive(Debug, Default)]
struct Totals {
    written: i64,
    lost: u64,
    duplicates: u64,
    conflicting_duplicates: u64,
    reordered: u64,
    by_fault: HashMap<String, u32>,
}

struct Rig {
    pg: PgCluster,
    broker: Broker,
    to_database: FaultProxy,
    env: Vec<(String, String)>,
    binary: PathBuf,
}

impl Rig {
    fn spawn_producer(&self) -> PgEventsProcess {
        PgEventsProcess::spawn_binary(&self.binary, &["producer"], &self.env)
    }
}

fn pg_port(pg: &PgCluster) -> u16 {
    pg.env().iter().find(|(k, _)| k == "PGPORT").and_then(|(_, v)| v.parse().ok()).unwrap_or(5432)
}

/// Consumes the durable queue, reconnecting after broker restarts, into `seen`.
async fn collector(url: String, queue: String, seen: Arc<Mutex<Seen>>) {
    loop {
        let Ok(Some(mut q)) =
            tokio::time::timeout(Duration::from_secs(5), EventQueue::try_reattach(&url, &queue)).await
        else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        while let Some(event) = q.next(Duration::from_secs(3600)).await {
            let id = event.json["id"].as_i64().unwrap_or(-1);
            let table = event.json["table_name"].as_str().unwrap_or("?").to_owned();
            let mut guard = seen.lock().await;
            let seen = &mut *guard;
            seen.deliveries += 1;
            match seen.bodies.get(&event.message_id()) {
                Some(body) => {
                    seen.duplicates += 1;
                    if *body != event.body {
                        seen.conflicting_duplicates += 1;
                    }
                }
                None => {
                    seen.bodies.insert(event.message_id(), event.body.clone());
                    seen.order.entry(table).or_default().push(id);
                    seen.ids.insert(id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn inject(rig: &Rig, fault: Fault, producer: &mut PgEventsProcess, pause: Duration) -> anyhow::Result<()> {
    match fault {
        Fault::KillProducer => {
            producer.kill();
            producer.wait(Duration::from_secs(30)).await;
            *producer = rig.spawn_producer();
        }
        Fault::RestartBroker | Fault::CutBroker | Fault::StopProducersNode | Fault::StopOtherNode => {
            broker_fault(rig, fault, pause).await
        }
        Fault::RestartPostgres => tokio::task::block_in_place(|| rig.pg.restart()),
        Fault::CutDatabase => {
            rig.to_database.cut();
            tokio::time::sleep(pause).await;
            rig.to_database.restore().await;
        }
    }
    Ok(())
}

async fn broker_fault(rig: &Rig, fault: Fault, pause: Duration) {
    match (&rig.broker, fault) {
        (Broker::Single { node, .. }, Fault::RestartBroker) => {
            node.stop_app().await;
            tokio::time::sleep(pause).await;
            node.start_app().await;
        }
        (Broker::Single { proxy, .. }, Fault::CutBroker) => {
            proxy.cut();
            tokio::time::sleep(pause).await;
            proxy.restore().await;
        }
        (Broker::Cluster(cluster), Fault::StopProducersNode | Fault::StopOtherNode) => {
            let asked = &cluster.nodes[0];
            let producers = cluster.node_of_connection(asked, "pgevents producer (soak)").await;
            let node = match (fault, producers) {
                (Fault::StopProducersNode, Some(node)) => node,
                (_, Some(node)) => cluster.other_than(node),
                (_, None) => asked,
            };
            node.stop_app().await;
            tokio::time::sleep(pause).await;
            node.start_app().await;
        }
        _ => {}
    }
}

pub async fn run(args: SoakArgs, binary: PathBuf) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    eprintln!("soak: {} rounds, seed {seed}", args.rounds);
    let pg = PgCluster::start().await;
    pg.execute(AB_TABLES).await;
    let (broker, url, producer_url) = if args.cluster {
        let cluster = RabbitCluster::start(3).await;
        let urls = cluster.urls();
        (Broker::Cluster(cluster), urls.clone(), urls)
    } else {
        let node = RabbitNode::start().await;
        let proxy = FaultProxy::start(node.addr()).await;
        let (url, proxied) = (node.url(), format!("amqp://guest:guest@{}/%2f", proxy.addr));
        (Broker::Single { node: Box::new(node), proxy: Box::new(proxy) }, url, proxied)
    };
    let to_database = FaultProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], pg_port(&pg)))).await;
    let exchange = "soak_events";
    let first_node = url.split(',').next().unwrap_or_default().to_owned();
    let queue = if args.cluster {
        EventQueue::quorum(&first_node, exchange, &["#"]).await
    } else {
        EventQueue::durable(&first_node, exchange, &["#"]).await
    };
    let queue_name = queue.name.clone();
    drop(queue);
    let mut env = pg.env();
    env.retain(|(k, _)| k != "PGPORT");
    env.push(("PGPORT".into(), to_database.addr.port().to_string()));
    env.push(("RABBITMQ_URL".into(), producer_url));
    env.push(("RABBITMQ_EXCHANGE".into(), exchange.into()));
    env.push(("PGSLOT".into(), "soak".into()));
    env.push(("PGEVENTS_STATUS_INTERVAL".into(), "1".into()));
    env.push(("PGEVENTS_BACKOFF_MAX".into(), "2".into()));
    let rig = Rig { env, binary, pg, broker, to_database };

    let seen = Arc::new(Mutex::new(Seen::default()));
    // In cluster mode the collector is given every node too, and follows the one that answers.
    tokio::spawn(collector(url, queue_name, seen.clone()));
    let mut producer = rig.spawn_producer();
    producer.wait_for_log("streaming", Duration::from_secs(60)).await;
    let written = Arc::new(AtomicI64::new(0));
    let mut totals = Totals::default();
    let started = Instant::now();
    for round in 1..=args.rounds {
        let faults: &[Fault] = if args.cluster { &CLUSTER_FAULTS } else { &FAULTS };
        let fault = faults[rng.random_range(0..faults.len())];
        let before = rng.random_range(0.1..0.6) * args.round_seconds;
        let pause = Duration::from_millis(rng.random_range(300..2000));
        let running = Arc::new(AtomicBool::new(true));
        let (port, flag, counter) = (pg_port(&rig.pg), running.clone(), written.clone());
        let first = written.load(Ordering::SeqCst) + 1;
        let load = tokio::spawn(async move { write_ab_rows(port, first, i64::MAX, &flag, &counter).await });
        tokio::time::sleep(Duration::from_secs_f64(before)).await;
        inject(&rig, fault, &mut producer, pause).await?;
        tokio::time::sleep(Duration::from_secs_f64(args.round_seconds - before)).await;
        running.store(false, Ordering::SeqCst);
        load.await.context("writer")?;
        let target = written.load(Ordering::SeqCst);
        // Catch up: every row written so far must arrive.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let missing = {
                let seen = seen.lock().await;
                (1..=target).filter(|id| !seen.ids.contains(id)).count()
            };
            if missing == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let seen = seen.lock().await;
        let lost = (1..=target).filter(|id| !seen.ids.contains(id)).count() as u64;
        let reordered = seen.order.values().map(|ids| ids.windows(2).filter(|w| w[0] >= w[1]).count() as u64).sum();
        *totals.by_fault.entry(format!("{fault:?}")).or_default() += 1;
        println!(
            "round {round:>3} {:<16} written {target:>7} deliveries {:>7} lost {lost} duplicates {} conflicting {} reordered {reordered}",
            format!("{fault:?}"),
            seen.deliveries,
            seen.duplicates,
            seen.conflicting_duplicates
        );
        totals.written = target;
        totals.lost = lost;
        totals.duplicates = seen.duplicates;
        totals.conflicting_duplicates = seen.conflicting_duplicates;
        totals.reordered = reordered;
        if lost > 0 {
            eprintln!("changes were lost; producer log:\n{}", producer.stderr());
            bail!("round {round}: {lost} changes lost after {fault:?}");
        }
    }
    producer.terminate();
    producer.wait(Duration::from_secs(30)).await;
    println!(
        "soak done in {:.0}s: {} rounds {:?}; {} changes written, lost {}, duplicated {} (conflicting {}), reordered {}",
        started.elapsed().as_secs_f64(),
        args.rounds,
        totals.by_fault,
        totals.written,
        totals.lost,
        totals.duplicates,
        totals.conflicting_duplicates,
        totals.reordered
    );
    if totals.conflicting_duplicates > 0 || totals.reordered > 0 {
        bail!("duplicates with different bodies or reordered changes");
    }
    Ok(())
}
