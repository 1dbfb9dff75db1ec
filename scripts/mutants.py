#!/usr/bin/env python3
"""Mutation proof of five protocol rules (issue 22, item 5).

For each rule, copies the repository to a scratch directory, breaks the
rule there with one textual change, runs the test suite, and reports which
test binaries fail and how long the first failure took. The repository
itself is never touched.

    python3 scripts/mutants.py [name ...]      # default: all five

Needs a few minutes per mutant on 2 cores (test binaries are rebuilt).
"""
import os, re, shutil, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = os.environ.get("MUTANT_DIR", "/tmp/mapkv-mutants")
TARGET = os.path.join(SCRATCH, "target")

MUTANTS = {
    # 1. Flush before acknowledging: an Immediate commit returns without
    #    its msync.
    "flush-before-publish": ("src/txn/write.rs",
        """        // 3. Durable: one msync of the ranges written (plus any earlier
        //    Eventual commits, which must not be lost behind this one).
        if self.durability == Durability::Immediate {""",
        """        // 3. Durable: one msync of the ranges written (plus any earlier
        //    Eventual commits, which must not be lost behind this one).
        if false && self.durability == Durability::Immediate {"""),
    # 2. CRC before trust: the checked read path and the quick path both
    #    skip the record's checksum.
    "crc-before-trust": ("src/engine/read.rs",
        "log::check_crc(base, &rec).map_err(|e| self.corrupted(rec.off, e.to_string()))?;",
        "let _ = &rec;"),
    # 3. Reader scan after publish: reclaim looks for readers before it
    #    publishes the relocated index (the SIGBUS of issue 20).
    "scan-after-publish": ("src/engine/reclaim.rs",
        """                        self.publish(&mut w, &map, &mut st);
                        // Alone, no snapshot open, the checkpoint names the
                        // new table: nothing can read the old one.
                        let alone = !self.pinned() && self.scan_readers().snapshots.is_empty();
                        self.faults.point(PausePoint::AfterRelocationScan);""",
        """                        let alone = !self.pinned() && self.scan_readers().snapshots.is_empty();
                        self.faults.point(PausePoint::AfterRelocationScan);
                        self.publish(&mut w, &map, &mut st);"""),
    # 4. Retire only after the last snapshot: retired space is freed (and
    #    reused) whatever snapshots are open.
    "retire-after-last-snapshot": ("src/engine/reclaim.rs",
        ".unwrap_or(u64::MAX);\n        let freed = self.free_retired(w, st.ckpt_seq.min(oldest));",
        ".unwrap_or(u64::MAX);\n        let _ = oldest;\n        let freed = self.free_retired(w, st.ckpt_seq);"),
    # 5. Grow before exposing: allocation past the end of the file without
    #    growing it.
    "grow-before-exposing": ("src/engine/alloc.rs",
        "if end > st.file_len {",
        "if false && end > st.file_len {"),
}

def run(name):
    path, old, new = MUTANTS[name]
    work = os.path.join(SCRATCH, "repo")
    if os.path.exists(work):
        shutil.rmtree(work)
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns("target", ".git", ".tmp*"))
    src = os.path.join(work, path)
    text = open(src).read()
    if text.count(old) != 1:
        sys.exit(f"{name}: the text to break is not in {path} exactly once")
    open(src, "w").write(text.replace(old, new))
    env = dict(os.environ, CARGO_TARGET_DIR=TARGET)
    build = subprocess.run(["cargo", "test", "--no-run", "-q"], cwd=work, env=env,
                           capture_output=True, text=True)
    if build.returncode != 0:
        return name, "does not build", []
    start = time.monotonic()
    proc = subprocess.Popen(["cargo", "test", "--no-fail-fast", "--", "--test-threads=2"],
                            cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    failed, first, binary = [], None, None
    for line in proc.stdout:
        m = re.match(r"\s+Running (\S+)", line)
        if m:
            binary = m.group(1)
        m = re.match(r"test (\S+) \.\.\. FAILED", line)
        if m:
            failed.append(f"{binary}: {m.group(1)}")
            if first is None:
                first = time.monotonic() - start
        if "error: test failed" in line and binary and not any(f.startswith(binary) for f in failed):
            failed.append(f"{binary}: (the binary died)")
            first = first or time.monotonic() - start
    proc.wait()
    verdict = f"caught, first failure after {first:.0f} s" if failed else "NOT CAUGHT"
    return name, verdict, failed

if __name__ == "__main__":
    names = sys.argv[1:] or list(MUTANTS)
    for n in names:
        name, verdict, failed = run(n)
        print(f"## {name}: {verdict}", flush=True)
        for f in failed:
            print(f"  - {f}", flush=True)
