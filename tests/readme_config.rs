//! The README's configuration table lists every setting the binary accepts.

#[test]
fn readme_lists_every_setting_with_its_env_name() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (key, env, _default) in switchboard::config::SETTINGS_TABLE {
        assert!(
            readme.contains(&format!("`{key}`")),
            "README lacks setting {key}"
        );
        assert!(
            readme.contains(&format!("`{env}`")),
            "README lacks env var {env}"
        );
    }
}
