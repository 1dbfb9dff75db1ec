//! Stores in POSIX shared memory (`Options::open_shm`): shared by
//! processes, removed by `unlink_shm`, created 0600, checked names, a full
//! `/dev/shm` as an error, and the durability they admit to.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::procs::{child_command, is_root, say, spawn_as_nobody, Proc};
use common::shm::ShmName;
use mapkv::{Durability, Error, Options, Store};

fn spawn(role: &str, name: &ShmName) -> Proc {
    let exe = std::env::current_exe().unwrap();
    let cmd = child_command(&exe, role, &name.path(), &[("MAPKV_SHM", name.0.clone())]);
    Proc::start(cmd).expect("spawn child")
}

#[test]
fn processes_share_a_store_in_memory_with_waits_and_changes() {
    let name = ShmName::new("share");
    let store = Store::open_shm(&name.0).unwrap();
    assert_eq!(store.durability(), Durability::Memory);
    store.put(b"hello", b"world").unwrap();
    let mut waiter = spawn("waiter", &name);
    let said = waiter.expect("ready");
    assert_eq!(said, vec!["world".to_string()]);
    let mut want = Vec::new();
    for i in 0..50u32 {
        let mut tx = store.begin_write().unwrap();
        // Immediate asks for a flush; a store in memory has none to give.
        tx.set_durability(Durability::Immediate);
        tx.put(format!("msg-{i:03}"), format!("body {i}")).unwrap();
        let seq = tx.commit().unwrap();
        want.push(format!("{seq} msg-{i:03}"));
    }
    store.put(b"stop", b"").unwrap();
    let mut got = Vec::new();
    loop {
        let line = waiter.expect("got");
        if line[1] == "stop" {
            break;
        }
        got.push(line.join(" "));
    }
    assert_eq!(got, want, "the other process saw every commit, in order");
    waiter.finish();
    drop(store);
    // The store outlives every process that had it open...
    let again = Store::open_shm(&name.0).unwrap();
    assert_eq!(
        again.get(b"msg-049").unwrap().as_deref(),
        Some(&b"body 49"[..])
    );
    drop(again);
    // ...until it is removed.
    Store::unlink_shm(&name.0).unwrap();
    assert!(!name.path().exists());
    assert!(matches!(
        Options::new().create(false).open_shm(&name.0),
        Err(Error::Io { .. })
    ));
    let fresh = Store::open_shm(&name.0).unwrap();
    assert_eq!(
        fresh.get(b"hello").unwrap(),
        None,
        "unlink removed the store"
    );
}

#[test]
fn a_writer_killed_mid_transaction_leaves_the_store_to_the_next() {
    let name = ShmName::new("killed");
    let store = Store::open_shm(&name.0).unwrap();
    store.put(b"k", b"before").unwrap();
    let mut dying = spawn("die-in-write", &name);
    dying.expect("writing");
    assert!(
        store.try_begin_write().unwrap().is_none(),
        "the child holds the writer lock"
    );
    drop(dying); // killed
    let mut tx = store.begin_write().unwrap();
    assert_eq!(tx.get(b"k").unwrap(), Some(&b"before"[..]));
    tx.put(b"k", b"after").unwrap();
    tx.commit().unwrap();
    assert!(store.verify().unwrap().is_ok());
    assert_eq!(store.get(b"uncommitted").unwrap(), None);
}

