//! r-proxy and s-proxy configured by file, as the operator runs them: the file drives both
//! proxies, a flag on the command line overrides one value, and a bad file stops the process
//! before it binds anything, naming the field.

mod support;

use std::path::PathBuf;
use std::process::Command;

use strait_e2e::{Daemon, free_local_addr, require, unique_name};
use strait_mqtt_codec::Protocol;
use support::{BIN, RawClient, connect_packet};

fn write_config(name: &str, yaml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.yaml", unique_name(name)));
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test]
async fn config_files_drive_both_proxies_and_flags_override_them() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let grpc = free_local_addr();
    let mqtt = free_local_addr();
    let s_config = write_config(
        "s-proxy",
        &format!(
            "listen: {grpc}\nupstream: broker\nbroker:\n  address: {broker}\n  connectTimeout: 3s\n"
        ),
    );
    let r_config = write_config(
        "r-proxy",
        &format!(
            "listeners:\n  tcp: {mqtt}\nsProxy:\n  endpoints: [http://{grpc}]\n  connectionsPerEndpoint: 1\nlimits:\n  maxPacketSize: 2048\n"
        ),
    );
    let _s_proxy = Daemon::start(BIN, &["s-proxy", "--config", s_config.to_str().unwrap()]).await;
    let _r_proxy = Daemon::start(
        BIN,
        &[
            "r-proxy",
            "--config",
            r_config.to_str().unwrap(),
            "--max-packet-size",
            "4096",
        ],
    )
    .await;

    let client_id = unique_name("configured");
    let (mut client, ack) =
        RawClient::session(mqtt, Protocol::V5, connect_packet(&client_id)).await;
    assert_eq!(
        ack.properties.maximum_packet_size,
        Some(4096),
        "the --max-packet-size flag overrides limits.maxPacketSize from the file"
    );
    let topic = format!("strait/config/{client_id}");
    client.subscribe(1, &topic).await;
    client
        .publish_and_receive(2, &topic, "through a configured relay")
        .await;
}

/// Runs `strait-proxy args…`, which must fail at once; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should be refused");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let typo = write_config("typo", "sProxy: { endpoints: [http://s:1] }\nlimit: {}\n");
    let error = refused(&["r-proxy", "--config", typo.to_str().unwrap()]);
    assert!(error.contains("unknown field `limit`"), "{error}");
    assert!(
        error.contains(typo.to_str().unwrap()),
        "names the file: {error}"
    );

    let error = refused(&["r-proxy"]);
    assert!(error.contains("sProxy.endpoints"), "{error}");

    let error = refused(&["r-proxy", "--s-proxy", "s-proxy:50516"]);
    assert!(
        error.contains("sProxy.endpoints") && error.contains("http://"),
        "{error}"
    );

    let no_cert = write_config(
        "no-cert",
        "listeners: { tls: 127.0.0.1:0 }\nsProxy: { endpoints: [http://s:1] }\n",
    );
    let error = refused(&["r-proxy", "--config", no_cert.to_str().unwrap()]);
    assert!(error.contains("tls.cert"), "{error}");

    let error = refused(&["s-proxy", "--broker", "mosquitto"]);
    assert!(error.contains("broker.address"), "{error}");

    let missing = std::env::temp_dir().join(unique_name("missing"));
    let error = refused(&["s-proxy", "--config", missing.to_str().unwrap()]);
    assert!(error.contains("cannot read config file"), "{error}");
}
