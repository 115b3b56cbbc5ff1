use std::path::PathBuf;

use crate::config::Config;

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
