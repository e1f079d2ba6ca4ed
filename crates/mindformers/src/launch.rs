//! `mf launch`: starts one process per rank, torchrun-style, for the NCCL backend of
//! `init_context` (and any other program that reads torchrun's variables).
//!
//! Each child gets `RANK = node_rank * nproc_per_node + local_rank`, `WORLD_SIZE = nnodes *
//! nproc_per_node`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT`. Its
//! stdout and stderr lines are copied to ours prefixed with `[rank R] `. When a rank fails the
//! others are stopped (SIGTERM, then SIGKILL after a grace period), so a crashed rank never
//! leaves its peers waiting on a collective.
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mf_core::{invalid, MfError, Result};

/// How often the launcher checks its children.
const POLL: Duration = Duration::from_millis(20);

/// What `mf launch` starts and how the ranks find each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// Processes (ranks) on this node.
    pub nproc_per_node: usize,
    /// Nodes taking part; every node runs `mf launch` with its own `node_rank`.
    pub nnodes: usize,
    /// This node's index, `0..nnodes`.
    pub node_rank: usize,
    /// Where rank 0 runs (the host of node 0), passed on as `MASTER_ADDR`.
    pub master_addr: String,
    /// The port rank 0 listens on, passed on as `MASTER_PORT`.
    pub master_port: u16,
    /// The program and its arguments, run once per rank.
    pub command: Vec<String>,
    /// How long stopped ranks get between SIGTERM and SIGKILL.
    pub grace_period: Duration,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            nproc_per_node: 1,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            command: Vec::new(),
            grace_period: Duration::from_secs(5),
        }
    }
}

impl LaunchOptions {
    /// Checks the options are consistent.
    pub fn validate(&self) -> Result<()> {
        if self.nproc_per_node == 0 {
            return Err(invalid(
                "--nproc-per-node 0: start at least one process per node",
            ));
        }
        if self.nnodes == 0 {
            return Err(invalid("--nnodes 0: at least one node takes part"));
        }
        if self.node_rank >= self.nnodes {
            return Err(invalid(format!(
                "--node-rank {} is out of range for --nnodes {}; use 0..={}",
                self.node_rank,
                self.nnodes,
                self.nnodes - 1
            )));
        }
        if self.master_addr.trim().is_empty() {
            return Err(invalid(
                "--master-addr is empty; give the host of node 0 (127.0.0.1 on one node)",
            ));
        }
        if self.master_port == 0 {
            return Err(invalid(
                "--master-port 0: the other ranks could not find rank 0; choose a free port \
                 (default 29500)",
            ));
        }
        if self.command.first().is_none_or(|c| c.is_empty()) {
            return Err(invalid(
                "no command given: mf launch --nproc-per-node N -- <cmd> [args...]",
            ));
        }
        Ok(())
    }

    /// The number of ranks over all nodes.
    pub fn world_size(&self) -> usize {
        self.nnodes * self.nproc_per_node
    }

    /// The global rank of this node's `local_rank`.
    pub fn rank(&self, local_rank: usize) -> usize {
        self.node_rank * self.nproc_per_node + local_rank
    }

    /// The environment variables `local_rank`'s process is started with.
    pub fn rank_env(&self, local_rank: usize) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", self.rank(local_rank).to_string()),
            ("WORLD_SIZE", self.world_size().to_string()),
            ("LOCAL_RANK", local_rank.to_string()),
            ("LOCAL_WORLD_SIZE", self.nproc_per_node.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
    }
}

/// The signal (SIGINT, SIGTERM, SIGHUP) this process received while launching, 0 if none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: anything else is not async-signal-safe.
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// Forwards termination signals to the ranks while alive, restoring the old handlers on drop.
///
/// The children run in their own process groups (so a rank's own subprocesses can be stopped
/// with it), which means a Ctrl-C on the terminal reaches only the launcher; without this it
/// would die and leave the ranks running.
struct SignalGuard {
    previous: Vec<(libc::c_int, libc::sighandler_t)>,
}

