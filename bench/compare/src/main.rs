//! mapkv against LMDB (heed) and redb, the same workloads on each, in
//! fresh directories on the real disk. One command:
//!
//! ```sh
//! cargo run --release -p mapkv-compare -- [--n N] [--reps R] [--dir DIR]
//! ```
//!
//! Each engine runs each repetition in a child process of its own; every
//! figure is the median over the repetitions. The floors (durable 4 KiB
//! writes, DRAM latency) are measured in the same run. Flushes per commit
//! are counted with `strace -c` where strace is installed. The output is
//! one markdown table.

mod engines;
mod floors;
mod stats;
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use engines::{Lmdb, Mapkv, Redb, Res};

const ENGINES: [&str; 3] = ["mapkv", "lmdb", "redb"];
const SMALL_N: usize = 10_000;

type Figures = BTreeMap<String, f64>;

struct Args {
    n: usize,
    reps: usize,
    dir: PathBuf,
    strace: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: mapkv-compare [--n N (1000000)] [--reps R (3)] [--dir DIR (target/compare)] [--no-strace]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        n: 1_000_000,
        reps: 3,
        dir: PathBuf::from("target/compare"),
        strace: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--n" => a.n = val().parse().unwrap_or_else(|_| usage()),
            "--reps" => a.reps = val().parse().unwrap_or_else(|_| usage()),
            "--dir" => a.dir = PathBuf::from(val()),
            "--no-strace" => a.strace = false,
            _ => usage(),
        }
    }
    if a.n < 2 || a.reps == 0 {
        usage()
    }
    a
}

fn dispatch(engine: &str, f: impl FnOnce(&str) -> Res<()>) -> Res<()> {
    match engine {
        "mapkv" | "lmdb" | "redb" => f(engine),
        _ => Err(format!("unknown engine {engine}").into()),
    }
}

fn child(args: &[String]) -> Res<()> {
    let [mode, engine, dir, rest @ ..] = args else {
        return Err("bad child arguments".into());
    };
    let dir = Path::new(dir);
    let num = |i: usize| -> Res<usize> { Ok(rest.get(i).ok_or("missing number")?.parse()?) };
    dispatch(engine, |e| match (mode.as_str(), e) {
        ("--child", "mapkv") => workload::run::<Mapkv>(dir, num(0)?),
        ("--child", "lmdb") => workload::run::<Lmdb>(dir, num(0)?),
        ("--child", "redb") => workload::run::<Redb>(dir, num(0)?),
        ("--flushes", "mapkv") => workload::flushes::<Mapkv>(dir, num(0)?, num(1)?),
        ("--flushes", "lmdb") => workload::flushes::<Lmdb>(dir, num(0)?, num(1)?),
        ("--flushes", "redb") => workload::flushes::<Redb>(dir, num(0)?, num(1)?),
        _ => Err("bad child mode".into()),
    })
}

/// Runs this binary as a child with `args`, returns its `metric value` lines.
fn run_child(args: &[String]) -> Res<Figures> {
    let out = Command::new(std::env::current_exe()?).args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "child {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let mut f = Figures::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            f.insert(k.to_string(), v.parse()?);
        }
    }
    Ok(f)
}

