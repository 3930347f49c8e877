//! The consumer library against the local RabbitMQ: routing by table and action, Retry runs
//! again with backoff and gives up after max_deliveries, panics are caught, Fail, unreadable
//! messages and gzip bombs are dead-lettered with the reason, the concurrency limit, and a
//! graceful shutdown that lets running handlers finish and settles them, and a lost connection
//! reported at once (on a private node).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgevents_consumer::{ConnectionWatch, Consumer, ConsumerConfig, IncomingEvent, Outcome, QueueMode, Registry};
use pgevents_event::Action;
use pgevents_testkit::{
    amqp_url, delete_exchange, delete_queue, publish_message, publish_raw, publish_raw_to, unique_name, wait_for,
    EventQueue, RabbitNode,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn event(table: &str, action: &str, seq: u64) -> Vec<u8> {
    format!(
        r#"{{"table_name":"{table}","action":"{action}","old":{{}},"new":{{"n":{seq}}},"diff":{{}},"id":{seq},"lsn":"0/10","xid":1,"commit_time":"2026-11-23T00:00:00Z","seq":{seq}}}"#
    )
    .into_bytes()
}

struct Setup {
    exchange: String,
    queue: String,
    config: ConsumerConfig,
}

/// A config on a fresh exchange and durable queue; the exchange is declared by a collector
/// queue bound to nothing anyone publishes to.
async fn setup() -> Setup {
    let exchange = unique_name("cx");
    let queue = unique_name("cq");
    let mut config = ConsumerConfig::new(amqp_url().parse().unwrap(), &exchange);
    config.queue = QueueMode::Durable(queue.clone());
    config.retry_delay = Duration::from_millis(50);
    Setup { exchange, queue, config }
}

/// Starts the consumer and waits until it consumes (its `on_connected` says so), so that the
/// queue is declared and bound before the test publishes.
async fn started(setup: &Setup, registry: Registry) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let connected = Arc::new(AtomicUsize::new(0));
    let mut config = setup.config.clone();
    let flag = connected.clone();
    config.on_connected = ConnectionWatch::new(move |up| flag.store(usize::from(up), Ordering::SeqCst));
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let consumer = Consumer::new(config, registry);
    let task = tokio::spawn(async move { consumer.run(token).await.expect("consumer run") });
    wait_for("the consumer to start", WAIT, || async { (connected.load(Ordering::SeqCst) == 1).then_some(()) }).await;
    (shutdown, task)
}

/// A dead-letter exchange for the setup's consumer and a queue collecting what reaches it.
struct DeadLetters {
    exchange: String,
    queue: EventQueue,
}

impl DeadLetters {
    async fn for_setup(setup: &mut Setup) -> DeadLetters {
        let exchange = unique_name("cdead");
        setup.config.dead_letter_exchange = Some(exchange.clone());
        let queue = EventQueue::bind(&exchange, &["#"]).await;
        DeadLetters { exchange, queue }
    }

    async fn next(&mut self) -> pgevents_amqp::Delivery {
        self.queue.next_raw(WAIT).await.expect("a dead-lettered message")
    }

    async fn close(self) {
        self.queue.close().await;
        delete_exchange(&self.exchange).await;
    }
}

/// Stops the consumer and waits for it.
async fn stop(shutdown: CancellationToken, task: tokio::task::JoinHandle<()>) {
    shutdown.cancel();
    task.await.unwrap();
}