impl SignalGuard {
    fn install() -> Self {
        RECEIVED.store(0, Ordering::SeqCst);
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        let mut previous = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe.
            let old = unsafe { libc::signal(sig, handler) };
            if old == libc::SIG_IGN {
                // Ignored on purpose (nohup, a background job): keep ignoring it.
                // SAFETY: puts back the disposition found above.
                unsafe { libc::signal(sig, libc::SIG_IGN) };
            } else {
                previous.push((sig, old));
            }
        }
        SignalGuard { previous }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for &(sig, old) in &self.previous {
            if old != libc::SIG_ERR {
                // SAFETY: reinstates the handler that was there before `install`.
                unsafe { libc::signal(sig, old) };
            }
        }
    }
}

/// Sends `sig` to the process group led by `child` (the rank and whatever it started).
fn signal_group(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain syscall; the group exists as long as the unreaped child leads it.
        unsafe { libc::kill(-pid, sig) };
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// "exited with status 3" or "was killed by signal 9 (SIGKILL)".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        (None, None) => format!("ended with {status}"),
    }
}

/// Copies `src` line by line to stdout or stderr with `prefix`; tells `done` when it ends.
fn copy_lines(
    src: impl Read + Send + 'static,
    prefix: String,
    to_stderr: bool,
    done: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(src);
        let mut line = Vec::new();
        // Bytes, not String: a rank printing invalid UTF-8 must not stop its output.
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            let mut out = Vec::with_capacity(prefix.len() + line.len());
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(&line);
            // One write per line under the lock keeps ranks' lines whole; a closed terminal
            // is ignored so the rank is still drained and does not block on a full pipe.
            let _ = if to_stderr {
                std::io::stderr().lock().write_all(&out)
            } else {
                let mut o = std::io::stdout().lock();
                o.write_all(&out).and_then(|_| o.flush())
            };
            line.clear();
        }
        let _ = done.send(());
    });
}

/// One started rank.
struct Rank {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
}

/// Stops every rank still running: SIGTERM to its process group, SIGKILL after `grace`.
fn stop_all(ranks: &mut [Rank], grace: Duration) {
    for r in ranks.iter().filter(|r| r.status.is_none()) {
        signal_group(&r.child, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && poll(ranks) {
        std::thread::sleep(POLL);
    }
    for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
        signal_group(&r.child, libc::SIGKILL);
        let _ = r.child.kill();
        r.status = r.child.wait().ok();
    }
}

/// Reaps finished ranks; true while any is still running.
fn poll(ranks: &mut [Rank]) -> bool {
    let mut running = false;
    for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
        match r.child.try_wait() {
            Ok(Some(s)) => r.status = Some(s),
            Ok(None) => running = true,
            // Not waitable any more (should not happen for our own child): treat as gone.
            Err(_) => r.status = Some(ExitStatus::from_raw(libc::SIGKILL)),
        }
    }
    running
}

