use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tracing::info;

use ringway::auth::{self, Identity, Verifier};
use ringway::cluster::rebalance::ScaleSetup;
use ringway::cluster::registry::Registry;
use ringway::cluster::routing::Mode;
use ringway::cluster::{Lifecycle, consumers};
use ringway::config::{Cli, Command, PushRouting, ServeArgs};
use ringway::control::grpc_backend::{GrpcBackend, GrpcConfig};
use ringway::control::kafka::{KafkaConfig, KafkaOut};
use ringway::control::location::Locations;
use ringway::control::redis_idem::RedisIdem;
use ringway::control::routes::LiveRoutes;
use ringway::control::services::Remote;
use ringway::control::{self, NodeState, listeners};
use ringway::core::services::{LocalBizs, ServiceCall};
use ringway::core::tls::TlsFiles;
use ringway::core::{inbox, worker};
use ringway::metrics::CoreMetrics;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A panic on any thread means a core (and its links) or the control side is gone: a half
    // alive node would keep its listeners and silently fail a share of users. Stop the whole
    // process instead, so the supervisor restarts it and clients reconnect.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("ringway: a thread panicked; aborting so the node is restarted whole");
        std::process::abort();
    }));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Token(t) => {
            let who = Identity {
                biz_id: t.biz,
                user_id: t.user,
                device_id: t.device,
            };
            println!("{}", auth::mint_hs256(t.jwt_secret.as_bytes(), &who, t.ttl));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringway: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    control::ignore_hangup();
    let source = args.key_source()?;
    let verifier = Arc::new(Verifier::new(
        &source,
        args.jwt_issuer.as_deref(),
        args.jwt_audience.as_deref(),
    )?);

    let cpus = worker::allowed_cpus();
    let workers = args.workers.unwrap_or(cpus.len()).max(1);
    let node_id = args.node_id();

    let (listeners, admin) = bind(&args, workers)?;
    let (handles, inboxes): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| inbox::channel(args.core_inbox))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("creating core inboxes: {e}"))?
        .into_iter()
        .unzip();
    let metrics: Vec<Arc<CoreMetrics>> = (0..workers).map(|_| Arc::default()).collect();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ringway-control")
        .build()
        .map_err(|e| format!("starting control runtime: {e}"))?;
    let Remotes {
        redis,
        kafka,
        kafka_out,
        routes,
        local_bizs,
    } = remotes(&args, &rt, &node_id)?;
    let (calls_tx, calls_rx) = tokio::sync::mpsc::channel(4096);
    let any_remote = redis.is_some() || !local_bizs.all_local() || kafka_out.is_some();
    let calls_rx = any_remote.then_some(calls_rx);
    let admission = Arc::new(args.admission());
    let origins = Arc::new(args.origins());

    let shard_config = args.shard_config(&node_id)?;
    let tls = args.tls_files()?.map(Arc::new);
    control::watchdog::install_wakeup_signal().map_err(|e| format!("wake-up signal: {e}"))?;
    let executor = args.executor();
    for (i, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
        let setup = worker::WorkerSetup {
            index: i,
            listener,
            shard: shard_config.clone(),
            tls: tls.clone(),
            verifier: verifier.clone(),
            allowed_origins: Arc::clone(&origins),
            echo: args.echo,
            idem_ttl: args.idem_ttl(),
            calls: calls_rx.is_some().then(|| calls_tx.clone()),
            shared_store: redis.is_some().then_some(args.redis_unavailable),
            report_to_kafka: kafka_out.is_some(),
            local_bizs: local_bizs.clone(),
            batching: args.batching(),
            handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
            admission: admission.clone(),
            peers: handles.clone(),
            inbox,
            metrics: metrics[i].clone(),
        };
        worker::spawn(
            setup,
            args.pin_cores.then(|| cpus[i % cpus.len()]),
            &executor,
        )?;
    }

    let started_ms = epoch_ms();
    let registry = args.etcd_config(&node_id, started_ms).map(Registry::new);
    let routing = args.push_routing(kafka.is_some(), redis.is_some());
    let node = Arc::new(NodeState::new(
        handles,
        metrics,
        args.node_setup(
            &node_id,
            &source,
            admission,
            routes.clone(),
            kafka_out.clone(),
            routing,
        ),
    ));
    let scale = Arc::new(args.scale_setup());
    info!(
        listen = %args.listen,
        admin = %args.admin_listen,
        workers,
        node_id = %node_id,
        echo = args.echo,
        "ringway ready"
    );
    let control = Control {
        redis,
        routes,
        kafka: kafka.zip(kafka_out),
        calls: calls_rx,
        registry,
        tls,
        routing,
        scale,
        admin,
        started_ms,
    };
    rt.block_on(run_control(&args, node, control))?;
    // Worker threads hold only links that are closed by now; the process ends here.
    listeners::shut_every_socket();
    std::process::exit(0);
}

