use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use rand::TryRngCore;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use ringway::auth::{self, Identity, KeySource, Verifier};
use ringway::config::{Cli, Command, ServeArgs};
use ringway::control::grpc_backend::{GrpcBackend, GrpcConfig};
use ringway::control::kafka::{KafkaConfig, KafkaOut};
use ringway::control::redis_idem::RedisIdem;
use ringway::control::routes::Routes;
use ringway::control::services::Remote;
use ringway::control::{self, NodeState};
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
    });
    let kafka_out = match &kafka {
        Some(cfg) => Some(Arc::new(KafkaOut::new(cfg)?)),
        None => None,
    };
    let grpc_cfg = |endpoint: &str| GrpcConfig {
        endpoint: endpoint.to_owned(),
        node_id: node_id.clone(),
        timeout: Duration::from_millis(args.backend_timeout_ms.max(1)),
        attempts: args.backend_attempts,
        breaker_failures: args.backend_breaker_failures,
        breaker_cooldown: Duration::from_millis(args.backend_breaker_cooldown_ms),
    };
    let (routes, local_bizs) = {
        // gRPC channels connect lazily inside the control runtime.
        let _guard = rt.enter();
        Routes::build(&args.backend, &args.routes, |url| {
            GrpcBackend::new(&grpc_cfg(url))
        })?
    };
    if routes.uses_kafka() && kafka_out.is_none() {
        return Err("a kafka: route needs --kafka".into());
    }
    let local_bizs = Arc::new(local_bizs);
    let remote = Remote {
        redis,
        routes: Arc::new(routes),
        kafka: kafka_out,
    };
    let (calls_tx, calls_rx) = tokio::sync::mpsc::channel(4096);
    let any_remote = remote.redis.is_some() || !local_bizs.all_local() || remote.kafka.is_some();
    let calls_rx = any_remote.then_some(calls_rx);
    let origins = Arc::new(
        args.allowed_origins
            .iter()
            .filter(|o| !o.is_empty())
            .cloned()
            .collect(),
    );

    for (i, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
        let setup = worker::WorkerSetup {
            index: i,
            listener,
            shard: args.shard_config(&node_id),
            verifier: verifier.clone(),
            allowed_origins: Arc::clone(&origins),
            echo: args.echo,
            idem_ttl: args.idem_ttl(),
            calls: calls_rx.is_some().then(|| calls_tx.clone()),
            shared_store: remote.redis.is_some().then_some(args.redis_unavailable),
            report_to_kafka: remote.kafka.is_some(),
            local_bizs: local_bizs.clone(),
            batching: (
                args.batch_size.max(1),
                Duration::from_millis(args.batch_delay_ms),
            ),
            handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
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
            .spawn(move || worker::run(setup))
            .map_err(|e| format!("starting worker {i}: {e}"))?;
    }

    let node = Arc::new(NodeState {
        cores: handles,
        metrics,
        draining: AtomicBool::new(false),
        counters: Default::default(),
        admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
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
        if let Some(rx) = calls_rx {
            tokio::spawn(control::services::run(rx, node.clone(), remote));
        }
        if let Some(cfg) = kafka {
            let node = node.clone();
            tokio::spawn(async move {
                if let Err(e) = control::kafka::consume_pushes(node, cfg).await {
                    tracing::error!(error = %e, "push consumer stopped");
                }
            });
        }
        let admin = tokio::net::TcpListener::from_std(admin).map_err(|e| e.to_string())?;
        control::run(node, admin, Duration::from_millis(args.shutdown_timeout_ms)).await;
        Ok::<(), String>(())
    })?;
    // Worker threads hold only links that are closed by now; the process ends here.
    std::process::exit(0);
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
