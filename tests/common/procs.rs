//! Child processes for the multi-process tests: the test binary run again
//! (its `child` test, ignored on its own), told its role by `MAPKV_ROLE`.
//! Children talk to the parent in lines on standard output and take
//! orders on standard input.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

/// A child process; killed and reaped when dropped, so a failing test
/// leaves nothing behind.
pub struct Proc {
    pub child: Child,
    /// Lines of its standard output, read by a thread of their own so
    /// that a child that hangs fails the test instead of hanging it.
    lines: Receiver<String>,
    stdin: Option<ChildStdin>,
}

/// How long a child may stay silent before the test gives up on it.
const SILENCE: Duration = Duration::from_secs(60);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command running this test binary (or `exe`) as a child in `role`.
pub fn child_command(exe: &Path, role: &str, db: &Path, extra: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["--ignored", "--exact", "child", "--nocapture"])
        .arg("--test-threads=1")
        .env("MAPKV_ROLE", role)
        .env("MAPKV_DB", db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

impl Proc {
    pub fn spawn(role: &str, db: &Path, extra: &[(&str, String)]) -> Proc {
        let exe = std::env::current_exe().unwrap();
        Proc::start(child_command(&exe, role, db, extra)).expect("spawn child")
    }

    pub fn start(mut cmd: Command) -> std::io::Result<Proc> {
        let mut child = cmd.spawn()?;
        let out: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Ok(Proc {
            child,
            lines,
            stdin,
        })
    }

    /// The next line the child says that starts with `tag`, split in words
    /// after the tag (other lines, such as the test harness's, are skipped).
    pub fn expect(&mut self, tag: &str) -> Vec<String> {
        loop {
            let line = match self.lines.recv_timeout(SILENCE) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => panic!("child silent for {SILENCE:?} (hung?)"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("child exited before saying {tag:?}")
                }
            };
            // The harness prints "test child ... " with no newline before
            // the child's first line: look for the marker anywhere.
            let Some(at) = line.find(MARK) else { continue };
            let said = &line[at + MARK.len()..];
            assert!(
                !said.starts_with("FAIL"),
                "child failed: {}",
                said.trim_end()
            );
            if let Some(rest) = said.trim_end().strip_prefix(tag) {
                return rest.split_whitespace().map(str::to_string).collect();
            }
        }
    }

    pub fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
    }
}

/// Starts every line a child says to its parent.
const MARK: &str = "@@ ";

/// Says a line to the parent.
pub fn say(line: impl std::fmt::Display) {
    println!("\n{MARK}{line}");
    std::io::stdout().flush().unwrap();
}

/// Waits for a line from the parent.
pub fn hear() -> String {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    line.trim().to_string()
}

/// This test binary run as a child in `role` as user `nobody` (uid and
/// gid 65534) when the tests run as root; as this user otherwise. `dir`
/// (made 0755) receives a copy of the binary that `nobody` can run
/// wherever the build directory is. `None` where root cannot become
/// another user (some containers) and `CI` is unset: the caller skips.
pub fn spawn_as_nobody(
    dir: &Path,
    role: &str,
    db: &Path,
    extra: &[(&str, String)],
) -> Option<Proc> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = is_root();
    let mut exe = std::env::current_exe().unwrap();
    if root {
        let copy = dir.join("child-exe");
        std::fs::copy(&exe, &copy).unwrap();
        exe = copy;
    }
    let mut cmd = child_command(&exe, role, db, extra);
    if root {
        cmd.uid(65534).gid(65534);
    }
    match Proc::start(cmd) {
        Ok(p) => Some(p),
        Err(e) if root && std::env::var_os("CI").is_none() => {
            // Root without CAP_SETUID cannot become another user, and root
            // itself may open any file. CI runs as root with it: there
            // this is a failure, not a skip.
            eprintln!("NOT RUN: cannot run a child as nobody here ({e})");
            None
        }
        Err(e) => panic!("spawn child: {e}"),
    }
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
