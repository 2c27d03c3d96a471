// figment::Jail takes closures that return figment::Error, which is what it is.
#![allow(clippy::result_large_err)]

use std::path::Path;

use figment::Jail;

use super::{ConfigError, NodeConfig, Overrides};

/// A complete file: TLS files and a device that exist in the jail.
const FILE: &str = r#"
data_dir = "/var/lib/kiseki"
ca_path = "ca.crt"
cert_path = "node.crt"
key_path = "node.key"
device_path = "dev0.img"
s3_addr = "0.0.0.0:9000"
peers = ["2=10.0.0.2:9200", "3=10.0.0.3:9200"]
"#;

fn jail_files(jail: &mut Jail, file: &str) {
    for name in ["ca.crt", "node.crt", "node.key", "dev0.img"] {
        jail.create_file(name, "x").unwrap();
    }
    jail.create_file("kiseki.toml", file).unwrap();
}

fn load(overrides: &Overrides) -> Result<NodeConfig, ConfigError> {
    NodeConfig::load(Some(Path::new("kiseki.toml")), overrides)
}

fn error_text(result: Result<impl std::fmt::Debug, ConfigError>) -> String {
    result.expect_err("the configuration must be refused").to_string()
}

#[test]
fn the_file_then_the_environment_then_flags() {
    Jail::expect_with(|jail| {
        jail_files(jail, FILE);
        let checked = load(&Overrides::default()).unwrap().check().unwrap();
        assert_eq!(checked.s3_addr.to_string(), "0.0.0.0:9000");
        assert_eq!(checked.grpc_addr.to_string(), super::GRPC_ADDR_DEFAULT);
        assert_eq!(checked.config.node_id, 1);
        assert_eq!(checked.peers.len(), 2);
        assert_eq!(checked.peers[&3].to_string(), "10.0.0.3:9200");

        // The environment replaces the file's values; peers as one string; variables
        // that are not configuration are left alone.
        jail.set_env("KISEKI_S3_ADDR", "127.0.0.1:9443");
        jail.set_env("KISEKI_NODE_ID", "4");
        jail.set_env("KISEKI_PEERS", "1=10.0.0.1:9200, 2=10.0.0.2:9200");
        jail.set_env("KISEKI_S3_ENDPOINT", "https://somewhere");
        jail.set_env("KISEKI_CRL_RELOAD_SECS", "30");
        let checked = load(&Overrides::default()).unwrap().check().unwrap();
        assert_eq!(checked.s3_addr.to_string(), "127.0.0.1:9443");
        assert_eq!(checked.config.node_id, 4);
        assert_eq!(checked.peers.keys().copied().collect::<Vec<_>>(), [1, 2]);

        // A flag replaces both.
        let flags = Overrides {
            s3_addr: Some("127.0.0.1:9500".into()),
            peers: vec!["5=10.0.0.5:9200".into()],
            ..Overrides::default()
        };
        let checked = load(&flags).unwrap().check().unwrap();
        assert_eq!(checked.s3_addr.to_string(), "127.0.0.1:9500");
        assert_eq!(checked.peers.keys().copied().collect::<Vec<_>>(), [5]);

        // Without a file, the environment alone is a configuration.
        for (name, value) in [
            ("KISEKI_DATA_DIR", "/srv/kiseki"),
            ("KISEKI_CA_PATH", "ca.crt"),
            ("KISEKI_CERT_PATH", "node.crt"),
            ("KISEKI_KEY_PATH", "node.key"),
            ("KISEKI_DEVICE_PATH", "dev0.img"),
        ] {
            jail.set_env(name, value);
        }
        let from_env = NodeConfig::load(None, &Overrides::default()).unwrap();
        assert_eq!(from_env.data_dir, Path::new("/srv/kiseki"));
        Ok(())
    });
}

#[test]
fn what_it_prints_loads_back_the_same() {
    Jail::expect_with(|jail| {
        jail_files(jail, FILE);
        let config = load(&Overrides::default()).unwrap();
        jail.create_file("printed.toml", &config.to_toml()).unwrap();
        let again = NodeConfig::load(Some(Path::new("printed.toml")), &Overrides::default());
        assert_eq!(again.unwrap(), config);
        Ok(())
    });
}

#[test]
fn unknown_keys_and_missing_fields_name_the_key_and_the_file() {
    Jail::expect_with(|jail| {
        jail_files(jail, &format!("{FILE}s3_adr = \"0.0.0.0:9000\"\n"));
        let text = error_text(load(&Overrides::default()));
        assert!(text.contains("s3_adr") && text.contains("kiseki.toml"), "{text}");

        jail.create_file("kiseki.toml", "data_dir = \"/d\"\n").unwrap();
        let text = error_text(load(&Overrides::default()));
        assert!(text.contains("ca_path"), "{text}");

        jail.create_file("kiseki.toml", "data_dir = [").unwrap();
        let text = error_text(load(&Overrides::default()));
        assert!(text.contains("kiseki.toml"), "{text}");

        let missing = NodeConfig::load(Some(Path::new("nowhere.toml")), &Overrides::default());
        let text = error_text(missing);
        assert!(text.contains("nowhere.toml") && text.contains("no such file"), "{text}");
        Ok(())
    });
}