async fn cleanup(setup: Setup) {
    delete_queue(&setup.queue).await;
    delete_exchange(&setup.exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_table_and_action_and_retries() {
    let setup = setup().await;
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let ignored = Arc::new(AtomicUsize::new(0));
    let (log, count) = (seen.clone(), ignored.clone());
    let registry = Registry::new()
        .on("public.users", Action::Insert, move |e: IncomingEvent| {
            let log = log.clone();
            async move {
                let mut log = log.lock().unwrap();
                log.push(e.event.seq);
                // The first run on seq 1 fails for now: it must run again.
                if e.event.seq == 1 && log.iter().filter(|s| **s == 1).count() == 1 {
                    Outcome::Retry("not yet".into())
                } else {
                    Outcome::Ok
                }
            }
        })
        .on_all("audit.*", move |_e: IncomingEvent| {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                Outcome::Ok
            }
        });
    let (shutdown, task) = started(&setup, registry).await;
    publish_raw(&setup.exchange, "public.users", "m0", &event("public.users", "I", 0)).await;
    publish_raw(&setup.exchange, "public.users", "m1", &event("public.users", "I", 1)).await;
    publish_raw(&setup.exchange, "public.users", "m2", &event("public.users", "D", 2)).await;
    publish_raw(&setup.exchange, "audit.log", "m3", &event("audit.log", "U", 3)).await;
    wait_for("seq 1 again", WAIT, || async {
        (seen.lock().unwrap().iter().filter(|s| **s == 1).count() == 2).then_some(())
    })
    .await;
    wait_for("the audit event", WAIT, || async { (ignored.load(Ordering::SeqCst) == 1).then_some(()) }).await;
    stop(shutdown, task).await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains(&0) && seen.contains(&1), "{seen:?}");
    assert!(!seen.contains(&2), "a delete has no handler here: {seen:?}");
    // Everything was settled: nothing is left in the queue.
    let mut queue = EventQueue::reattach(&amqp_url(), &setup.queue).await;
    assert!(queue.next_raw(Duration::from_millis(300)).await.is_none());
    cleanup(setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_dead_letters_and_unreadable_messages_too() {
    let mut setup = setup().await;
    let mut dead = DeadLetters::for_setup(&mut setup).await;
    let registry = Registry::new().on_all("*", |_e: IncomingEvent| async { Outcome::Fail("never".into()) });
    let (shutdown, task) = started(&setup, registry).await;
    publish_raw(&setup.exchange, "public.users", "m0", &event("public.users", "I", 0)).await;
    publish_raw(&setup.exchange, "public.users", "junk", b"not an event").await;
    let first = dead.next().await;
    let second = dead.next().await;
    let ids: Vec<&str> = [&first, &second].iter().filter_map(|d| d.message_id()).collect();
    assert_eq!(ids, ["m0", "junk"]);
    assert_eq!(first.header("error").as_deref(), Some("never"));
    assert_eq!(first.header("deliveries").as_deref(), Some("1"));
    assert_eq!(first.routing_key, "public.users");
    assert!(second.header("error").unwrap_or_default().starts_with("not a pgevents event"), "{second:?}");
    // Given-up messages were acknowledged after their copies were confirmed: none is left.
    let mut queue = EventQueue::reattach(&amqp_url(), &setup.queue).await;
    assert!(queue.next_raw(Duration::from_millis(300)).await.is_none());
    queue.close().await;
    stop(shutdown, task).await;
    dead.close().await;
    cleanup(setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_limited_and_shutdown_waits_for_running_handlers() {
    let mut setup = setup().await;
    setup.config.concurrency = 3;
    setup.config.prefetch = 10;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (r, m, d) = (running.clone(), most.clone(), done.clone());
    let registry = Registry::new().on_all("*", move |_e: IncomingEvent| {
        let (running, most, done) = (r.clone(), m.clone(), d.clone());
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            done.fetch_add(1, Ordering::SeqCst);
            Outcome::Ok
        }
    });
    let (shutdown, task) = started(&setup, registry).await;
    for seq in 0..9 {
        publish_raw(&setup.exchange, "public.t", &format!("m{seq}"), &event("public.t", "I", seq)).await;
    }
    wait_for("three handlers at once", WAIT, || async { (running.load(Ordering::SeqCst) == 3).then_some(()) }).await;
    // Shut down while three handlers run: they finish and are acknowledged; the rest stay queued.
    let finished_before = done.load(Ordering::SeqCst);
    stop(shutdown, task).await;
    let finished = done.load(Ordering::SeqCst);
    assert_eq!(running.load(Ordering::SeqCst), 0, "run returned before its handlers finished");
    assert!(finished >= finished_before + 3, "{finished_before} -> {finished}");
    assert_eq!(most.load(Ordering::SeqCst), 3, "never more than --concurrency handlers");
    let mut queue = EventQueue::reattach(&amqp_url(), &setup.queue).await;
    let mut left = 0;
    while queue.next_raw(Duration::from_millis(300)).await.is_some() {
        left += 1;
    }
    assert_eq!(left + finished, 9, "each message either handled and acknowledged, or still queued");
    cleanup(setup).await;
}

/// A poison message: a handler that always asks for a retry runs with growing, jittered waits
/// and, after `max_deliveries` runs, the message goes to the dead-letter exchange with the
/// reason; meanwhile and afterwards other messages are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_and_give_up_after_max_deliveries() {
    let mut setup = setup().await;
    let mut dead = DeadLetters::for_setup(&mut setup).await;
    setup.config.concurrency = 2;
    setup.config.retry_delay = Duration::from_millis(100);
    setup.config.retry_delay_max = Duration::from_millis(400);
    setup.config.max_deliveries = std::num::NonZeroU32::new(4);
    let runs: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let handled = Arc::new(AtomicUsize::new(0));
    let (log, ok) = (runs.clone(), handled.clone());
    let registry = Registry::new().on_all("*", move |e: IncomingEvent| {
        let (log, ok) = (log.clone(), ok.clone());
        async move {
            if e.event.seq == 0 {
                log.lock().unwrap().push(Instant::now());
                Outcome::Retry("the database is down".into())
            } else {
                ok.fetch_add(1, Ordering::SeqCst);
                Outcome::Ok
            }
        }
    });
    let (shutdown, task) = started(&setup, registry).await;
    publish_raw(&setup.exchange, "public.t", "poison", &event("public.t", "I", 0)).await;
    publish_raw(&setup.exchange, "public.t", "fine", &event("public.t", "I", 1)).await;
    let given_up = dead.next().await;
    assert_eq!(given_up.message_id(), Some("poison"));
    assert_eq!(given_up.header("error").as_deref(), Some("gave up after 4 deliveries: the database is down"));
    assert_eq!(given_up.header("deliveries").as_deref(), Some("4"));
    assert_eq!(given_up.body, event("public.t", "I", 0), "the copy carries the original body");
    wait_for("the other message", WAIT, || async { (handled.load(Ordering::SeqCst) == 1).then_some(()) }).await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 4, "one run per delivery, no more");
    // Waits of 100, 200 and 400 ms with ±20% jitter: never at once, and growing.
    let gaps: Vec<Duration> = runs.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, least) in gaps.iter().zip([80, 160, 320]) {
        assert!(*gap >= Duration::from_millis(least), "{gaps:?}");
    }
    stop(shutdown, task).await;
    let mut queue = EventQueue::reattach(&amqp_url(), &setup.queue).await;
    assert!(queue.next_raw(Duration::from_millis(300)).await.is_none(), "nothing left in the queue");
    queue.close().await;
    dead.close().await;
    cleanup(setup).await;
}

