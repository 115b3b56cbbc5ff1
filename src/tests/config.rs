use std::path::PathBuf;

use crate::config::{Config, NetConfig};

#[test]
fn fixed_changes_name_the_settings_as_lua_values() {
    let now = Config {
        threads: 2,
        base_dir: PathBuf::from("/tmp/a"),
        pool_cpus: vec![0, 1],
        ..Config::default()
    };
    assert!(now.fixed_changes(&now.clone()).is_empty());
    // the network defaults may change while a runtime runs
    let mut asked = now.clone();
    asked.net.read_ms += 1;
    assert!(now.fixed_changes(&asked).is_empty());

    asked.threads = 3;
    asked.base_dir = PathBuf::from("/tmp/\"b\"\n1");
    asked.pool_cpus = Vec::new();
    assert_eq!(
        now.fixed_changes(&asked),
        [
            "threads = 2 (not 3)",
            r#"base_dir = "/tmp/a" (not "/tmp/\"b\"\0101")"#,
            "pool_cpus = { 0, 1 } (not {})",
        ]
    );
}

/// The defaults of the README's Configuration table, among them those the
/// nginx tests cannot show: the network timeouts (ngx_lua's: a test would
/// wait a minute for each) and the system temp dir as `base_dir` (the
/// tests set their own).
#[test]
fn defaults_are_the_documented_ones() {
    let net = NetConfig::default();
    assert_eq!(
        (
            net.connect_ms,
            net.send_ms,
            net.read_ms,
            net.keepalive_ms,
            net.pool_size
        ),
        (60_000, 60_000, 60_000, 60_000, 30)
    );
    let c = Config::default();
    assert_eq!(c.base_dir, std::env::temp_dir());
    assert_eq!((c.max_queue, c.pool_nice, c.tokio_threads), (1024, 10, 1));
    assert!(c.pool_cpus.is_empty());
    assert_eq!(c.net, net);
}