#[test]
fn a_new_store_is_0600_and_another_user_cannot_open_it_but_a_shared_group_can() {
    let private = ShmName::new("mode600");
    let store = Store::open_shm(&private.0).unwrap();
    store.put(b"secret", b"1").unwrap();
    let mode = std::fs::metadata(private.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "created {mode:o}");

    let shared = ShmName::new("mode660");
    let group = Options::new().mode(0o660).open_shm(&shared.0).unwrap();
    let mode = std::fs::metadata(shared.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "created {mode:o}");
    // The group `nobody` is in (65534) shares it.
    std::os::unix::fs::chown(shared.path(), None, Some(65534)).unwrap();

    if !is_root() {
        eprintln!("NOT RUN: needs root to run a child as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        ("MAPKV_SHM", private.0.clone()),
        ("MAPKV_SHM_SHARED", shared.0.clone()),
    ];
    let Some(mut other) = spawn_as_nobody(dir.path(), "other-user", &private.path(), &extra) else {
        return;
    };
    let said = other.expect("tried");
    assert_eq!(said, vec!["refused", "opened"], "0600 refused, 0660 opened");
    other.finish();
    assert_eq!(
        group.get(b"from-nobody").unwrap().as_deref(),
        Some(&b"hi"[..])
    );
    assert_eq!(store.get(b"secret").unwrap().as_deref(), Some(&b"1"[..]));
}

#[test]
fn names_are_checked_and_a_foreign_object_is_refused_untouched() {
    for bad in ["", "/", "a/b", "/a/b", ".", "..", "x\0y"] {
        assert!(
            matches!(Store::open_shm(bad), Err(Error::InvalidName { .. })),
            "{bad:?} accepted"
        );
    }
    let long = "n".repeat(256);
    assert!(matches!(
        Store::open_shm(&long),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        Store::unlink_shm("a/b"),
        Err(Error::InvalidName { .. })
    ));
    // A leading slash is the POSIX spelling of the same name.
    let name = ShmName::new("slash");
    Store::open_shm(&format!("/{}", name.0))
        .unwrap()
        .put(b"k", b"v")
        .unwrap();
    assert!(Store::open_shm(&name.0)
        .unwrap()
        .get(b"k")
        .unwrap()
        .is_some());

    let foreign = ShmName::new("foreign");
    let junk: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(foreign.path(), &junk).unwrap();
    match Store::open_shm(&foreign.0) {
        Err(e @ Error::NotAStore { .. }) => {
            assert!(e.to_string().contains(&foreign.0), "{e}")
        }
        other => panic!("a foreign object opened: {:?}", other.map(|_| ())),
    }
    assert_eq!(
        std::fs::read(foreign.path()).unwrap(),
        junk,
        "it was touched"
    );
}

/// A `/dev/shm` that fills up: the commit that needs room fails with
/// `ENOSPC`, the store keeps everything committed before, and deleting
/// makes room again. Runs in a child with a private mount namespace whose
/// `/dev/shm` is a 24 MiB tmpfs.
#[test]
fn a_full_dev_shm_is_an_error_not_a_sigbus() {
    let exe = std::env::current_exe().unwrap();
    let script = "mount -t tmpfs -o size=24m mapkv-test /dev/shm && exec \"$0\" \"$@\"";
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script]);
    cmd.arg(&exe);
    let inner = child_command(&exe, "fill", std::path::Path::new("/dev/shm/x"), &[]);
    cmd.args(inner.get_args());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.env("MAPKV_SHM", "mapkv-fill");
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let can = std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !can && std::env::var_os("CI").is_none() {
        eprintln!("NOT RUN: cannot make a mount namespace here (needs root)");
        return;
    }
    let mut child = Proc::start(cmd).expect("spawn child");
    let said = child.expect("full");
    println!("the child: {said:?}");
    let puts: u32 = said[0].parse().unwrap();
    assert!(puts >= 5, "only {puts} MiB fitted in 24 MiB");
    assert_eq!(said[1..], ["enospc", "intact", "room-again"]);
    child.finish();
}

/// Not a test on its own: the body of every child process above.
#[test]
#[ignore = "run by the other tests as a child process"]
fn child() {
    let role = std::env::var("MAPKV_ROLE").expect("run as a child");
    let name = std::env::var("MAPKV_SHM").unwrap();
    match role.as_str() {
        "waiter" => {
            let store = Store::open_shm(&name).unwrap();
            let snap = store.begin_read().unwrap();
            let hello = snap.get(b"hello").unwrap().unwrap().to_vec();
            let mut seen = snap.seq();
            drop(snap);
            say(format!("ready {}", String::from_utf8(hello).unwrap()));
            loop {
                store
                    .wait_for_commit(seen, Some(Duration::from_secs(30)))
                    .unwrap();
                // The snapshot may be newer than what the wait returned:
                // list up to it, and carry on from it.
                let snap = store.begin_read().unwrap();
                let mut stop = false;
                for change in snap.changes_since(seen).unwrap() {
                    let (seq, key, _value) = change.unwrap();
                    let key = String::from_utf8(key.to_vec()).unwrap();
                    say(format!("got {seq} {key}"));
                    stop |= key == "stop";
                }
                seen = snap.seq();
                if stop {
                    break;
                }
            }
        }
        "die-in-write" => {
            let store = Store::open_shm(&name).unwrap();
            let mut tx = store.begin_write().unwrap();
            tx.put(b"uncommitted", b"x").unwrap();
            say("writing");
            std::thread::sleep(Duration::from_secs(60));
        }
        "other-user" => {
            let refused = match Options::new().read_only(true).open_shm(&name) {
                Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EACCES) => {
                    "refused"
                }
                other => panic!("a 0600 store of root opened: {:?}", other.map(|_| ())),
            };
            let shared = std::env::var("MAPKV_SHM_SHARED").unwrap();
            let store = Store::open_shm(&shared).unwrap();
            store.put(b"from-nobody", b"hi").unwrap();
            say(format!("tried {refused} opened"));
        }
        "fill" => {
            let store = Store::open_shm(&name).unwrap();
            let mut puts = 0u32;
            let err = loop {
                match store.put(format!("v{puts}"), vec![puts as u8; 1 << 20]) {
                    Ok(()) => puts += 1,
                    Err(e) => break e,
                }
                assert!(puts < 1000, "/dev/shm never filled");
            };
            let enospc = match &err {
                Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => "enospc",
                other => panic!("filling /dev/shm: {other}"),
            };
            let intact = (0..puts)
                .all(|i| store.get(format!("v{i}")).unwrap() == Some(vec![i as u8; 1 << 20]))
                && store.verify().unwrap().is_ok();
            // Delete half and compact: the space comes back (punched),
            // and the next put fits.
            for i in (0..puts).step_by(2) {
                store.delete(format!("v{i}")).unwrap();
            }
            store.compact().unwrap();
            let room = store.put(b"after", vec![1u8; 1 << 20]).is_ok();
            say(format!(
                "full {puts} {enospc} {} {}",
                if intact { "intact" } else { "damaged" },
                if room { "room-again" } else { "still-full" }
            ));
        }
        other => panic!("unknown role {other}"),
    }
}
