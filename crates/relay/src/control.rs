//! The relay's local control socket, `DATA/control.sock` (a Unix socket only the relay's user
//! may open): administration of a running relay from the same machine. One request per
//! connection, one line each way.
//!
//! `backup DIR`: an online backup. The relay holds every request that writes off (they wait,
//! none fails), makes everything acknowledged durable (a flush barrier), copies the store into
//! `DIR/db` and the certificate, key and reset key beside it, and lets the writers go on. `DIR`
//! is then a data directory the relay can be started on (`crates/relay/README.md`, Backup and
//! restore). Answers `ok` or `error: <why>`.
//!
//! Every other request is an administration request (`crate::admin`, `kith-relay admin …`),
//! answered `ok <JSON>` or `error: <why>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::error::RelayError;
use crate::state::Shared;

/// The control socket's file name in the data directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Longest request line accepted.
const MAX_LINE: u64 = 4096;
/// Longest answer read (an account list of a large relay: about 150 bytes an account).
const MAX_ANSWER: u64 = 1 << 30;
/// Files beside the store that a data directory needs (the pinned certificate above all).
const IDENTITY_FILES: [&str; 3] = [
    crate::tls::SELF_SIGNED_CERT,
    crate::tls::SELF_SIGNED_KEY,
    crate::tls::RESET_KEY,
];

/// Binds the control socket (replacing a stale one) and serves it until aborted.
pub(crate) fn listen(shared: Arc<Shared>) -> Result<tokio::task::JoinHandle<()>, RelayError> {
    let path = shared.config.data_dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(RelayError::io("bind the control socket"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(RelayError::io("restrict the control socket"))?;
    }
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(&shared, stream).await {
                    tracing::warn!(error = %e, "control request failed");
                }
            });
        }
    }))
}

/// Removes the control socket (at shutdown).
pub(crate) fn remove_socket(data_dir: &Path) {
    let _ = std::fs::remove_file(data_dir.join(CONTROL_SOCKET));
}

async fn serve(shared: &Shared, stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read)
        .take(MAX_LINE)
        .read_line(&mut line)
        .await?;
    let answer = match line.trim_end().split_once(' ') {
        Some(("backup", dir)) => match backup(shared, Path::new(dir)).await {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        },
        _ => match crate::admin::answer(shared, line.trim_end()).await {
            Ok(value) => format!("ok {value}"),
            Err(e) => format!("error: {e}"),
        },
    };
    write.write_all(answer.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

async fn backup(shared: &Shared, dir: &Path) -> Result<(), String> {
    if !dir.is_absolute() {
        return Err("the backup directory must be an absolute path".into());
    }
    if dir.exists() {
        return Err(format!("{} exists already", dir.display()));
    }
    // Flush barrier: no writer is inside the store from here on, and everything written
    // before is made durable.
    let _exclusive = shared.write_barrier.write().await;
    shared.commit.durable().await.map_err(|e| e.to_string())?;
    let store = shared.store.clone();
    let db = crate::db_dir(dir);
    tokio::task::spawn_blocking(move || store.backup(&db))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    for name in IDENTITY_FILES {
        let from = shared.config.data_dir.join(name);
        if from.exists() {
            std::fs::copy(&from, dir.join(name)).map_err(|e| format!("copy {name}: {e}"))?;
        }
    }
    tracing::info!("online backup written");
    Ok(())
}

/// Asks the relay running on `data_dir` for an online backup into `to` (absolute, not yet
/// existing) through its control socket; what `kith-relay backup` does.
pub async fn request_backup(data_dir: &Path, to: &Path) -> Result<(), String> {
    let to: PathBuf = if to.is_absolute() {
        to.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| e.to_string())?.join(to)
    };
    request(data_dir, &format!("backup {}", to.display()))
        .await
        .map(drop)
}

/// Sends one administration request (`crate::admin`) to the relay running on `data_dir` and
/// returns its answer.
pub async fn admin(data_dir: &Path, request_line: &str) -> Result<serde_json::Value, String> {
    let answer = request(data_dir, request_line).await?;
    serde_json::from_str(&answer).map_err(|e| format!("the relay's answer does not read: {e}"))
}

/// Sends one request line; the answer after `ok` (trimmed), or the relay's error.
async fn request(data_dir: &Path, line: &str) -> Result<String, String> {
    let socket = data_dir.join(CONTROL_SOCKET);
    let stream = UnixStream::connect(&socket).await.map_err(|e| {
        format!(
            "cannot reach the relay's control socket {} (is the relay running on that data directory?): {e}",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let request = format!("{line}\n");
    write
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(read)
        .take(MAX_ANSWER)
        .read_line(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    match answer.trim_end() {
        "ok" => Ok(String::new()),
        other => match other.strip_prefix("ok ") {
            Some(rest) => Ok(rest.to_string()),
            None => Err(other.strip_prefix("error: ").unwrap_or(other).to_string()),
        },
    }
}