/// An outage is no fault of the message: `Unavailable` waits like `Retry` but is not counted,
/// so a message whose handler waited out an outage longer than `max_deliveries` runs is still
/// handled, not dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_do_not_count_toward_max_deliveries() {
    let mut setup = setup().await;
    let mut dead = DeadLetters::for_setup(&mut setup).await;
    setup.config.retry_delay = Duration::from_millis(20);
    setup.config.retry_delay_max = Duration::from_millis(40);
    setup.config.max_deliveries = std::num::NonZeroU32::new(2);
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let registry = Registry::new().on_all("*", move |_e: IncomingEvent| {
        let counted = counted.clone();
        async move {
            match counted.fetch_add(1, Ordering::SeqCst) {
                0..=5 => Outcome::Unavailable("the database is restarting".into()),
                6 => Outcome::Retry("a counted failure".into()),
                _ => Outcome::Ok,
            }
        }
    });
    let (shutdown, task) = started(&setup, registry).await;
    publish_raw(&setup.exchange, "public.t", "patient", &event("public.t", "I", 0)).await;
    wait_for("the message handled after the outage", WAIT, || async {
        (runs.load(Ordering::SeqCst) >= 8).then_some(())
    })
    .await;
    assert!(dead.queue.next_raw(Duration::from_millis(300)).await.is_none(), "nothing was dead-lettered");
    stop(shutdown, task).await;
    dead.close().await;
    cleanup(setup).await;
}

