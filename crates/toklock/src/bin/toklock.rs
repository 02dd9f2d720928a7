//! The `toklock` executable: the library's CLI plus signal handling, nothing else.

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("toklock: cannot start the async runtime: {err}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(toklock::cli::main_with(std::env::args_os(), stop_signal()));
    std::process::exit(code);
}

/// Resolves on the first SIGINT/SIGTERM; a second one exits the process at once.
async fn stop_signal() {
    first_signal().await;
    tokio::spawn(async {
        first_signal().await;
        eprintln!("toklock: second signal, exiting now");
        std::process::exit(130);
    });
}

#[cfg(unix)]
async fn first_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn first_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
