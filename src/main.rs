use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use rand::TryRngCore;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use ringway::auth::{self, Identity, KeySource, Verifier};
use ringway::cluster::Lifecycle;
use ringway::cluster::orphans::adopt_orphans;
use ringway::cluster::rebalance::{ScaleEvent, ScaleSetup, on_scale_event};
use ringway::cluster::registry::{EtcdConfig, Registry};
use ringway::cluster::routing::{Mode, PushRouter, hand_off, push_topic_share};
use ringway::config::{Cli, Command, PushRouting, ServeArgs};
use ringway::control::demo::DemoSetup;
use ringway::control::fleet::{NodeRecord, RecordState};
use ringway::control::grpc_backend::{GrpcBackend, GrpcConfig};
use ringway::control::kafka::{self, KafkaConfig, KafkaOut, Membership, Subscription};
use ringway::control::location::Locations;
use ringway::control::redis_idem::RedisIdem;
use ringway::control::routes::LiveRoutes;
use ringway::control::services::Remote;
use ringway::control::{self, NodeSetup, NodeState};
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

    let cpus = allowed_cpus();
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

    refuse_if_taken(args.listen)?;
    let listeners = (0..workers)
        .map(|_| bind_reuseport(args.listen))
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
            start_consumers(&node, &cfg, out, mode, scale.topic.clone(), started_ms).await?;
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
    shut_every_socket();
    std::process::exit(0);
}

/// Starts the Kafka consumers: the push topic (shared by the fleet, or per node in broadcast
/// routing), the node's own topic (pushes other nodes routed here) and the scale events.
async fn start_consumers(
    node: &Arc<NodeState>,
    cfg: &KafkaConfig,
    out: Arc<KafkaOut>,
    mode: Mode,
    scale_topic: Option<String>,
    started_ms: u64,
) -> Result<(), String> {
    let located = matches!(mode, Mode::Located(_));
    let broadcast = matches!(mode, Mode::Broadcast(_));
    let clustered = located || broadcast;
    let node_topic = out.node_topic(&node.node_id);
    if clustered {
        let mut topics = vec![node_topic.clone()];
        topics.extend(scale_topic.clone());
        kafka::ensure_topics(&cfg.brokers, &topics).await?;
    }
    let router = Arc::new(PushRouter {
        node: node.clone(),
        kafka: out,
        mode,
    });
    let push_sub = Subscription {
        topic: cfg.push_topic.clone(),
        group: if broadcast {
            format!("{}.{}", cfg.group, node.node_id)
        } else {
            cfg.group.clone()
        },
        membership: if located {
            push_topic_share(node.clone())
        } else if broadcast {
            Membership::All
        } else {
            Membership::Group
        },
        fetch_wait_ms: cfg.latency.fetch_wait_ms,
    };
    spawn_consumer(node, &cfg.brokers, push_sub, router.clone(), |n| {
        !n.is_draining()
    });
    if located {
        tokio::spawn(adopt_orphans(
            router.clone(),
            cfg.brokers.clone(),
            cfg.group.clone(),
        ));
        node.node_topic_started();
        let sub = Subscription {
            topic: node_topic,
            group: format!("{}.node.{}", cfg.group, node.node_id),
            membership: Membership::All,
            fetch_wait_ms: cfg.latency.fetch_wait_ms,
        };
        let (n, brokers) = (node.clone(), cfg.brokers.clone());
        tokio::spawn(async move {
            let handle = |bytes: Vec<u8>, unsettled| {
                let n = n.clone();
                async move {
                    if let Some(push) = kafka::decode_push(&n, &bytes) {
                        let mut users = push.user_ids.clone();
                        if !push.user_id.is_empty() {
                            users.push(push.user_id.clone());
                        }
                        hand_off(&n, &push, users, true, &unsettled).await;
                    }
                }
            };
            if let Err(e) =
                kafka::consume(&brokers, &sub, || n.node_topic_keep_consuming(), handle).await
            {
                tracing::error!(error = %e, "node-topic consumer stopped");
            }
            n.node_topic_finished();
        });
    }
    if let (true, Some(topic)) = (clustered, scale_topic) {
        // A group per process start, reading from the start but acting only on events newer
        // than the process: a restarted node must not act on scale-ups it slept through, and
        // one published while this consumer was still joining must not be missed.
        let sub = Subscription {
            topic,
            group: format!("{}.scale.{}.{started_ms}", cfg.group, node.node_id),
            membership: Membership::Group,
            fetch_wait_ms: cfg.latency.fetch_wait_ms,
        };
        let (n, brokers) = (node.clone(), cfg.brokers.clone());
        tokio::spawn(async move {
            let handle = |bytes: Vec<u8>, _| {
                match serde_json::from_slice::<ScaleEvent>(&bytes) {
                    Ok(ev) if ev.at_ms < started_ms => {}
                    Ok(ev) => {
                        tokio::spawn(on_scale_event(n.clone(), ev));
                    }
                    Err(e) => warn!(error = %e, "ignoring a scale event that is not JSON"),
                }
                std::future::ready(())
            };
            if let Err(e) = kafka::consume(&brokers, &sub, || !n.is_draining(), handle).await {
                tracing::error!(error = %e, "scale-event consumer stopped");
            }
        });
    }
    Ok(())
}

fn spawn_consumer(
    node: &Arc<NodeState>,
    brokers: &str,
    sub: Subscription,
    router: Arc<PushRouter>,
    keep_going: fn(&NodeState) -> bool,
) {
    let (n, brokers) = (node.clone(), brokers.to_owned());
    tokio::spawn(async move {
        let handle = |bytes: Vec<u8>, unsettled| {
            let (n, router) = (n.clone(), router.clone());
            async move {
                if let Some(push) = kafka::decode_push(&n, &bytes) {
                    router.route(push, &unsettled).await;
                }
            }
        };
        if let Err(e) = kafka::consume(&brokers, &sub, || keep_going(&n), handle).await {
            tracing::error!(error = %e, "push consumer stopped");
        }
    });
}

/// SO_REUSEPORT is for this node's own cores: a second process on the same address would take
/// a share of the upgrades unseen.
fn refuse_if_taken(addr: SocketAddr) -> Result<(), String> {
    if control::listeners::someone_listens(addr) {
        return Err(format!(
            "cannot listen on {addr}: another process already listens there (is another ringway running?)"
        ));
    }
    Ok(())
}

/// Ends every socket of the process before it exits. The cores' sockets have requests in flight
/// on their io_uring rings, and a ring keeps its sockets alive past the process while those are
/// pending: the listeners stayed in LISTEN (in the port's reuseport group, never accepting
/// again) and connections still in their handshake stayed open for as long as their clients
/// did, so a node restarted on the port would have shared it with a dead one, and those clients
/// never heard the node was gone. shutdown(2) ends a socket whoever still holds it.
fn shut_every_socket() {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for fd in fds
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        // SAFETY: fstat and shutdown on an fd number of our own; a number that is not a socket
        // (or was closed meanwhile) is skipped or makes shutdown fail harmlessly.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
    }
}

/// One listening socket per worker core on the same address: the kernel spreads new
/// connections across them.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// The CPUs this process may run on, so `taskset` decides where workers are pinned.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity writes into the zeroed set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|c| libc::CPU_ISSET(*c, &set))
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}
