//! The first frame of a relay stream, checked: the session's opening and the client's CONNECT,
//! as s-proxy's upstreams (a broker, or Kafka) receive it.

use strait_mqtt_codec::{self as mqtt, Packet, Protocol};
use tonic::Status;

use crate::v1::{self, ClientFrame};

/// The validated first frame of a relay stream.
pub struct Opening {
    pub open: Box<v1::SessionOpen>,
    pub protocol: Protocol,
    pub connect: mqtt::Connect,
    /// Packets the client pipelined behind CONNECT.
    pub pipelined: Vec<Packet>,
}

impl Opening {
    pub fn parse(frame: ClientFrame) -> Result<Self, Status> {
        let open = frame
            .open
            .ok_or_else(|| Status::invalid_argument("first frame has no SessionOpen"))?;
        let protocol = Protocol::try_from(open.protocol())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut packets = frame
            .packets
            .into_iter()
            .map(|p| Packet::try_from(p).map_err(|e| Status::invalid_argument(e.to_string())));
        let Some(Packet::Connect(connect)) = packets.next().transpose()? else {
            return Err(Status::invalid_argument(
                "first packet of a session must be CONNECT",
            ));
        };
        let pipelined = packets.collect::<Result<_, _>>()?;
        Ok(Self {
            open,
            protocol,
            connect,
            pipelined,
        })
    }
}
