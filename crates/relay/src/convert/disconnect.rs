//! DISCONNECT and AUTH: protobuf ↔ codec.

use super::*;

impl From<codec::Disconnect> for v1::Disconnect {
    fn from(d: codec::Disconnect) -> Self {
        let p = d.properties;
        Self {
            reason_code: d.reason_code.0.into(),
            session_expiry_interval: p.session_expiry_interval,
            reason_string: p.reason_string,
            user_properties: user_to_proto(p.user_properties),
            server_reference: p.server_reference,
        }
    }
}

impl TryFrom<v1::Disconnect> for codec::Disconnect {
    type Error = ConvertError;

    fn try_from(d: v1::Disconnect) -> Result<Self, ConvertError> {
        const P: PacketType = PacketType::Disconnect;
        Ok(Self {
            reason_code: reason_code(d.reason_code, P).at(P, "reason_code")?,
            properties: DisconnectProperties {
                session_expiry_interval: d.session_expiry_interval,
                reason_string: d.reason_string,
                user_properties: user_from_proto(d.user_properties),
                server_reference: d.server_reference,
            },
        })
    }
}

impl From<codec::Auth> for v1::Auth {
    fn from(a: codec::Auth) -> Self {
        let p = a.properties;
        Self {
            reason_code: a.reason_code.0.into(),
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
            reason_string: p.reason_string,
            user_properties: user_to_proto(p.user_properties),
        }
    }
}

impl TryFrom<v1::Auth> for codec::Auth {
    type Error = ConvertError;

    fn try_from(a: v1::Auth) -> Result<Self, ConvertError> {
        const P: PacketType = PacketType::Auth;
        Ok(Self {
            reason_code: reason_code(a.reason_code, P).at(P, "reason_code")?,
            properties: AuthProperties {
                authentication_method: a.authentication_method,
                authentication_data: a.authentication_data,
                reason_string: a.reason_string,
                user_properties: user_from_proto(a.user_properties),
            },
        })
    }
}