/// A handler that panics is counted like a `Retry` (it used to be redelivered at once, forever)
/// and the consumer goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_then_dead_lettered() {
    let mut setup = setup().await;
    let mut dead = DeadLetters::for_setup(&mut setup).await;
    setup.config.retry_delay = Duration::from_millis(20);
    setup.config.max_deliveries = std::num::NonZeroU32::new(3);
    let handled = Arc::new(AtomicUsize::new(0));
    let ok = handled.clone();
    let registry = Registry::new().on_all("*", move |e: IncomingEvent| {
        let ok = ok.clone();
        async move {
            if e.event.seq == 0 {
                panic!("boom on seq {}", e.event.seq);
            }
            ok.fetch_add(1, Ordering::SeqCst);
            Outcome::Ok
        }
    });
    let (shutdown, task) = started(&setup, registry).await;
    publish_raw(&setup.exchange, "public.t", "panics", &event("public.t", "I", 0)).await;
    publish_raw(&setup.exchange, "public.t", "after", &event("public.t", "I", 1)).await;
    let given_up = dead.next().await;
    assert_eq!(given_up.message_id(), Some("panics"));
    assert_eq!(
        given_up.header("error").as_deref(),
        Some("gave up after 3 deliveries: the handler panicked: boom on seq 0")
    );
    wait_for("the next message", WAIT, || async { (handled.load(Ordering::SeqCst) == 1).then_some(()) }).await;
    stop(shutdown, task).await;
    dead.close().await;
    cleanup(setup).await;
}

/// A gzip bomb (a small body that decompresses beyond `max_body_bytes`) is refused, to the
/// dead-letter exchange with the reason, without being inflated in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_dead_lettered() {
    use std::io::Write;
    let mut setup = setup().await;
    let mut dead = DeadLetters::for_setup(&mut setup).await;
    setup.config.max_body_bytes = 1 << 20;
    let registry = Registry::new().on_all("*", |_e: IncomingEvent| async { Outcome::Ok });
    let (shutdown, task) = started(&setup, registry).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 64 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{} bytes compressed", bomb.len());
    let message = pgevents_amqp::OutgoingMessage {
        message_type: None,
        mandatory: None,
        routing_key: "public.t".into(),
        message_id: "bomb".into(),
        content_type: "application/json".into(),
        content_encoding: Some("gzip".into()),
        body: bomb.clone(),
        ..Default::default()
    };
    publish_message(&setup.exchange, message).await;
    let given_up = dead.next().await;
    assert_eq!(given_up.message_id(), Some("bomb"));
    let error = given_up.header("error").unwrap_or_default();
    assert!(error.contains("larger than"), "{error}");
    assert_eq!(given_up.body, bomb, "the copy is the compressed original");
    assert_eq!(given_up.properties.content_encoding().map(String::as_str), Some("gzip"));
    stop(shutdown, task).await;
    dead.close().await;
    cleanup(setup).await;
}

/// A lost connection is reported at once (`on_connected(false)`, which drives the stages'
/// `/readyz`), even while a handler waits a minute to run a message again: the wait is given up
/// (the broker gives the message back), and after reconnecting the message is handled. It used
/// to be reported only once every running handler had finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_reported_at_once_even_while_a_retry_waits() {
    let node = RabbitNode::start().await;
    let exchange = unique_name("cx");
    let mut config = ConsumerConfig::new(node.url().parse().unwrap(), &exchange);
    config.queue = QueueMode::Durable(unique_name("cq"));
    config.retry_delay = Duration::from_secs(60);
    config.retry_delay_max = Duration::from_secs(60);
    let states: Arc<Mutex<Vec<bool>>> = Arc::default();
    let log = states.clone();
    config.on_connected = ConnectionWatch::new(move |up| log.lock().unwrap().push(up));
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let registry = Registry::new().on_all("*", move |_e: IncomingEvent| {
        let run = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if run == 0 {
                Outcome::Retry("not yet".into())
            } else {
                Outcome::Ok
            }
        }
    });
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { Consumer::new(config, registry).run(token).await.expect("consumer run") });
    let states_now = || states.lock().unwrap().clone();
    wait_for("the consumer to start", WAIT, || async { (states_now() == [true]).then_some(()) }).await;
    publish_raw_to(&node.url(), &exchange, "public.t", "m0", &event("public.t", "I", 0)).await;
    wait_for("the first run", WAIT, || async { (runs.load(Ordering::SeqCst) == 1).then_some(()) }).await;

    node.stop_app().await;
    wait_for("the loss to be reported", Duration::from_secs(5), || async {
        (states_now() == [true, false]).then_some(())
    })
    .await;
    node.start_app().await;
    wait_for("the message after reconnecting", WAIT, || async { (runs.load(Ordering::SeqCst) == 2).then_some(()) })
        .await;
    assert_eq!(states_now(), [true, false, true]);
    shutdown.cancel();
    task.await.unwrap();
}

