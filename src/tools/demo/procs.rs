//! The demo's child processes: each component is the real `walship` binary, started with its
//! log in the demo's logs/ folder and killed when the demo ends.

use super::*;

/// A child process that is killed when dropped, so a failing demo leaves nothing running.
pub(super) struct Proc {
    pub(super) name: &'static str,
    pub(super) child: Child,
}

impl Proc {
    pub(super) fn spawn(
        name: &'static str,
        exe: &Path,
        args: &[&str],
        logs: &Path,
        stdout: bool,
    ) -> Result<Proc> {
        let log = open_log(logs, name)?;
        let child = dies_with_demo(Command::new(exe))
            .args(args)
            .stdin(Stdio::null())
            .stdout(if stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(log)
            .spawn()
            .ctx(|| format!("start {name} ({})", exe.display()))?;
        Ok(Proc { name, child })
    }

    pub(super) fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGKILL and reap.
    pub(super) fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub(super) fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(component = self.name, "did not stop on SIGTERM; killing it");
        self.kill();
    }

    pub(super) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// Starts a demo writer whose acknowledged (durable) commit end LSNs are collected.
pub(super) fn start_writer(
    opts: &DemoOptions,
    primary: &Path,
    logs: &Path,
    generation: u64,
    acked: &Arc<Acked>,
) -> Result<(Proc, std::thread::JoinHandle<()>)> {
    let seed = generation.to_string();
    let first_tx = (1 + generation * 1_000_000).to_string();
    let p = path_str(primary)?;
    let mut proc = Proc::spawn(
        "writer",
        &opts.exe,
        &[
            "demo-writer",
            p,
            "--seed",
            &seed,
            "--first-tx",
            &first_tx,
            "--wait-sync",
        ],
        logs,
        true,
    )?;
    let stdout = proc
        .child
        .stdout
        .take()
        .ok_or_else(|| Error::Other("writer has no stdout".into()))?;
    let acked = acked.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(end) = line.trim().parse::<u64>() {
                acked.record(end);
            }
        }
    });
    Ok((proc, reader))
}

pub(super) fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::InvalidArgument(format!("{}: path is not UTF-8", p.display())))
}
pub(super) fn read_listen_addr(serve: &mut Proc) -> Result<String> {
    let stdout = serve
        .child
        .stdout
        .take()
        .ok_or_else(|| Error::Other("serve has no stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .transpose()
        .ctx(|| "read serve's listening address".to_string())?
        .ok_or_else(|| Error::Other("serve exited before listening (see logs/serve.log)".into()))?;
    // Keep draining so serve never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    first
        .strip_prefix("listening on ")
        .map(|a| a.trim().to_string())
        .ok_or_else(|| Error::Other(format!("unexpected first line from serve: {first:?}")))
}

/// A component's log file in `logs/`, appended to across restarts.
pub(super) fn open_log(logs: &Path, name: &str) -> Result<fs::File> {
    let path = logs.join(format!("{name}.log"));
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .ctx(|| format!("open {}", path.display()))
}

pub(super) fn run_to_end(exe: &Path, args: &[&str], logs: &Path, name: &str) -> Result<()> {
    let log_path = logs.join(format!("{name}.log"));
    let log = open_log(logs, name)?;
    let log2 = log
        .try_clone()
        .ctx(|| format!("open {}", log_path.display()))?;
    let status = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .status()
        .ctx(|| format!("run walship {}", args.join(" ")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "`walship {}` failed ({status}); see {}",
            args.join(" "),
            log_path.display()
        )))
    }
}

/// Runs `walship ARGS` with `input` on its stdin and its stderr in `logs/NAME.log`; returns
/// what it printed on stdout (also appended to the log).
pub(super) fn run_with_input(
    exe: &Path,
    args: &[&str],
    input: &[u8],
    logs: &Path,
    name: &str,
) -> Result<String> {
    let log_path = logs.join(format!("{name}.log"));
    let log = open_log(logs, name)?;
    let mut child = dies_with_demo(Command::new(exe))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .ctx(|| format!("run walship {}", args.join(" ")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .ctx(|| format!("feed walship {}", args.join(" ")))?;
    }
    let done = child
        .wait_with_output()
        .ctx(|| format!("run walship {}", args.join(" ")))?;
    let said = String::from_utf8_lossy(&done.stdout).into_owned();
    let mut log = open_log(logs, name)?;
    log.write_all(said.as_bytes())
        .ctx(|| format!("write {}", log_path.display()))?;
    if done.status.success() {
        Ok(said)
    } else {
        Err(Error::Other(format!(
            "`walship {}` failed ({}); see {}",
            args.join(" "),
            done.status,
            log_path.display()
        )))
    }
}

/// `cmd`, set to receive SIGTERM when the demo dies, whatever it dies of (a signal included,
/// which runs no destructor): a demo interrupted leaves none of its processes running. The
/// demo starts its processes from its main thread, which lives as long as it does.
fn dies_with_demo(mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt;
    let demo = std::process::id() as i32;
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The demo died before the line above: nothing would signal this process.
            if libc::getppid() != demo {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        });
    }
    cmd
}
