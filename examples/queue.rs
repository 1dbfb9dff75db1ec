//! A work queue between processes in a shared-memory store: a producer
//! commits messages, consumers wait for commits, read what is new with
//! `changes_since`, and acknowledge by deleting. A consumer killed mid-way
//! loses nothing: what it had not acknowledged is still there for the next.
//!
//! ```text
//! cargo run --example queue                  # the demo: produce, kill a consumer, finish
//! cargo run --example queue -- produce NAME N
//! cargo run --example queue -- consume NAME  # prints "got ID BODY" per message
//! cargo run --release --example queue -- bench  # against a pipe and a Unix socket
//! ```
//!
//! Delivery is at least once: a consumer killed after it handled a message
//! and before its acknowledgement committed hands that message to the next
//! consumer too. Messages are keys `msg/` + the id (8 bytes, big-endian);
//! the producer's next id is the key `next`, committed with each batch.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mapkv::{Error, Store};

const PREFIX: &[u8] = b"msg/";
const NEXT: &[u8] = b"next";

fn msg_key(id: u64) -> Vec<u8> {
    [PREFIX, &id.to_be_bytes()[..]].concat()
}

fn msg_id(key: &[u8]) -> Option<u64> {
    let id = key.strip_prefix(PREFIX)?;
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

/// Commits messages; ids continue from what the store says.
struct Producer {
    store: Store,
    next: u64,
}

impl Producer {
    fn new(store: Store) -> mapkv::Result<Producer> {
        let next = match store.get(NEXT)? {
            Some(v) => u64::from_le_bytes(v.as_slice().try_into().unwrap_or_default()),
            None => 0,
        };
        Ok(Producer { store, next })
    }

    /// Commits `bodies` as one transaction; returns their first id.
    fn send(&mut self, bodies: &[&[u8]]) -> mapkv::Result<u64> {
        let first = self.next;
        let mut tx = self.store.begin_write()?;
        for body in bodies {
            tx.put(msg_key(self.next), body)?;
            self.next += 1;
        }
        tx.put(NEXT, self.next.to_le_bytes())?;
        tx.commit()?;
        Ok(first)
    }
}

/// Follows the queue: what was there when it started, then each commit's
/// new messages.
struct Consumer {
    store: Store,
    /// The last commit looked at.
    seen: u64,
    /// Messages seen and not yet handed out, by id.
    pending: BTreeMap<u64, Vec<u8>>,
}

impl Consumer {
    fn new(store: Store) -> mapkv::Result<Consumer> {
        let mut c = Consumer {
            store,
            seen: 0,
            pending: BTreeMap::new(),
        };
        c.rescan()?;
        Ok(c)
    }

    /// Every message in the store now (at start, or when the changes
    /// since `seen` were reclaimed).
    fn rescan(&mut self) -> mapkv::Result<()> {
        let snap = self.store.begin_read()?;
        for kv in snap.iter() {
            let (k, v) = kv?;
            if let Some(id) = msg_id(k) {
                self.pending.insert(id, v.to_vec());
            }
        }
        self.seen = snap.seq();
        Ok(())
    }

    /// The next messages in id order, waiting at most `timeout` for one.
    fn next_batch(&mut self, timeout: Duration) -> mapkv::Result<Vec<(u64, Vec<u8>)>> {
        if self.pending.is_empty() {
            self.store.wait_for_commit(self.seen, Some(timeout))?;
            let snap = self.store.begin_read()?;
            match snap.changes_since(self.seen) {
                Ok(changes) => {
                    for change in changes {
                        let (_, key, value) = change?;
                        if let (Some(id), Some(v)) = (msg_id(key), value) {
                            self.pending.insert(id, v.to_vec());
                        }
                    }
                    self.seen = snap.seq();
                }
                Err(Error::HistoryReclaimed { .. }) => {
                    drop(snap);
                    self.rescan()?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(std::mem::take(&mut self.pending).into_iter().collect())
    }

    /// Acknowledges handled messages: deletes them, in one commit.
    fn ack(&self, ids: impl IntoIterator<Item = u64>) -> mapkv::Result<()> {
        let mut tx = self.store.begin_write()?;
        for id in ids {
            tx.delete(msg_key(id))?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process here.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which is valid.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn this_exe() -> std::path::PathBuf {
    std::env::current_exe().expect("the example's own path")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        None | Some("demo") => demo(),
        Some("produce") => {
            let name = arg(1).ok_or("produce NAME N")?;
            let n: u64 = arg(2).ok_or("produce NAME N")?.parse()?;
            let mut p = Producer::new(Store::open_shm(name)?)?;
            for i in 0..n {
                p.send(&[format!("message {i}").as_bytes()])?;
            }
            Ok(())
        }
        Some("consume") => consume(arg(1).ok_or("consume NAME")?),
        Some("bench") => bench::run(),
        Some("bench-child") => bench::child(&args[1..]),
        Some(other) => Err(format!("unknown command {other:?}").into()),
    }
}

/// A consumer: prints `got ID BODY` for each message, acknowledges each
/// batch after printing it, and stops after `done` (or 30 s of nothing).
fn consume(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut c = Consumer::new(Store::open_shm(name)?)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut idle = Instant::now();
    loop {
        let batch = c.next_batch(Duration::from_millis(200))?;
        if batch.is_empty() {
            if idle.elapsed() > Duration::from_secs(30) {
                return Err("nothing for 30 s".into());
            }
            continue;
        }
        idle = Instant::now();
        let mut done = false;
        for (id, body) in &batch {
            let body = String::from_utf8_lossy(body);
            writeln!(out, "got {id} {body}")?;
            done |= body == "done";
        }
        out.flush()?; // handled...
        c.ack(batch.iter().map(|(id, _)| *id))?; // ...then acknowledged
        if done {
            return Ok(());
        }
    }
}

/// Starts `queue consume NAME` and a thread that collects the ids it says.
fn start_consumer(name: &str) -> std::io::Result<(Child, std::sync::mpsc::Receiver<u64>)> {
    let mut child = Command::new(this_exe())
        .args(["consume", name])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line == "ready" {
                let _ = tx.send(u64::MAX);
            } else if let Some(id) = line.split(' ').nth(1).and_then(|s| s.parse().ok()) {
                if tx.send(id).is_err() {
                    break;
                }
            }
        }
    });
    Ok((child, rx))
}

/// The demo: 1,000 messages; the first consumer is killed (SIGKILL) a
/// third of the way through, the second finishes. Every message arrives.
fn demo() -> Result<(), Box<dyn std::error::Error>> {
    const N: u64 = 1_000;
    let name = format!("mapkv-queue-demo-{}", std::process::id());
    let _ = Store::unlink_shm(&name);
    let mut producer = Producer::new(Store::open_shm(&name)?)?;
    let (mut first, got_first) = start_consumer(&name)?;
    assert_eq!(got_first.recv()?, u64::MAX, "consumer ready");
    let mut delivered = vec![0u32; N as usize];
    let mut killed_after = 0;
    for i in 0..N {
        let body = if i == N - 1 {
            "done".to_string()
        } else {
            format!("message {i}")
        };
        producer.send(&[body.as_bytes()])?;
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(1));
        }
        if i == N / 3 {
            // Kill it wherever it is: between handling and acknowledging,
            // or anywhere else.
            first.kill()?;
            first.wait()?;
            // Everything it said before it died (the reading thread ends
            // at the end of its output).
            for id in got_first.iter() {
                delivered[id as usize] += 1;
                killed_after += 1;
            }
        }
    }
    let (mut second, got_second) = start_consumer(&name)?;
    let status = second.wait()?;
    for id in got_second.iter().filter(|&id| id != u64::MAX) {
        delivered[id as usize] += 1;
    }
    if !status.success() {
        return Err(format!("the second consumer failed: {status}").into());
    }
    let lost = delivered.iter().filter(|&&n| n == 0).count();
    let twice = delivered.iter().filter(|&&n| n > 1).count();
    let left = Store::open_shm(&name)?.begin_read()?.iter().count() - 1; // `next`
    Store::unlink_shm(&name)?;
    println!(
        "{N} messages: the first consumer handled {killed_after} before it was killed; \
         {lost} lost, {twice} delivered twice (handled, not yet acknowledged), \
         {left} left in the queue"
    );
    if lost > 0 || left > 0 {
        return Err("messages were lost or left behind".into());
    }
    Ok(())
}

/// mapkv's queue against a pipe and a Unix socket between the same two
/// processes: one-message latency (sent one at a time, each acknowledged
/// before the next) and throughput in batches of 100 messages of 100
/// bytes. The child measures latency on CLOCK_MONOTONIC, shared by both.
mod bench {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    const LATENCY_MSGS: u64 = 5_000;
    const BATCH: usize = 100;
    const THROUGHPUT_MSGS: u64 = 200_000;
    const MSG: usize = 100;

    /// A message: its send time (8 bytes), then padding to 100 bytes.
    fn message(t: u64) -> [u8; MSG] {
        let mut m = [7u8; MSG];
        m[..8].copy_from_slice(&t.to_le_bytes());
        m
    }

    fn percentile(sorted: &[u64], p: f64) -> f64 {
        sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
    }

    /// What one transport did: latency p50/p99 (µs) and messages/s.
    struct Row {
        name: &'static str,
        p50: f64,
        p99: f64,
        rate: f64,
    }

    pub fn run() -> Result<(), Box<dyn std::error::Error>> {
        let rows = [shm()?, stream("pipe")?, stream("unix socket")?];
        println!("transport       latency p50   p99       messages/s (batches of {BATCH})");
        for r in &rows {
            println!(
                "{:<15} {:>8.1} µs {:>7.1} µs   {:>10.0}",
                r.name, r.p50, r.p99, r.rate
            );
        }
        let (m, p, u) = (&rows[0], &rows[1], &rows[2]);
        println!(
            "mapkv against pipe: latency p50 {:.2}x, throughput {:.2}x; against socket: {:.2}x, {:.2}x",
            m.p50 / p.p50,
            m.rate / p.rate,
            m.p50 / u.p50,
            m.rate / u.rate
        );
        Ok(())
    }

    /// The child's report: latencies in ns (sorted), then the seconds the
    /// throughput phase took from its first message to its last.
    fn report(
        child: &mut Child,
        mut from: impl Read,
    ) -> Result<(Vec<u64>, f64), Box<dyn std::error::Error>> {
        let mut text = String::new();
        from.read_to_string(&mut text)?;
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("bench child failed: {status}").into());
        }
        let mut lines = text.lines();
        let mut lat: Vec<u64> = lines
            .next()
            .ok_or("no latencies")?
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        lat.sort_unstable();
        let secs: f64 = lines.next().ok_or("no time")?.parse()?;
        Ok((lat, secs))
    }

    fn row(name: &'static str, lat: &[u64], secs: f64) -> Row {
        Row {
            name,
            p50: percentile(lat, 0.5),
            p99: percentile(lat, 0.99),
            rate: THROUGHPUT_MSGS as f64 / secs,
        }
    }

    fn shm() -> Result<Row, Box<dyn std::error::Error>> {
        let name = format!("mapkv-queue-bench-{}", std::process::id());
        let _ = Store::unlink_shm(&name);
        let store = Store::open_shm(&name)?;
        let mut producer = Producer::new(store.clone())?;
        let mut child = Command::new(this_exe())
            .args(["bench-child", "shm", &name])
            .stdout(Stdio::piped())
            .spawn()?;
        // One at a time: wait for each acknowledgement (the delete).
        let mut seen = store.begin_read()?.seq();
        for _ in 0..LATENCY_MSGS {
            let id = producer.send(&[&message(now_ns())])?;
            loop {
                let now = store.wait_for_commit(seen, Some(Duration::from_secs(10)))?;
                if store.begin_read()?.get(msg_key(id))?.is_none() {
                    break;
                }
                if now == seen {
                    return Err(format!("message {id} not acknowledged in 10 s (seq {now})").into());
                }
                seen = now;
            }
        }
        // Batches: as fast as the consumer keeps up.
        let batch: Vec<[u8; MSG]> = (0..BATCH).map(|_| message(0)).collect();
        let refs: Vec<&[u8]> = batch.iter().map(|m| &m[..]).collect();
        for _ in 0..THROUGHPUT_MSGS / BATCH as u64 {
            producer.send(&refs)?;
        }
        let out = child.stdout.take().expect("piped");
        let (lat, secs) = report(&mut child, out)?;
        drop(producer);
        drop(store);
        Store::unlink_shm(&name)?;
        Ok(row("mapkv (shm)", &lat, secs))
    }

    /// The same exchange over a byte stream: a pipe (the child's stdin;
    /// acknowledgements, then the report, on its stdout) or a Unix socket.
    fn stream(kind: &'static str) -> Result<Row, Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("mapkv-queue-sock-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let mut cmd = Command::new(this_exe());
        cmd.stdout(Stdio::piped());
        let (mut tx, mut ack, mut child): (Box<dyn Write>, Box<dyn Read>, Child);
        let mut out = None;
        if kind == "pipe" {
            cmd.args(["bench-child", "pipe"]).stdin(Stdio::piped());
            child = cmd.spawn()?;
            tx = Box::new(child.stdin.take().expect("piped"));
            ack = Box::new(child.stdout.take().expect("piped"));
        } else {
            let listener = UnixListener::bind(&dir)?;
            cmd.args(["bench-child", "socket", dir.to_str().ok_or("path")?]);
            child = cmd.spawn()?;
            let (s, _) = listener.accept()?;
            tx = Box::new(s.try_clone()?);
            ack = Box::new(s);
            out = child.stdout.take();
        }
        let mut one = [0u8; 1];
        for _ in 0..LATENCY_MSGS {
            tx.write_all(&message(now_ns()))?;
            tx.flush()?;
            ack.read_exact(&mut one)?;
        }
        let mut batch = Vec::with_capacity(BATCH * MSG);
        for _ in 0..BATCH {
            batch.extend_from_slice(&message(0));
        }
        for _ in 0..THROUGHPUT_MSGS / BATCH as u64 {
            tx.write_all(&batch)?;
        }
        tx.flush()?;
        drop(tx);
        let (lat, secs) = match out {
            Some(out) => report(&mut child, out)?,
            None => report(&mut child, ack)?, // the pipe: the rest of stdout
        };
        let _ = std::fs::remove_file(&dir);
        Ok(row(kind, &lat, secs))
    }

    /// The consumer side of each transport; prints its report.
    pub fn child(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
        let mut lat = Vec::with_capacity(LATENCY_MSGS as usize);
        let (start, end);
        if args[0] == "shm" {
            let mut c = Consumer::new(Store::open_shm(&args[1])?)?;
            let mut last = Instant::now();
            while lat.len() < LATENCY_MSGS as usize {
                let batch = c.next_batch(Duration::from_secs(1))?;
                if !batch.is_empty() {
                    last = Instant::now();
                } else if last.elapsed() > Duration::from_secs(10) {
                    let snap = c.store.begin_read()?;
                    let next = snap
                        .get(NEXT)?
                        .map(|v| u64::from_le_bytes(v.try_into().unwrap()));
                    return Err(format!(
                        "nothing in 10 s: seen {}, store at {}, next id {next:?}, {} got",
                        c.seen,
                        snap.seq(),
                        lat.len()
                    )
                    .into());
                }
                let t = now_ns();
                for (_, body) in &batch {
                    lat.push(t - u64::from_le_bytes(body[..8].try_into()?));
                }
                c.ack(batch.iter().map(|(id, _)| *id))?;
            }
            let (mut got, mut first) = (0u64, None);

            while got < THROUGHPUT_MSGS {
                let batch = c.next_batch(Duration::from_secs(1))?;
                if !batch.is_empty() {
                    last = Instant::now();
                } else if last.elapsed() > Duration::from_secs(10) {
                    let snap = c.store.begin_read()?;
                    let left: Vec<u64> = snap
                        .iter()
                        .filter_map(|kv| kv.ok().and_then(|(k, _)| msg_id(k)))
                        .collect();
                    return Err(format!(
                        "stalled at {got} messages, seen {}, store at {}, {} messages in it: {:?}",
                        c.seen,
                        snap.seq(),
                        left.len(),
                        &left[..left.len().min(5)]
                    )
                    .into());
                }
                first.get_or_insert_with(Instant::now);
                got += batch.len() as u64;

                c.ack(batch.iter().map(|(id, _)| *id))?;
            }
            start = first.ok_or("no batch")?;
            end = Instant::now();
        } else {
            let (mut rx, mut ack): (Box<dyn Read>, Box<dyn Write>) = if args[0] == "pipe" {
                (
                    Box::new(std::io::stdin().lock()),
                    Box::new(std::io::stdout()),
                )
            } else {
                let s = UnixStream::connect(&args[1])?;
                (Box::new(s.try_clone()?), Box::new(s))
            };
            let mut m = [0u8; MSG];
            while lat.len() < LATENCY_MSGS as usize {
                rx.read_exact(&mut m)?;
                lat.push(now_ns() - u64::from_le_bytes(m[..8].try_into()?));
                ack.write_all(&[1])?;
                ack.flush()?;
            }
            let mut buf = vec![0u8; BATCH * MSG];
            rx.read_exact(&mut buf)?;
            start = Instant::now();
            for _ in 1..THROUGHPUT_MSGS / BATCH as u64 {
                rx.read_exact(&mut buf)?;
            }
            end = Instant::now();
        }
        let text: Vec<String> = lat.iter().map(u64::to_string).collect();
        println!("{}", text.join(" "));
        println!("{}", (end - start).as_secs_f64());
        Ok(())
    }
}
