use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use crate::socket::{Notifier, Rendezvous};

fn base(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ra-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn handshake_accepts_own_process_and_cleans_up() {
    use std::os::unix::fs::PermissionsExt;
    let base = base("own");
    let mut rv = Rendezvous::create(&base).unwrap();
    let dir = rv.path().parent().unwrap().to_path_buf();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(rv.accept_own().unwrap().is_none(), "nobody connected yet");
    let mut client = UnixStream::connect(rv.path()).unwrap();
    let server = rv.accept_own().unwrap().expect("own connection accepted");
    drop(rv);
    assert!(!dir.exists(), "socket directory removed");

    let n = Notifier::default();
    n.set_writer(Some(server));
    n.notify();
    n.notify();
    n.notify();
    assert_eq!(n.written(), 1, "one byte per batch");
    n.release(|| false); // the driver polled: the next wake-up writes again
    n.notify();
    assert_eq!(n.written(), 2);

    // A poll holds wake-ups; a completion that arrives while it checks
    // for work left over still writes its byte.
    n.release(|| false);
    n.hold();
    n.notify();
    assert_eq!(n.written(), 2, "held during the poll");
    n.release(|| {
        n.notify(); // a pool thread finishes a job just now
        false
    });
    assert_eq!(n.written(), 3, "a wake-up during release is not lost");
    n.hold();
    n.release(|| true); // work left over: come back at once
    assert_eq!(n.written(), 4);

    client.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 4);
    std::fs::remove_dir(&base).unwrap();
}

#[test]
fn stranger_is_rejected() {
    let base = base("stranger");
    let mut rv = Rendezvous::create(&base).unwrap();
    let path = rv.path().to_path_buf();
    // Another process connects first and holds its connection open.
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket,sys,time; s=socket.socket(socket.AF_UNIX); \
             s.connect(sys.argv[1]); print('c', flush=True); time.sleep(2)",
        ])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 2];
    child.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
    let _mine = UnixStream::connect(&path).unwrap();
    let got = rv.accept_own().unwrap();
    assert!(got.is_some(), "own connection found behind the stranger");
    assert_eq!(rv.rejected(), 1);
    let _ = child.kill();
    let _ = child.wait();
    drop(rv);
    std::fs::remove_dir(&base).unwrap();
}

#[test]
fn notify_without_driver_is_harmless() {
    let n = Notifier::default();
    n.notify();
    assert_eq!(n.written(), 0);
    assert!(!n.connected());
}

#[test]
fn stale_directory_of_dead_process_is_swept() {
    let base = base("stale");
    // 2147483646 is above Linux's pid_max: never a live process.
    let stale = base.join("resty-async.2147483646.abcdef");
    std::fs::create_dir(&stale).unwrap();
    let rv = Rendezvous::create(&base).unwrap();
    assert!(!stale.exists());
    drop(rv);
    std::fs::remove_dir(&base).unwrap();
}
