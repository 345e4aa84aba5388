use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use rand::TryRngCore;
use tracing::{info, warn};

use ringway::auth::{self, Identity, KeySource, Verifier};
use ringway::cluster::rebalance::ScaleSetup;
use ringway::cluster::registry::{EtcdConfig, Registry};
use ringway::cluster::routing::Mode;
use ringway::cluster::{Lifecycle, consumers};
use ringway::config::{Cli, Command, PushRouting, ServeArgs};
use ringway::control::demo::DemoSetup;
use ringway::control::fleet::{NodeRecord, RecordState};
use ringway::control::grpc_backend::{GrpcBackend, GrpcConfig};
use ringway::control::kafka::{self, KafkaConfig, KafkaOut};
use ringway::control::location::Locations;
use ringway::control::redis_idem::RedisIdem;
use ringway::control::routes::LiveRoutes;
use ringway::control::services::Remote;
use ringway::control::{self, NodeSetup, NodeState, listeners};
use ringway::core::admission::{Admission, Ramp};
use ringway::core::services::LocalBizs;
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
    // SIGHUP's default action ends the process; until the control thread's handler takes over,
    // a hangup is ignored rather than fatal. (A handler, unlike SIG_IGN, is not inherited by
    // the commands the node runs.)
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let source = match (&args.jwt_secret, &args.jwt_public_key) {
        (Some(s), _) => KeySource::Secret(s.as_bytes().to_vec()),
        (None, Some(path)) => KeySource::PublicKeyPem(
            std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?,
        ),
        (None, None) => {
            // No shared key is ever built in: a fresh one per process, shown once.
            let mut raw = [0u8; 24];
            rand::rngs::OsRng
                .try_fill_bytes(&mut raw)
                .map_err(|e| e.to_string())?;
            let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            let who = Identity {
                biz_id: 1,
                user_id: "demo".into(),
                device_id: "default".into(),
            };
            let sample = auth::mint_hs256(secret.as_bytes(), &who, 86_400);
            warn!(
                jwt_secret = %secret,
                sample_token = %sample,
                "no --jwt-secret or --jwt-public-key: using a random development secret; \
                 mint tokens with `ringway token --jwt-secret <secret> --user <id>`"
            );
            KeySource::Secret(secret.into_bytes())
        }
    };
    let verifier = Arc::new(Verifier::new(
        &source,
        args.jwt_issuer.as_deref(),
        args.jwt_audience.as_deref(),
    )?);

    let cpus = worker::allowed_cpus();
    let workers = args.workers.unwrap_or(cpus.len()).max(1);
    let node_id = args
        .node_id
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "ringway".into())
        });

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
    let kafka = args.kafka.as_ref().map(|brokers| KafkaConfig {
        brokers: brokers.clone(),
        group: args.kafka_group.clone(),
        push_topic: args.push_topic.clone(),
        undelivered_topic: args.undelivered_topic.clone(),
        presence_topic: args.presence_topic.clone(),
        node_id: node_id.clone(),
        latency: kafka::Latency {
            fetch_wait_ms: args.kafka_fetch_wait_ms,
            linger_ms: args.kafka_linger_ms,
        },
    });
    let kafka_out = match &kafka {
        Some(cfg) => Some(Arc::new(KafkaOut::new(cfg)?)),
        None => None,
    };
    let grpc_template = GrpcConfig {
        endpoint: String::new(),
        node_id: node_id.clone(),
        timeout: Duration::from_millis(args.backend_timeout_ms.max(1)),
        attempts: args.backend_attempts,
        breaker_failures: args.backend_breaker_failures,
        breaker_cooldown: Duration::from_millis(args.backend_breaker_cooldown_ms),
    };
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
    let admission = Arc::new(Admission::new(
        Ramp {
            initial: args
                .admit_initial
                .unwrap_or(args.capacity)
                .min(args.capacity),
            step: args.admit_step,
            interval: Duration::from_millis(args.admit_interval_ms.max(1)),
            capacity: args.capacity,
        },
        args.max_links_per_ip,
        Instant::now(),
    ));
    let origins = Arc::new(
        args.allowed_origins
            .iter()
            .filter(|o| !o.is_empty())
            .cloned()
            .collect(),
    );

    let shard_config = args.shard_config(&node_id)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(TlsFiles::load(cert, key)?)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
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
    let registry = (!args.etcd.is_empty()).then(|| {
        let advertise = args.advertise.unwrap_or(args.listen);
        let ip = match advertise.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            ip => ip.to_string(),
        };
        Registry::new(EtcdConfig {
            endpoints: args.etcd.clone(),
            prefix: args.etcd_prefix.trim_end_matches('/').to_owned(),
            lease_ttl: Duration::from_secs(args.etcd_lease_ttl_s.max(1)),
            report_every: Duration::from_millis(args.load_report_ms.max(10)),
            record: NodeRecord {
                id: node_id.clone(),
                ip,
                port: advertise.port(),
                weight: args.weight,
                capacity: args.capacity,
                load: 0,
                labels: args.labels.clone(),
                location: args.location.clone(),
                state: RecordState::Active,
                started_ms,
            },
        })
    });
    let routing = match (&kafka, args.etcd.is_empty(), args.push_routing) {
        (None, _, _) | (_, true, _) => None,
        (Some(_), false, PushRouting::Located) if redis.is_some() => Some(PushRouting::Located),
        (Some(_), false, PushRouting::Located) => {
            warn!(
                "--push-routing located needs --redis for the location registry: using broadcast"
            );
            Some(PushRouting::Broadcast)
        }
        (Some(_), false, PushRouting::Broadcast) => Some(PushRouting::Broadcast),
    };
    let node = Arc::new(NodeState::new(
        handles,
        metrics,
        NodeSetup {
            node_id: node_id.clone(),
            admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
            admin_origins: args.admin_allowed_origins.clone(),
            admin_idle: Duration::from_millis(args.admin_idle_timeout_ms.max(1)),
            admission,
            routes: routes.clone(),
            kafka: kafka_out.clone(),
            drain_rate: args.drain_rate,
            demo: DemoSetup {
                ws_port: args.listen.port(),
                mint_secret: match (&source, args.demo) {
                    (KeySource::Secret(s), true) => Some(s.clone()),
                    _ => None,
                },
            },
            max_outbound_bytes: args.max_outbound_bytes,
            republish: routing.is_some(),
        },
    ));
    let scale = Arc::new(ScaleSetup {
        topic: (!args.etcd.is_empty()).then(|| args.scale_topic.clone()),
        command: args.scale_up_cmd.clone(),
        wait: Duration::from_millis(args.scale_up_wait_ms),
    });
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
