//! `examples/queue.rs` run as its users run it: a producer, a consumer
//! process killed mid-way with SIGKILL, a second consumer that finishes.
//! (`cargo test` builds the examples before it runs this.)

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|d| d.parent()).unwrap();
    profile.join("examples").join(name)
}

#[test]
fn a_killed_consumer_loses_no_message() {
    let queue = example("queue");
    assert!(
        queue.exists(),
        "{} not built: run the tests with `cargo test`, which builds examples",
        queue.display()
    );
    for round in 0..3 {
        let out = Command::new(&queue).arg("demo").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "round {round}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // "1000 messages: the first consumer handled K before it was
        // killed; 0 lost, D delivered twice ..., 0 left in the queue"
        assert!(text.contains(" 0 lost,"), "{text}");
        assert!(text.contains(" 0 left in the queue"), "{text}");
        let handled: u32 = text
            .split("handled ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("the demo says how many the first consumer handled");
        assert!(handled < 1000, "the first consumer was not killed mid-way");
    }
}
