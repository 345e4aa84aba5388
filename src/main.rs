use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tracing::info;

use ringway::cluster::{self, registry::Registry};
use ringway::config::{Cli, Command, LogFormat, ServeArgs};
use ringway::control::remotes::Remotes;
use ringway::control::startup::StartError;
use ringway::control::{self, Hub, listeners};
use ringway::core::worker;
use ringway::metrics::CoreMetrics;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    control::allocator::tune();
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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Check(args) => args.check().map(|ok| println!("{ok}")),
        Command::Token(t) => {
            println!("{}", t.mint());
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

/// Binds the ports, starts the worker cores, then runs the control side on this thread until
/// the node has drained.
fn serve(args: ServeArgs) -> Result<(), StartError> {
    control::ignore_hangup();
    let source = args.clients.key_source()?;
    let verifier = Arc::new(args.clients.verifier(&source)?);
    let cpus = worker::allowed_cpus();
    let workers = args.node.workers.unwrap_or(cpus.len()).max(1);
    let node_id = args.node.node_id();
    let (listeners, admin) = listeners::bind(args.node.listen, args.node.admin_listen, workers)?;
    let (handles, inboxes) = worker::inboxes(workers, args.node.core_inbox)?;
    let metrics: Vec<Arc<CoreMetrics>> = (0..workers).map(|_| Arc::default()).collect();

    let rt = control::runtime()?;
    let remotes = Remotes::connect(&rt, args.remote_setup(&node_id))?;
    let (calls_tx, calls_rx) = tokio::sync::mpsc::channel(4096);
    let calls_rx = remotes.any().then_some(calls_rx);
    let admission = Arc::new(args.admission.admission());
    let tls = args.node.tls_files()?.map(Arc::new);
    control::watchdog::install_wakeup_signal()?;
    let rules = worker::Rules {
        shard: args.shard_config(&node_id)?,
        verifier,
        token_grace: Duration::from_millis(args.clients.token_grace_ms),
        allowed_origins: Arc::new(args.clients.origins()),
        echo: args.links.echo,
        idem_ttl: args.idem.idem_ttl(),
        streams: args.streams.limits(),
        shared_streams: remotes.redis.is_some(),
        calls: calls_rx.is_some().then_some(calls_tx),
        shared_store: remotes
            .redis
            .is_some()
            .then_some(args.idem.redis_unavailable),
        local_bizs: remotes.local_bizs.clone(),
        batching: args.backend.batching(),
        report_to_kafka: remotes.kafka_out.is_some(),
        handshake_timeout: Duration::from_millis(args.clients.handshake_timeout_ms),
        admission: admission.clone(),
        tls: tls.clone(),
        peers: handles.clone(),
    };
    let cores = listeners.into_iter().zip(inboxes).enumerate();
    let cores = cores.map(|(index, (listener, inbox))| worker::Core {
        index,
        listener,
        inbox,
        metrics: metrics[index].clone(),
    });
    let pinned = args.node.pin_cores.then_some(&cpus[..]);
    let threads = worker::start_all(&rules, cores.collect(), pinned, &args.node.executor())?;

    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let registry = args.etcd_config(&node_id, started_ms).map(Registry::new);
    let routing = args.push_routing(&remotes);
    let setup = args.node_setup(&node_id, &source, admission, &remotes, routing);
    let node = Arc::new(Hub::new(handles, metrics, setup));
    info!(
        listen = %args.node.listen,
        admin = %args.node.admin_listen,
        workers,
        node_id = %node_id,
        echo = args.links.echo,
        "ringway ready"
    );
    let services = cluster::Services {
        remotes,
        calls: calls_rx,
        routing,
        location_ttl: args.location_ttl(),
        tls,
        started_ms,
    };
    rt.block_on(cluster::run(
        node,
        admin,
        services,
        args.lifecycle(registry),
    ))?;
    listeners::shut_every_socket();
    if !worker::join(threads, Duration::from_secs(2)) {
        tracing::warn!("a worker core did not stop within 2 s; exiting anyway");
    }
    // The control side's clients are not torn down one by one: the drain ended their
    // sessions, and a Kafka consumer's close can wait out a group rebalance.
    std::process::exit(0);
}
