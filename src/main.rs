use std::process::ExitCode;

use corecast::config::Config;

/// mimalloc: per-thread heaps suit thread-per-core workers (the packet path itself allocates
/// nothing; see tests/allocations.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
corecast: a WebRTC media relay (SFU) for bare-metal Linux

usage: corecast [--config FILE] [--print-config | --check-backend]

  --config FILE    read configuration from a TOML file
  --print-config   print the effective configuration and exit
  --check-backend  say which I/O backend the workers would run on (workers.backend), and
                   why, and exit (2 where the configured one cannot run here)
  -h, --help       this text

Every key can be set by an environment variable CORECAST_<SECTION>_<KEY>,
e.g. CORECAST_MEDIA_PORTS=31000-31999; the environment wins over the file.
Log level: RUST_LOG (default info).";

fn main() -> ExitCode {
    let mut config_file = None;
    let mut print_config = false;
    let mut check_backend = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => match args.next() {
                Some(f) => config_file = Some(f),
                None => return fail("--config needs a file name"),
            },
            "--print-config" => print_config = true,
            "--check-backend" => check_backend = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return fail(&format!("unknown argument `{other}`\n\n{USAGE}")),
        }
    }
    let text = match &config_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t),
            Err(e) => return fail(&format!("cannot read configuration file {path}: {e}")),
        },
        None => None,
    };
    let config = match Config::load(text.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    if print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if check_backend {
        return match corecast::io::choose_backend(
            config.workers.backend,
            corecast::io::probe_io_uring,
        ) {
            Ok(choice) => {
                println!("{}: {}", choice.backend, choice.reason);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }
    corecast::logging::init();
    // webrtc-dtls verifies signatures through rustls; name its crypto provider explicitly so
    // that feature unification with other crates can never leave the choice ambiguous.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The control thread: a single-threaded runtime; the workers are threads of their own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the control runtime: {e}")),
    };
    match runtime.block_on(corecast::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("corecast: {message}");
    ExitCode::from(2)
}