/// On a quorum queue the broker counts deliveries (`x-delivery-count`): a message that keeps
/// failing and goes back to the queue each time (held longer than `max_hold`) is still given up
/// after `max_deliveries` runs, where on a classic queue its count would start again each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_counts_deliveries_across_requeues() {
    let mut setup = setup().await;
    let mut dead = DeadLetters::for_setup(&mut setup).await;
    setup.config.queue_type = pgevents_amqp::QueueType::Quorum;
    setup.config.max_deliveries = std::num::NonZeroU32::new(3);
    setup.config.retry_delay = Duration::from_millis(50);
    // Shorter than the first retry delay: every retry goes back to the queue.
    setup.config.max_hold = Duration::from_millis(10);
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let registry = Registry::new().on_all("*", move |_e: IncomingEvent| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Outcome::Retry("always fails".into()) }
    });
    let (shutdown, task) = started(&setup, registry).await;
    publish_raw(&setup.exchange, "public.t", "poison", &event("public.t", "I", 0)).await;
    let given_up = dead.next().await;
    assert_eq!(given_up.message_id(), Some("poison"));
    let error = given_up.header("error").unwrap_or_default();
    assert!(error.starts_with("gave up after 3 deliveries"), "{error}");
    assert_eq!(runs.load(Ordering::SeqCst), 3, "one run per delivery");
    stop(shutdown, task).await;
    dead.close().await;
    cleanup(setup).await;
}

/// A consumer bound with weights (a consistent-hash binding) to an exchange that does not exist
/// refuses to start, saying why, rather than declaring a topic exchange that would match none of
/// its keys and drop every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_on_a_missing_exchange_are_refused_not_declared_as_topic() {
    let mut setup = setup().await;
    setup.config.binding_keys = vec!["1".to_owned()];
    let consumer = Consumer::new(setup.config.clone(), Registry::new());
    let error = consumer.run(CancellationToken::new()).await.expect_err("refused");
    assert!(error.to_string().contains("declare the consistent-hash exchange first"), "{error}");
    cleanup(setup).await;
}

/// What a batch handler saw: each batch's events as (id, n), the events run alone, and when
/// each event started and ended.
#[derive(Default)]
struct Seen {
    batches: Vec<Vec<(i64, i64)>>,
    alone: Vec<(i64, i64)>,
    timeline: Vec<(Step, (i64, i64))>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Started,
    Ended,
}

struct Batches(Arc<Mutex<Seen>>);

fn id_and_n(incoming: &IncomingEvent) -> (i64, i64) {
    let number = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_i64()).unwrap_or(-1);
    (number(incoming.event.new.get("id")), number(incoming.event.new.get("n")))
}

impl pgevents_consumer::Handler for Batches {
    fn handle<'a>(&'a self, incoming: &'a IncomingEvent) -> pgevents_consumer::HandlerFuture<'a> {
        let mut seen = self.0.lock().unwrap();
        let event = id_and_n(incoming);
        seen.alone.push(event);
        seen.timeline.extend([(Step::Started, event), (Step::Ended, event)]);
        Box::pin(async { Outcome::Ok })
    }
}