/// Runs `opts.command` once per local rank and waits for all of them; fails, after stopping
/// the others, as soon as one rank exits non-zero or is killed. While it runs, SIGINT,
/// SIGTERM and SIGHUP sent to this process stop the ranks and make it return an error.
pub fn launch(opts: &LaunchOptions) -> Result<()> {
    opts.validate()?;
    let n = opts.nproc_per_node;
    let _signals = SignalGuard::install();
    let (done_tx, done_rx) = mpsc::channel();
    let mut ranks: Vec<Rank> = Vec::with_capacity(n);
    for local in 0..n {
        let rank = opts.rank(local);
        let mut cmd = Command::new(&opts.command[0]);
        cmd.args(&opts.command[1..])
            .envs(opts.rank_env(local))
            // N ranks reading one terminal would steal each other's input.
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: the closure runs between fork and exec and only makes one syscall. If the
        // launcher itself is killed (SIGKILL cannot be forwarded), the rank gets SIGTERM.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop_all(&mut ranks, opts.grace_period);
                return Err(MfError::Launch(format!(
                    "cannot start `{}` for rank {rank}: {e}; check that the command after `--` \
                     exists and is executable",
                    opts.command[0]
                )));
            }
        };
        let prefix = format!("[rank {rank}] ");
        if let Some(out) = child.stdout.take() {
            copy_lines(out, prefix.clone(), false, done_tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            copy_lines(err, prefix, true, done_tx.clone());
        }
        ranks.push(Rank {
            rank,
            child,
            status: None,
        });
    }
    drop(done_tx);

    let mut failure: Option<String> = None;
    while poll(&mut ranks) {
        let sig = RECEIVED.load(Ordering::SeqCst);
        if sig != 0 {
            failure = Some(format!(
                "interrupted by signal {sig} ({}); stopped all {n} rank(s) of this node",
                signal_name(sig)
            ));
            break;
        }
        // Ranks are checked in order, so of several failing together the lowest is named.
        if let Some(r) = ranks
            .iter()
            .find(|r| r.status.is_some_and(|s| !s.success()))
        {
            let left = ranks.iter().filter(|r| r.status.is_none()).count();
            failure = Some(format!(
                "rank {} (local rank {}) {}; stopped the {left} rank(s) still running",
                r.rank,
                r.rank - opts.rank(0),
                describe(r.status.unwrap_or_default())
            ));
            break;
        }
        std::thread::sleep(POLL);
    }
    if failure.is_some() {
        stop_all(&mut ranks, opts.grace_period);
    } else if let Some(r) = ranks
        .iter()
        .find(|r| r.status.is_some_and(|s| !s.success()))
    {
        // The last ranks may have finished, one of them failing, in the final poll.
        failure = Some(format!(
            "rank {} (local rank {}) {}",
            r.rank,
            r.rank - opts.rank(0),
            describe(r.status.unwrap_or_default())
        ));
    }
    // The readers end when the ranks' pipes close; a rank's leftover background process may
    // hold one open, so wait for the output only a bounded time.
    let deadline = Instant::now() + opts.grace_period.max(Duration::from_secs(1));
    for _ in 0..2 * n {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    match failure {
        Some(msg) => Err(MfError::Launch(msg)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(cmd: &[&str]) -> LaunchOptions {
        LaunchOptions {
            nproc_per_node: 2,
            command: cmd.iter().map(|s| s.to_string()).collect(),
            grace_period: Duration::from_secs(2),
            ..Default::default()
        }
    }

    #[test]
    fn ranks_and_environment_follow_torchrun() {
        let o = LaunchOptions {
            nproc_per_node: 4,
            nnodes: 3,
            node_rank: 2,
            ..opts(&["true"])
        };
        o.validate().unwrap();
        assert_eq!(o.world_size(), 12);
        assert_eq!(o.rank(1), 9);
        let env = o.rank_env(3);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("RANK"), Some("11"));
        assert_eq!(get("WORLD_SIZE"), Some("12"));
        assert_eq!(get("LOCAL_RANK"), Some("3"));
        assert_eq!(get("LOCAL_WORLD_SIZE"), Some("4"));
        assert_eq!(get("MASTER_ADDR"), Some("127.0.0.1"));
        assert_eq!(get("MASTER_PORT"), Some("29500"));
    }

    #[test]
    fn bad_options_are_refused_before_starting_anything() {
        let cases = [
            (
                LaunchOptions {
                    nproc_per_node: 0,
                    ..opts(&["true"])
                },
                "--nproc-per-node 0",
            ),
            (
                LaunchOptions {
                    nnodes: 2,
                    node_rank: 2,
                    ..opts(&["true"])
                },
                "--node-rank 2 is out of range for --nnodes 2",
            ),
            (opts(&[]), "no command given"),
            (
                LaunchOptions {
                    master_port: 0,
                    ..opts(&["true"])
                },
                "--master-port 0",
            ),
        ];
        for (o, needle) in cases {
            let e = launch(&o).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn success_failure_and_missing_programs() {
        launch(&opts(&["sh", "-c", "exit 0"])).unwrap();
        let e = launch(&opts(&[
            "sh",
            "-c",
            "[ $LOCAL_RANK = 0 ] && exec sleep 30; exit 7",
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rank 1 (local rank 1) exited with status 7")
                && e.contains("stopped the 1 rank(s)"),
            "{e}"
        );
        let e = launch(&opts(&[
            "sh",
            "-c",
            "[ $LOCAL_RANK = 0 ] && kill -9 $$; exec sleep 30",
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rank 0 (local rank 0) was killed by signal 9 (SIGKILL)"),
            "{e}"
        );
        let e = launch(&opts(&["/nonexistent/mf-rank-program"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot start `/nonexistent/mf-rank-program` for rank 0"),
            "{e}"
        );
    }
}