/// The client port's listeners, one per core, and the admin port's.
fn bind(
    args: &ServeArgs,
    workers: usize,
) -> Result<(Vec<std::os::fd::OwnedFd>, std::net::TcpListener), String> {
    listeners::refuse_if_taken(args.listen)?;
    let cores = (0..workers)
        .map(|_| listeners::bind_reuseport(args.listen))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let admin = std::net::TcpListener::bind(args.admin_listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("cannot listen on admin {}: {e}", args.admin_listen))?;
    Ok((cores, admin))
}

/// The services the node talks to, each when configured: Redis (the shared idempotency store),
/// Kafka, and the per-biz backend routes.
struct Remotes {
    redis: Option<Arc<RedisIdem>>,
    kafka: Option<KafkaConfig>,
    kafka_out: Option<Arc<KafkaOut>>,
    routes: Arc<LiveRoutes>,
    local_bizs: Arc<LocalBizs>,
}

fn remotes(
    args: &ServeArgs,
    rt: &tokio::runtime::Runtime,
    node_id: &str,
) -> Result<Remotes, String> {
    // The shared store, when configured: cores send it claims over one bounded channel.
    // Remote services, when configured; cores call them over one bounded channel.
    let redis = match &args.redis {
        Some(url) => {
            let timeout = Duration::from_millis(args.redis_timeout_ms.max(1));
            Some(Arc::new(rt.block_on(RedisIdem::connect(
                url,
                args.idem_ttl(),
                timeout,
            ))?))
        }
        None => None,
    };
    let kafka = args.kafka_config(node_id);
    let kafka_out = match &kafka {
        Some(cfg) => Some(Arc::new(KafkaOut::new(cfg)?)),
        None => None,
    };
    let grpc_template = args.grpc_config(node_id);
    let (routes, local_bizs) = {
        // gRPC channels connect lazily inside the control runtime.
        let _guard = rt.enter();
        LiveRoutes::new(
            args.backend.clone(),
            args.routes.clone(),
            kafka_out.is_some(),
            Box::new(move |url| {
                GrpcBackend::new(&GrpcConfig {
                    endpoint: url.to_owned(),
                    ..grpc_template.clone()
                })
            }),
        )?
    };
    // Routes watched in etcd can change any biz's backend: cores then send every upstream
    // message to the control thread, which applies the live map.
    let local_bizs = Arc::new(if args.etcd.is_empty() {
        local_bizs
    } else {
        LocalBizs::default()
    });
    Ok(Remotes {
        redis,
        kafka,
        kafka_out,
        routes: Arc::new(routes),
        local_bizs,
    })
}

/// What the control thread runs, besides the node's shared state.
struct Control {
    redis: Option<Arc<RedisIdem>>,
    routes: Arc<LiveRoutes>,
    kafka: Option<(KafkaConfig, Arc<KafkaOut>)>,
    calls: Option<tokio::sync::mpsc::Receiver<ServiceCall>>,
    registry: Option<Arc<Registry>>,
    tls: Option<Arc<TlsFiles>>,
    routing: Option<PushRouting>,
    scale: Arc<ScaleSetup>,
    admin: std::net::TcpListener,
    started_ms: u64,
}

/// Starts the control thread's services, then runs the node's life until it has drained.
async fn run_control(args: &ServeArgs, node: Arc<NodeState>, c: Control) -> Result<(), String> {
    let locations = match (&c.redis, args.tracks_locations()) {
        (Some(r), true) => Some(Locations::start(
            r.client(),
            node.clone(),
            Duration::from_millis(args.location_ttl_ms.max(1_000)),
        )),
        _ => None,
    };
    if let Some(rx) = c.calls {
        let remote = Remote {
            redis: c.redis,
            routes: c.routes,
            kafka: c.kafka.as_ref().map(|(_, out)| out.clone()),
            locations: locations.clone(),
        };
        tokio::spawn(control::services::run(rx, node.clone(), remote));
    }
    if let Some(registry) = &c.registry {
        tokio::spawn(registry.clone().run(node.clone()));
    }
    tokio::spawn(control::reload_on_hangup(node.clone(), c.tls));
    if let Some((cfg, out)) = c.kafka {
        let mode = match c.routing {
            None => Mode::Local,
            Some(PushRouting::Located) => {
                Mode::Located(locations.expect("located routing has redis"))
            }
            Some(PushRouting::Broadcast) => Mode::Broadcast(locations),
        };
        consumers::start(&node, &cfg, out, mode, c.scale.topic.clone(), c.started_ms).await?;
    }
    let admin = tokio::net::TcpListener::from_std(c.admin).map_err(|e| e.to_string())?;
    let life = Lifecycle {
        registry: c.registry,
        scale: c.scale,
        shutdown_timeout: Duration::from_millis(args.shutdown_timeout_ms),
    };
    ringway::cluster::run(node, admin, life).await;
    Ok(())
}

/// Milliseconds since the Unix epoch: the node's start in its etcd record.
fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
