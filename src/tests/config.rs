use crate::config::{Config, NetConfig};

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