/// Flush syscalls a run of `commits` commits of `batch` puts makes, minus
/// those of a run with none (opening and closing), per commit.
fn flushes_per_commit(engine: &str, dir: &Path, commits: usize, batch: usize) -> Res<String> {
    let calls = |commits: usize| -> Res<BTreeMap<String, u64>> {
        let d = dir.join(format!("strace-{engine}"));
        let _ = std::fs::remove_dir_all(&d);
        let out = dir.join(format!("strace-{engine}.txt"));
        let status = Command::new("strace")
            .args([
                "-f",
                "-c",
                "-e",
                "trace=msync,fsync,fdatasync,sync_file_range",
                "-o",
            ])
            .arg(&out)
            .arg(std::env::current_exe()?)
            .args(["--flushes", engine])
            .arg(&d)
            .args([commits.to_string(), batch.to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("strace of {engine} failed").into());
        }
        let mut m = BTreeMap::new();
        for line in std::fs::read_to_string(&out)?.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if let (Some(name), Some(n)) = (w.last(), w.get(3).and_then(|n| n.parse().ok())) {
                if ["msync", "fsync", "fdatasync", "sync_file_range"].contains(name) {
                    m.insert(name.to_string(), n);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_file(&out);
        Ok(m)
    };
    let (base, run) = (calls(0)?, calls(commits)?);
    let mut parts = Vec::new();
    for (name, n) in &run {
        let per = (*n as f64 - *base.get(name).unwrap_or(&0) as f64) / commits as f64;
        if per >= 0.005 {
            parts.push(format!("{per:.2} {name}"));
        }
    }
    Ok(if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    })
}

fn median(runs: &[Figures], key: &str) -> f64 {
    let mut v: Vec<f64> = runs.iter().filter_map(|r| r.get(key).copied()).collect();
    stats::percentile(&mut v, 0.5)
}

#[derive(Clone, Copy)]
enum Unit {
    /// Operations per second: higher is better.
    Ops,
    Micros,
    Millis,
    Bytes,
    /// Bytes per operation, also shown against the 116 raw bytes of a put.
    PerPut,
    /// A file size, also shown against the raw key + value bytes.
    File,
    /// A plain ratio (lower is better).
    Ratio,
    /// A plain count.
    Count,
}

fn show(v: f64, unit: Unit, n: usize) -> String {
    if v.is_nan() {
        return "—".into();
    }
    let raw = 116.0 * n as f64;
    match unit {
        Unit::Ops if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        Unit::Ops => format!("{:.1} K/s", v / 1e3),
        Unit::Micros => format!("{v:.0} µs"),
        Unit::Millis if v < 1.0 => format!("{:.0} µs", v * 1e3),
        Unit::Millis => format!("{v:.2} ms"),
        Unit::Bytes => format!("{:.1} MiB", v / 1048576.0),
        Unit::PerPut => format!("{v:.0} B ({:.1}× raw)", v / 116.0),
        Unit::File => format!("{:.1} MiB ({:.2}× raw)", v / 1048576.0, v / raw),
        Unit::Ratio => format!("{v:.2}×"),
        Unit::Count => format!("{v:.0}"),
    }
}

fn main() -> Res<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv
        .first()
        .is_some_and(|a| a == "--child" || a == "--flushes")
    {
        return child(&argv);
    }
    let a = parse();
    std::fs::create_dir_all(&a.dir)?;
    let dir = a.dir.canonicalize()?;

    let mut floors = Vec::new();
    let mut runs: BTreeMap<&str, Vec<Figures>> = BTreeMap::new();
    let mut small: BTreeMap<&str, Vec<Figures>> = BTreeMap::new();
    for rep in 0..a.reps {
        eprintln!("repetition {} of {}: floors", rep + 1, a.reps);
        floors.push(floors::measure(&dir.join("floors"))?);
        for engine in ENGINES {
            eprintln!(
                "repetition {} of {}: {engine}, N = {}",
                rep + 1,
                a.reps,
                a.n
            );
            let d = dir.join(engine);
            let _ = std::fs::remove_dir_all(&d);
            let args = [
                "--child",
                engine,
                d.to_str().ok_or("path")?,
                &a.n.to_string(),
            ];
            runs.entry(engine)
                .or_default()
                .push(run_child(&args.map(String::from))?);
            let args = [
                "--child",
                engine,
                d.to_str().ok_or("path")?,
                &SMALL_N.to_string(),
            ];
            small
                .entry(engine)
                .or_default()
                .push(run_child(&args.map(String::from))?);
            let _ = std::fs::remove_dir_all(&d);
        }
    }
    let mut flush = BTreeMap::new();
    if a.strace && Command::new("strace").arg("-V").output().is_ok() {
        for engine in ENGINES {
            eprintln!("counting flushes: {engine}");
            flush.insert(
                engine,
                (
                    flushes_per_commit(engine, &dir, 200, 1)?,
                    flushes_per_commit(engine, &dir, 20, 1000)?,
                ),
            );
        }
    }

    let rows: &[(&str, &str, Unit)] = &[
        (
            "fillseq: N puts in key order, one commit (disk settled by `sync`)",
            "fillseq_ops",
            Unit::Ops,
        ),
        (
            "fillseq, right after the stores before were deleted (disk busy)",
            "fillseq_busy_ops",
            Unit::Ops,
        ),
        (
            "fillrandom: N random puts, commits of 1,000",
            "fillrandom_ops",
            Unit::Ops,
        ),
        (
            "  disk bytes written per put",
            "fillrandom_wbytes",
            Unit::PerPut,
        ),
        ("  file after fillrandom", "fillrandom_file", Unit::File),
        ("fillsync: 2,000 one-put commits", "fillsync_ops", Unit::Ops),
        ("  commit p50", "fillsync_p50_us", Unit::Micros),
        ("  commit p99", "fillsync_p99_us", Unit::Micros),
        (
            "  disk bytes written per commit",
            "fillsync_wbytes",
            Unit::PerPut,
        ),
        (
            "readrandom: N random gets, 1 thread",
            "readrandom_ops",
            Unit::Ops,
        ),
        ("readrandom: 2 threads", "readrandom2_ops", Unit::Ops),
        (
            "readrandom: 1,000 keys per call (engines that can: get_many)",
            "readbatch_ops",
            Unit::Ops,
        ),
        (
            "cold: 10,000 random gets after the pages were dropped, per get",
            "cold_us",
            Unit::Micros,
        ),
        ("  the first 1,000, per get", "cold_first_us", Unit::Micros),
        (
            "readrandom: each key written byte by byte just before its get",
            "readrandom_bytewise_ops",
            Unit::Ops,
        ),
        (
            "readmissing: N gets of absent keys",
            "readmissing_ops",
            Unit::Ops,
        ),
        ("readseq: full iteration", "readseq_ops", Unit::Ops),
        (
            "overwrite: N random puts, commits of 1,000",
            "overwrite_ops",
            Unit::Ops,
        ),
        (
            "  disk bytes written per put",
            "overwrite_wbytes",
            Unit::PerPut,
        ),
        ("  file after overwrite", "overwrite_file", Unit::File),
        (
            "delete: N/2 random deletes, commits of 1,000",
            "delete_ops",
            Unit::Ops,
        ),
        ("  file after delete", "delete_file", Unit::Bytes),
        (
            "  disk held after delete ÷ live key+value bytes",
            "delete_alloc_ratio",
            Unit::Ratio,
        ),
        (
            "churned: 2,000 one-put commits putting deleted keys back",
            "churn_ops",
            Unit::Ops,
        ),
        ("  commit p50", "churn_p50_us", Unit::Micros),
        ("  commit p99", "churn_p99_us", Unit::Micros),
        ("  commit max", "churn_max_us", Unit::Micros),
        (
            "  disk bytes written per commit",
            "churn_wbytes",
            Unit::PerPut,
        ),
        (
            "  disk held ÷ live, worst sample (every 100 commits)",
            "churn_alloc_worst",
            Unit::Ratio,
        ),
        (
            "  disk held ÷ live after 1,000 commits",
            "churn_alloc_1000",
            Unit::Ratio,
        ),
        (
            "  disk held ÷ live after 2,000",
            "churn_alloc_end",
            Unit::Ratio,
        ),
        ("  file ÷ live after 2,000", "churn_file_end", Unit::Ratio),
        (
            "churned, writer alone: one-put overwrites for 3 s",
            "alone_writer_ops",
            Unit::Ops,
        ),
        ("  commit p99", "alone_writer_p99_us", Unit::Micros),
        (
            "churned, reader alone: transactions of 1,000 random gets",
            "alone_reader_ops",
            Unit::Ops,
        ),
        (
            "churned, writer beside a reader thread",
            "beside_writer_ops",
            Unit::Ops,
        ),
        ("  commit p50", "beside_writer_p50_us", Unit::Micros),
        ("  commit p99", "beside_writer_p99_us", Unit::Micros),
        (
            "  the reader beside the writer",
            "beside_reader_ops",
            Unit::Ops,
        ),
        (
            "one-put commits while compact() runs (engines that can)",
            "compacting_commits",
            Unit::Count,
        ),
        ("  commit p50", "compacting_p50_us", Unit::Micros),
        ("  commit p99", "compacting_p99_us", Unit::Micros),
        ("  commit max", "compacting_max_us", Unit::Micros),
        (
            "  disk held ÷ live after it (alone: the file is cut)",
            "compacted_alloc_ratio",
            Unit::Ratio,
        ),
        (
            "open of the loaded store (+ one get)",
            "open_ms",
            Unit::Millis,
        ),
        ("peak RSS", "peak_rss", Unit::Bytes),
        (
            "  anonymous RSS of the engine, loaded",
            "rss_anon",
            Unit::Bytes,
        ),
        ("  file-backed RSS, loaded", "rss_file", Unit::Bytes),
    ];
    let small_rows: &[(&str, &str, Unit)] = &[
        ("open, N = 10,000 (+ one get)", "open_ms", Unit::Millis),
        (
            "anonymous RSS of the engine, N = 10,000",
            "rss_anon",
            Unit::Bytes,
        ),
    ];

    println!(
        "N = {} keys of 16 bytes, values of 100 bytes; median of {} repetitions; ratio = mapkv ÷ peer \
         (for /s rows higher is better, for times and sizes lower is better).\n",
        a.n, a.reps
    );
    println!("| workload | mapkv | LMDB (heed) | redb | mapkv ÷ LMDB | mapkv ÷ redb |");
    println!("|---|---:|---:|---:|---:|---:|");
    let table = |rows: &[(&str, &str, Unit)], runs: &BTreeMap<&str, Vec<Figures>>, n: usize| {
        for &(label, key, unit) in rows {
            let [m, l, r] = ENGINES.map(|e| median(&runs[e], key));
            println!(
                "| {label} | {} | {} | {} | {:.2}× | {:.2}× |",
                show(m, unit, n),
                show(l, unit, n),
                show(r, unit, n),
                m / l,
                m / r
            );
        }
    };
    table(rows, &runs, a.n);
    let scale: Vec<String> = ENGINES
        .iter()
        .map(|e| {
            format!(
                "{:.2}×",
                median(&runs[e], "readrandom2_ops") / median(&runs[e], "readrandom_ops")
            )
        })
        .collect();
    println!(
        "| readrandom: 2 threads ÷ 1 thread | {} | {} | {} | | |",
        scale[0], scale[1], scale[2]
    );
    println!(
        "| readrandom: get_many ÷ single gets | {:.2}× | — | — | | |",
        median(&runs["mapkv"], "readbatch_ops") / median(&runs["mapkv"], "readrandom_ops")
    );
    table(small_rows, &small, SMALL_N);
    for (i, label) in [
        "flushes per one-put commit (strace)",
        "flushes per 1,000-put commit (strace)",
    ]
    .iter()
    .enumerate()
    {
        if !flush.is_empty() {
            let f: Vec<&str> = ENGINES
                .iter()
                .map(|e| {
                    if i == 0 {
                        flush[e].0.as_str()
                    } else {
                        flush[e].1.as_str()
                    }
                })
                .collect();
            println!("| {label} | {} | {} | {} | | |", f[0], f[1], f[2]);
        }
    }

    let fl = |f: fn(&floors::Floors) -> f64| {
        let mut v: Vec<f64> = floors.iter().map(f).collect();
        stats::percentile(&mut v, 0.5)
    };
    let inplace = fl(|f| f.inplace_fdatasync_us);
    println!("\n| floor (this machine, this run) | median |");
    println!("|---|---:|");
    let inplace_p99 = fl(|f| f.inplace_fdatasync_p99_us);
    println!("| 4 KiB in-place `pwrite` + `fdatasync` | {inplace:.0} µs |");
    println!("| … its 99th percentile | {inplace_p99:.0} µs |");
    println!(
        "| 4 KiB append + `fdatasync` | {:.0} µs |",
        fl(|f| f.append_fdatasync_us)
    );
    println!(
        "| `msync` of one freshly dirtied mapped page (file written with `write`: large folios) | {:.0} µs |",
        fl(|f| f.msync_page_us)
    );
    println!(
        "| … file written through a `MADV_RANDOM` map (4 KiB folios, as mapkv's log) | {:.0} µs |",
        fl(|f| f.msync_page_small_us)
    );
    println!(
        "| random dependent DRAM load (256 MiB chase) | {:.0} ns |",
        fl(|f| f.dram_load_ns)
    );
    println!(
        "\nmapkv's median one-put commit is {:.2}× the in-place `fdatasync` floor.",
        median(&runs["mapkv"], "fillsync_p50_us") / inplace
    );
    for (what, key) in [
        ("one-put commit on the churned store", "churn_p99_us"),
        ("writer beside a reader", "beside_writer_p99_us"),
    ] {
        println!(
            "mapkv's p99 {what} is {:.2}× the floor's p99.",
            median(&runs["mapkv"], key) / inplace_p99
        );
    }
    Ok(())
}
