//! QMP, one command per connection: connect to the VM's socket, negotiate, run the command,
//! all within [`QMP_TIMEOUT`] (a wedged QEMU must not wedge the node).

use std::path::Path;
use std::time::Duration;

use qapi::futures::QmpStreamTokio;
use qapi::qmp;
use tokio::time::timeout;

use crate::DriverError;

/// How long one QMP command (connect, negotiate, execute) may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(3);

fn qmp_error(socket: &Path, message: impl std::fmt::Display) -> DriverError {
    DriverError::Qmp {
        socket: socket.to_path_buf(),
        message: message.to_string(),
    }
}

/// Connect, negotiate capabilities, run one command; all within [`QMP_TIMEOUT`].
macro_rules! qmp_execute {
    ($socket:expr, $command:expr) => {{
        let socket: &Path = $socket;
        let run = async {
            let stream = QmpStreamTokio::open_uds(socket)
                .await
                .map_err(|e| qmp_error(socket, e))?;
            let mut stream = stream.negotiate().await.map_err(|e| qmp_error(socket, e))?;
            stream
                .execute($command)
                .await
                .map_err(|e| qmp_error(socket, e))
        };
        match timeout(QMP_TIMEOUT, run).await {
            Ok(result) => result,
            Err(_) => Err(qmp_error(
                socket,
                format!("no answer within {QMP_TIMEOUT:?}"),
            )),
        }
    }};
}

/// QMP `query-status`.
pub async fn query_status(socket: &Path) -> Result<qmp::RunState, DriverError> {
    qmp_execute!(socket, qmp::query_status {}).map(|info| info.status)
}

/// QMP `system_powerdown` (ACPI power button).
pub async fn system_powerdown(socket: &Path) -> Result<(), DriverError> {
    qmp_execute!(socket, qmp::system_powerdown {}).map(|_| ())
}

/// QMP `quit`.
pub async fn quit(socket: &Path) -> Result<(), DriverError> {
    qmp_execute!(socket, qmp::quit {}).map(|_| ())
}
