//! `blixard vm console NAME`: the VM's serial console, interactive.
//!
//! On a terminal, the terminal is put in raw mode (every key goes to the guest, Ctrl-C too)
//! and `Ctrl-]` detaches, as in telnet; the terminal is restored however the command ends.
//! With stdin not a terminal (a pipe, a file), what stdin holds is sent as it comes; once it
//! ends, output keeps printing until `--expect TEXT` is seen (exit 0; not seen within
//! `--timeout`: exit 1), or, without `--expect`, until the console has been quiet for
//! `--linger`.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::anyhow;
use blixard_api::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{self, status_err};

/// The detach key: Ctrl-] (as in telnet).
pub const DETACH: u8 = 0x1d;
/// Largest input message (the node refuses bigger ones).
const MAX_INPUT: usize = 4096;

#[derive(clap::Args, Debug)]
pub struct ConsoleArgs {
    pub name: String,
    /// First print the last this many bytes the console printed before attaching.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub replay: u32,
    /// Not a terminal: exit 0 as soon as the output contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub expect: Option<String>,
    /// With --expect: give up (exit 1) when TEXT has not appeared after this long.
    #[arg(long, default_value = "60s", allow_hyphen_values = true, value_parser = crate::duration::parse_secs)]
    pub timeout: Duration,
    /// Not a terminal, without --expect: once stdin has ended, exit after the console has
    /// been quiet this long.
    #[arg(long, default_value = "1s", allow_hyphen_values = true, value_parser = crate::duration::parse_secs)]
    pub linger: Duration,
}

enum Input {
    Data(Vec<u8>),
    Detach,
    End,
}

/// Restores the terminal's settings when dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved =
            tcgetattr(&stdin).map_err(|e| anyhow!("cannot read the terminal's settings: {e}"))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .map_err(|e| anyhow!("cannot put the terminal in raw mode: {e}"))?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// Reads stdin on a thread of its own (a blocking read must not hold the runtime); stops at
/// the detach key (terminal only) or at end of input.
fn read_stdin(tty: bool, tx: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; MAX_INPUT];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.blocking_send(Input::End);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    let _ = tx.blocking_send(Input::End);
                    return;
                }
            };
            let data = &buf[..n];
            if tty {
                if let Some(i) = data.iter().position(|&b| b == DETACH) {
                    if i > 0 {
                        let _ = tx.blocking_send(Input::Data(data[..i].to_vec()));
                    }
                    let _ = tx.blocking_send(Input::Detach);
                    return;
                }
            }
            if tx.blocking_send(Input::Data(data.to_vec())).is_err() {
                return;
            }
        }
    });
}

pub async fn run(addr: &str, a: ConsoleArgs) -> anyhow::Result<()> {
    blixard_core::spec::validate_name(&a.name).map_err(|e| anyhow!("{e}"))?;
    let tty = std::io::stdin().is_terminal();
    // No request timeout: a console stays open as long as the user wants.
    let mut api = blixard_api::BlixardClient::new(client::channel(addr, None).await?);
    let (tx, rx) = mpsc::channel::<pb::ConsoleInput>(16);
    tx.send(pb::ConsoleInput {
        name: a.name.clone(),
        data: Vec::new(),
        replay: a.replay,
    })
    .await
    .map_err(|_| anyhow!("console closed"))?;
    let mut output = api
        .console(ReceiverStream::new(rx))
        .await
        .map_err(|e| status_err(addr, e))?
        .into_inner();

    let _raw = if tty {
        eprintln!(
            "Connected to the console of VM '{}' (detach: Ctrl-])",
            a.name
        );
        Some(RawMode::enter()?)
    } else {
        None
    };
    let (in_tx, mut input) = mpsc::channel::<Input>(16);
    read_stdin(tty, in_tx);

    let mut tx = Some(tx);
    let mut stdin_ended = false;
    // The output so far (bounded), searched for --expect.
    let mut seen: Vec<u8> = Vec::new();
    let expect = a.expect.as_deref().map(str::as_bytes);
    let give_up = tokio::time::Instant::now() + a.timeout;
    let mut quiet_until = tokio::time::Instant::now() + a.linger;
    let mut out = std::io::stdout();
    loop {
        let waiting_for_end = !tty && stdin_ended && expect.is_none();
        tokio::select! {
            m = output.message() => match m.map_err(|e| status_err(addr, e))? {
                Some(chunk) => {
                    out.write_all(&chunk.data)?;
                    out.flush()?;
                    quiet_until = tokio::time::Instant::now() + a.linger;
                    if let Some(want) = expect {
                        seen.extend_from_slice(&chunk.data);
                        if seen.windows(want.len().max(1)).any(|w| w == want) {
                            return Ok(());
                        }
                        let keep = (want.len() * 2).max(64 * 1024);
                        if seen.len() > keep {
                            seen.drain(..seen.len() - keep);
                        }
                    }
                }
                None => {
                    if tty {
                        eprint!("\r\n[the console of '{}' closed]\r\n", a.name);
                    }
                    return match expect {
                        Some(_) => Err(anyhow!(
                            "the console of '{}' closed before printing {:?}",
                            a.name,
                            a.expect.as_deref().unwrap_or_default()
                        )),
                        None => Ok(()),
                    };
                }
            },
            i = input.recv(), if !stdin_ended => match i {
                Some(Input::Data(data)) => {
                    if let Some(t) = &tx {
                        if t.send(pb::ConsoleInput { data, ..Default::default() }).await.is_err() {
                            tx = None;
                        }
                    }
                }
                Some(Input::Detach) => {
                    eprint!("\r\n[detached from the console of '{}']\r\n", a.name);
                    return Ok(());
                }
                Some(Input::End) | None => {
                    stdin_ended = true;
                    // Ends our input; the node keeps sending output.
                    tx = None;
                    quiet_until = tokio::time::Instant::now() + a.linger;
                }
            },
            _ = tokio::time::sleep_until(quiet_until), if waiting_for_end => return Ok(()),
            _ = tokio::time::sleep_until(give_up), if expect.is_some() => {
                return Err(anyhow!(
                    "the console of '{}' did not print {:?} within {:?}",
                    a.name,
                    a.expect.as_deref().unwrap_or_default(),
                    a.timeout
                ));
            }
        }
    }
}
