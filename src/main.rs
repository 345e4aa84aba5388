use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use tracing::info;

use ringway::auth::{self, Identity, Verifier};
use ringway::cluster::registry::Registry;
use ringway::cluster::routing::Mode;
use ringway::cluster::{Lifecycle, consumers};
use ringway::config::{Cli, Command, PushRouting, ServeArgs};
use ringway::control::grpc_backend::{GrpcBackend, GrpcConfig};
use ringway::control::kafka::KafkaOut;
use ringway::control::location::Locations;
use ringway::control::redis_idem::RedisIdem;
use ringway::control::routes::LiveRoutes;
use ringway::control::services::Remote;
use ringway::control::{self, NodeState, listeners};
use ringway::core::services::LocalBizs;
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
    // SIGHUP's default action ends the process; until the control thread's handler takes over,
    // a hangup is ignored rather than fatal. (A handler, unlike SIG_IGN, is not inherited by
    // the commands the node runs.)
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let source = args.key_source()?;
    let verifier = Arc::new(Verifier::new(
        &source,
        args.jwt_issuer.as_deref(),
        args.jwt_audience.as_deref(),
    )?);

    let cpus = worker::allowed_cpus();
    let workers = args.workers.unwrap_or(cpus.len()).max(1);
    let node_id = args.node_id();

    listeners::refuse_if_taken(args.listen)?;
    let listeners = (0..workers)
        .map(|_| listeners::bind_reuseport(args.listen))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let admin = std::net::TcpListener::bind(args.admin_listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("cannot listen on admin {}: {e}", args.admin_listen))?;

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
    let kafka = args.kafka_config(&node_id);
    let kafka_out = match &kafka {
        Some(cfg) => Some(Arc::new(KafkaOut::new(cfg)?)),
        None => None,
    };
    let grpc_template = args.grpc_config(&node_id);
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
    let routes = Arc::new(routes);
    let (calls_tx, calls_rx) = tokio::sync::mpsc::channel(4096);
    let any_remote = redis.is_some() || !local_bizs.all_local() || kafka_out.is_some();
    let calls_rx = any_remote.then_some(calls_rx);
    let admission = Arc::new(args.admission());
    let origins = Arc::new(args.origins());

    let shard_config = args.shard_config(&node_id)?;
    let tls = args.tls_files()?.map(Arc::new);
    control::watchdog::install_wakeup_signal().map_err(|e| format!("wake-up signal: {e}"))?;
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
            batching: (
                args.batch_size.max(1),
                Duration::from_millis(args.batch_delay_ms),
            ),
            handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
            admission: admission.clone(),
            peers: handles.clone(),
            inbox,
            metrics: metrics[i].clone(),
        };
        let placement = if args.pin_cores {
            Placement::Fixed(cpus[i % cpus.len()])
        } else {
            Placement::Unbound
        };
        LocalExecutorBuilder::new(placement)
            .name(&format!("ringway-w{i}"))
            .preempt_timer(Duration::from_millis(args.preempt_ms.max(1)))
            .ring_depth(args.ring_depth as usize)
            .spawn(move || worker::run(setup))
            .map_err(|e| format!("starting worker {i}: {e}"))?;
    }

    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
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
    rt.block_on(async {
        let locations = match (&redis, args.tracks_locations()) {
            (Some(r), true) => Some(Locations::start(
                r.client(),
                node.clone(),
                Duration::from_millis(args.location_ttl_ms.max(1_000)),
            )),
            _ => None,
        };
        if let Some(rx) = calls_rx {
            let remote = Remote {
                redis,
                routes,
                kafka: kafka_out.clone(),
                locations: locations.clone(),
            };
            tokio::spawn(control::services::run(rx, node.clone(), remote));
        }
        if let Some(registry) = &registry {
            tokio::spawn(registry.clone().run(node.clone()));
        }
        tokio::spawn(control::reload_on_hangup(node.clone(), tls.clone()));
        if let (Some(cfg), Some(out)) = (kafka, kafka_out) {
            let mode = match routing {
                None => Mode::Local,
                Some(PushRouting::Located) => {
                    Mode::Located(locations.expect("located routing has redis"))
                }
                Some(PushRouting::Broadcast) => Mode::Broadcast(locations),
            };
            consumers::start(&node, &cfg, out, mode, scale.topic.clone(), started_ms).await?;
        }
        let admin = tokio::net::TcpListener::from_std(admin).map_err(|e| e.to_string())?;
        let life = Lifecycle {
            registry,
            scale,
            shutdown_timeout: Duration::from_millis(args.shutdown_timeout_ms),
        };
        ringway::cluster::run(node, admin, life).await;
        Ok::<(), String>(())
    })?;
    // Worker threads hold only links that are closed by now; the process ends here.
    listeners::shut_every_socket();
    std::process::exit(0);
}
