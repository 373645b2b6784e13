//! The MQTT relay: r-proxy (the MQTT server clients connect to) and s-proxy (the gRPC end that
//! drives the upstream broker).
//!
//! One file per role's config (`r_proxy`, `s_proxy`); here what both share.

mod r_proxy;
mod s_proxy;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::ConfigError;
pub use crate::mqtt_kafka::KafkaConfig;
pub use r_proxy::{ClientLimits, Listeners, RProxyConfig, SProxyLink};
pub use s_proxy::{BrokerConfig, SProxyConfig, Upstream};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// MQTT's largest packet is 256 MiB; the default keeps one client from pinning that much memory.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 1024 * 1024;
const MQTT_MAX_PACKET_SIZE: u32 = 268_435_455 + 5;

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn check_packet_size(field: &'static str, size: u32) -> Result<(), ConfigError> {
    if !(128..=MQTT_MAX_PACKET_SIZE).contains(&size) {
        return Err(ConfigError::invalid(
            field,
            format!("{size} is outside 128..={MQTT_MAX_PACKET_SIZE} bytes"),
        ));
    }
    Ok(())
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_packet_size() -> u32 {
    DEFAULT_MAX_PACKET_SIZE
}

#[cfg(test)]
fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str(yaml)
}
