//! `wasmrun`: flags and config, logging, then the server.

use std::process::ExitCode;

use clap::Parser;
use wasmrun::config::{Config, Flags, LogFormat};

fn main() -> ExitCode {
    // The daemon runs itself as a compile worker (see `wasm::compile_worker`).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|arg| arg == wasmrun::COMPILE_WORKER_COMMAND) {
        return wasmrun::compile_worker_main(&args[2..]);
    }
    let config = match Config::load(Flags::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wasmrun: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().thread_name("cri").enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wasmrun: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(wasmrun::server::serve(config));
    // A guest stuck in a blocking host call holds a blocking thread; the
    // daemon is done serving and does not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging is up: the failure goes where every other line goes.
            tracing::error!(error = %format!("{e:#}"), "wasmrun failed");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    use std::io::IsTerminal;
    // `validate` has checked the filter already.
    let filter = tracing_subscriber::EnvFilter::new(config.log_filter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