#[test]
fn bad_values_are_refused_with_the_field_and_its_variable() {
    let cases: &[(&str, &str, &str)] = &[
        ("s3_addr = \"localhost\"", "s3_addr (KISEKI_S3_ADDR)", "not an address"),
        ("node_id = 0", "node_id", "start at 1"),
        ("cores = 0", "cores", "at least 1"),
        ("chunk_size = \"1Q\"", "chunk_size", "unknown unit"),
        ("crl_path = \"absent.pem\"", "crl_path", "no such file"),
        ("device_path = \"absent.img\"", "device_path", "give device_size"),
        ("chunk_size = \"8M\"", "chunk_size", "from 4 KiB to 4032 KiB"),
        ("chunk_size = \"1k\"", "chunk_size", "from 4 KiB to 4032 KiB"),
        ("fabric_addr = \"0.0.0.0:9200\"", "fabric_addr (KISEKI_FABRIC_ADDR)", "specific IP"),
        ("fabric_addr = \"10.0.0.1:0\"", "fabric_addr", "not 0.0.0.0 or port 0"),
    ];
    for &(line, field, reason) in cases {
        Jail::expect_with(|jail| {
            // The case's line replaces the file's value of that key.
            let key = line.split(' ').next().unwrap();
            let kept: Vec<&str> = FILE.lines().filter(|l| !l.starts_with(key)).collect();
            jail_files(jail, &format!("{}\n{line}\n", kept.join("\n")));
            let text = error_text(load(&Overrides::default()).and_then(NodeConfig::check));
            assert!(text.contains(field) && text.contains(reason), "{line}: {text}");
            Ok(())
        });
    }
}

#[test]
fn peers_must_be_other_nodes_once_each() {
    for (peers, reason) in [
        ("[\"1=10.0.0.1:9200\"]", "names this node"),
        ("[\"2=10.0.0.2:9200\", \"2=10.0.0.9:9200\"]", "listed twice"),
        ("[\"two=10.0.0.2:9200\"]", "the id is a number"),
        ("[\"2=10.0.0.2\"]", "not an address"),
        ("[\"10.0.0.2:9200\"]", "not ID=ADDR"),
    ] {
        Jail::expect_with(|jail| {
            let kept: Vec<&str> = FILE.lines().filter(|l| !l.starts_with("peers")).collect();
            jail_files(jail, &format!("{}\npeers = {peers}\n", kept.join("\n")));
            let text = error_text(load(&Overrides::default()).and_then(NodeConfig::check));
            assert!(text.contains(reason), "{peers}: {text}");
            Ok(())
        });
    }
}

#[test]
fn a_node_without_peers_is_node_1_and_init_comes_from_any_source() {
    Jail::expect_with(|jail| {
        let kept: Vec<&str> = FILE.lines().filter(|l| !l.starts_with("peers")).collect();
        jail_files(jail, &format!("{}\nnode_id = 2\n", kept.join("\n")));
        let text = error_text(load(&Overrides::default()).and_then(NodeConfig::check));
        assert!(
            text.contains("node_id (KISEKI_NODE_ID)") && text.contains("without peers"),
            "{text}"
        );

        // Alone as node 1: checked; a wildcard fabric address is fine without peers.
        jail_files(jail, &format!("{}\nfabric_addr = \"0.0.0.0:9200\"\n", kept.join("\n")));
        let checked = load(&Overrides::default()).unwrap().check().unwrap();
        assert!(checked.peers.is_empty() && !checked.config.init);

        // init: the file, the environment, the flag.
        jail_files(jail, &format!("{FILE}init = true\n"));
        assert!(load(&Overrides::default()).unwrap().init);
        jail_files(jail, FILE);
        jail.set_env("KISEKI_INIT", "true");
        assert!(load(&Overrides::default()).unwrap().init);
        jail.set_env("KISEKI_INIT", "false");
        let flag = Overrides { init: Some(true), ..Overrides::default() };
        assert!(load(&flag).unwrap().init);
        assert!(!load(&Overrides::default()).unwrap().init);
        Ok(())
    });
}

#[test]
fn role_files_come_in_pairs_and_must_exist() {
    Jail::expect_with(|jail| {
        jail.create_file("policy.json", "{}").unwrap();
        jail.create_file("scope.json", "{}").unwrap();
        for (lines, needle) in [
            (
                "policy_file = \"policy.json\"\n",
                "scope_file (KISEKI_SCOPE_FILE): policy_file is given",
            ),
            (
                "scope_file = \"scope.json\"\n",
                "policy_file (KISEKI_POLICY_FILE): scope_file is given",
            ),
            (
                "policy_file = \"policy.json\"\nscope_file = \"absent.json\"\n",
                "scope_file (KISEKI_SCOPE_FILE): absent.json: no such file",
            ),
        ] {
            jail_files(jail, &format!("{FILE}{lines}"));
            let text = error_text(load(&Overrides::default()).and_then(NodeConfig::check));
            assert!(text.contains(needle), "{lines}: {text}");
        }
        jail_files(
            jail,
            &format!("{FILE}policy_file = \"policy.json\"\nscope_file = \"scope.json\"\n"),
        );
        let checked = load(&Overrides::default()).unwrap().check().unwrap();
        assert_eq!(checked.config.scope_file.as_deref(), Some(Path::new("scope.json")));
        Ok(())
    });
}
