use std::process::ExitCode;

/// mimalloc: markedly less time in the allocator than glibc under many small allocations.
/// Built without transparent huge pages (`no_thp`): on Linux set to `madvise`, its arenas
/// would otherwise be backed by 2 MiB pages as soon as touched, about 15 MiB of resident
/// memory in a fresh service.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

use chat_service::cli::{healthcheck, mint_token, Cli, Command};
use chat_service::config::Settings;
use chat_service::{startup, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let command = Cli::parse().command.unwrap_or(Command::Serve);
    if let Command::ConfigVars = command {
        println!("{}", Settings::variables().join("\n"));
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Serve => {
            telemetry::init(settings.log_format, &settings.log_level);
            startup::run(settings).await
        }
        Command::Token {
            sub,
            roles,
            ttl,
            email,
        } => mint_token(&settings, &sub, &roles, ttl, email.as_deref()).map(|t| println!("{t}")),
        Command::Healthcheck { url } => healthcheck(&settings, url).await,
        Command::ConfigVars => unreachable!("answered before the settings are read"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