impl pgevents_consumer::BatchHandler for Batches {
    fn handle_batch<'a>(&'a self, events: &'a [Arc<IncomingEvent>]) -> pgevents_consumer::BatchFuture<'a> {
        let batch: Vec<(i64, i64)> = events.iter().map(|e| id_and_n(e)).collect();
        {
            let mut seen = self.0.lock().unwrap();
            seen.batches.push(batch.clone());
            seen.timeline.extend(batch.iter().map(|event| (Step::Started, *event)));
        }
        Box::pin(async move {
            // A batch with n = 30 panics: each of its events then runs alone.
            assert!(!batch.iter().any(|(_, n)| *n == 30), "the batch handler fails");
            // Even n are done together; odd ones are left to run alone.
            let done = |n: i64| n % 2 == 0;
            let mut seen = self.0.lock().unwrap();
            seen.timeline.extend(batch.iter().filter(|(_, n)| done(*n)).map(|event| (Step::Ended, *event)));
            batch
                .iter()
                .map(
                    |(_, n)| {
                        if done(*n) {
                            pgevents_consumer::Together::Done
                        } else {
                            pgevents_consumer::Together::Alone
                        }
                    },
                )
                .collect()
        })
    }
}

/// A batch handler gets the events already waiting, at most `size` at once and never two of one
/// row; what it leaves, or all of a batch whose handler panicked, runs alone; a row's second
/// event runs after its first has ended. Every event ends exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_handler_takes_what_waits_and_leaves_the_rest_to_run_alone() {
    const SIZE: usize = 16;
    let setup = setup().await;
    // The queue exists (and fills) before the consumer starts.
    let (shutdown, task) = started(&setup, Registry::new()).await;
    stop(shutdown, task).await;
    let body = |id: i64, n: i64| {
        format!(
            r#"{{"table_name":"public.t","action":"U","old":{{}},"new":{{"id":{id},"n":{n}}},"diff":{{}},"id":{id},"lsn":"0/10","xid":1,"commit_time":"2026-11-23T00:00:00Z","seq":{n}}}"#
        )
    };
    let mut published = Vec::new();
    for n in 1..=60 {
        published.push((n, n));
    }
    // A second event of rows 1 to 5.
    for id in 1..=5 {
        published.push((id, 1000 + id));
    }
    for (id, n) in &published {
        publish_raw(&setup.exchange, "public.t", &format!("m{n}"), body(*id, *n).as_bytes()).await;
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut config = setup.config.clone();
    config.concurrency = 2;
    config.prefetch = 64;
    let consumer = Consumer::batched(config, Batches(seen.clone()), SIZE);
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { consumer.run(token).await.expect("consumer run") });
    // Ended: done in a batch (even n, in a batch that did not panic) or run alone.
    let ended = |seen: &Seen| -> Vec<(i64, i64)> {
        let together = seen.batches.iter().filter(|b| !b.iter().any(|(_, n)| *n == 30)).flatten();
        let mut ended: Vec<(i64, i64)> = together.filter(|(_, n)| n % 2 == 0).copied().collect();
        ended.extend(seen.alone.iter().copied());
        ended
    };
    wait_for("every event ended", WAIT, || async {
        (ended(&seen.lock().unwrap()).len() >= published.len()).then_some(())
    })
    .await;
    stop(shutdown, task).await;
    {
        let seen = seen.lock().unwrap();
        let mut all = ended(&seen);
        all.sort();
        let mut expected = published.clone();
        expected.sort();
        assert_eq!(all, expected, "each event ended once");
        assert!(seen.batches.iter().any(|b| b.len() > 1), "events were handed over together: {:?}", seen.batches);
        for batch in &seen.batches {
            assert!(batch.len() <= SIZE, "a batch larger than {SIZE}: {batch:?}");
            let mut ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), batch.len(), "two events of one row in a batch: {batch:?}");
        }
        // A row's later event started only after its first one ended.
        let at = |step: Step, event: (i64, i64)| seen.timeline.iter().rposition(|e| *e == (step, event));
        for id in 1..=5 {
            let (first_ended, second_started) = (at(Step::Ended, (id, id)), at(Step::Started, (id, 1000 + id)));
            assert!(
                first_ended.is_some() && first_ended < second_started,
                "row {id}: the first event ended at {first_ended:?}, the second started at {second_started:?}: {:?}",
                seen.timeline.iter().filter(|(_, (i, _))| *i == id).collect::<Vec<_>>()
            );
        }
        assert!(seen.alone.contains(&(30, 30)) && seen.alone.contains(&(1, 1)), "left and panicked events ran alone");
    }
    let mut queue = EventQueue::reattach(&amqp_url(), &setup.queue).await;
    assert!(queue.next_raw(Duration::from_millis(300)).await.is_none(), "everything was acknowledged");
    cleanup(setup).await;
}
