//! The Kubernetes websocket channel protocols, as kubelet's streaming server
//! speaks them (`k8s.io/streaming/pkg/httpstream/wsstream/conn.go`, and
//! `k8s.io/cri-streaming/pkg/streaming/{remotecommand,portforward}/websocket.go`).
//!
//! Each websocket message carries one channel's bytes: its first byte is the
//! channel number, the rest the data (`channel.k8s.io`, binary messages), or
//! the channel as an ASCII digit and the data in base64 (`base64.channel.k8s.io`,
//! text messages). Exec and attach use channels 0 stdin, 1 stdout, 2 stderr,
//! 3 error (the exit status), 4 resize; port-forward uses two per port, data
//! (2i) and error (2i+1), each opened by a message holding the port number,
//! little-endian. `v5.channel.k8s.io` adds a half-close: a message
//! `[255, channel]` from the client closes that channel (stdin's end).
//! The subprotocol is the first of the client's `Sec-WebSocket-Protocol`
//! list the server supports; no header means `""`, binary framing.

use base64::Engine as _;

/// What the connection serves; each has its own protocol list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Exec and attach (kubelet's `remotecommand`).
    RemoteCommand,
    /// Port-forward (kubelet's `portforward`).
    PortForward,
}

/// A negotiated subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// As the response's `Sec-WebSocket-Protocol` names it; `""`: none.
    pub name: &'static str,
    /// Data in base64 text messages, channel as an ASCII digit.
    pub base64: bool,
    /// `[255, channel]` from the client closes that channel (v5).
    pub half_close: bool,
    /// The exit status is sent as a JSON `Status` (v4 and later); before
    /// v4, only a failure's message is sent, as text.
    pub json_status: bool,
}

const fn protocol(name: &'static str, base64: bool, half_close: bool, json_status: bool) -> Protocol {
    Protocol { name, base64, half_close, json_status }
}

/// Exec and attach: kubelet's list, and `v5.channel.k8s.io` as the API
/// server serves it to clients (v4 with the half-close).
const REMOTE_COMMAND: &[Protocol] = &[
    protocol("v5.channel.k8s.io", false, true, true),
    protocol("v4.channel.k8s.io", false, false, true),
    protocol("v4.base64.channel.k8s.io", true, false, true),
    protocol("channel.k8s.io", false, false, false),
    protocol("base64.channel.k8s.io", true, false, false),
    protocol("", false, false, false),
];

/// Port-forward: kubelet's list.
const PORT_FORWARD: &[Protocol] = &[
    protocol("v4.channel.k8s.io", false, false, true),
    protocol("v4.base64.channel.k8s.io", true, false, true),
    protocol("", false, false, false),
];

/// The first protocol of `offered` (a `Sec-WebSocket-Protocol` header's
/// comma-separated list; none: `""`) that `purpose` supports, as kubelet's
/// handshake picks it. `Err` lists what is supported.
pub fn negotiate(purpose: Purpose, offered: Option<&str>) -> Result<Protocol, String> {
    let supported = match purpose {
        Purpose::RemoteCommand => REMOTE_COMMAND,
        Purpose::PortForward => PORT_FORWARD,
    };
    let offered: Vec<&str> = match offered {
        Some(list) if !list.trim().is_empty() => list.split(',').map(str::trim).collect(),
        _ => vec![""],
    };
    offered.iter().find_map(|name| supported.iter().find(|p| p.name == *name).copied()).ok_or_else(|| {
        let names: Vec<&str> = supported.iter().map(|p| p.name).filter(|n| !n.is_empty()).collect();
        format!("requested protocol(s) {offered:?} are not supported; supported: {names:?}")
    })
}

/// One message from the client, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Bytes for a channel.
    Data(u8, Vec<u8>),
    /// The client closed the channel (v5 half-close).
    Close(u8),
    /// An empty message, or bad base64: nothing to act on (kubelet logs and skips it).
    Nothing,
}

/// Decodes a message's payload (binary or text, as sent) under `protocol`.
pub fn decode(protocol: Protocol, message: &[u8]) -> Incoming {
    let Some((&first, data)) = message.split_first() else {
        return Incoming::Nothing;
    };
    if protocol.half_close && first == 255 {
        return match data {
            [channel] => Incoming::Close(*channel),
            _ => Incoming::Nothing,
        };
    }
    if protocol.base64 {
        match base64::engine::general_purpose::STANDARD.decode(data) {
            Ok(bytes) => Incoming::Data(first.wrapping_sub(b'0'), bytes),
            Err(_) => Incoming::Nothing,
        }
    } else {
        Incoming::Data(first, data.to_vec())
    }
}

/// A message to the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    Binary(Vec<u8>),
    Text(String),
}

/// Encodes `data` for `channel` under `protocol`.
pub fn encode(protocol: Protocol, channel: u8, data: &[u8]) -> Outgoing {
    if protocol.base64 {
        let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        text.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
        Outgoing::Text(text)
    } else {
        let mut frame = Vec::with_capacity(1 + data.len());
        frame.push(channel);
        frame.extend_from_slice(data);
        Outgoing::Binary(frame)
    }
}

/// How a command ended, as the error channel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Exit code 0.
    Success,
    /// A non-zero exit code, with the command for the message (as Go prints
    /// a `[]string`: `[sh -c exit 3]`, containerd's words).
    Exited { code: i32, command: String },
    /// It could not run (or the server failed): the message.
    Failed(String),
}

/// The bytes for the error channel: a JSON `Status` (v4 and later), or
/// before v4 a failure's message and nothing for a success. The words are
/// kubelet's (`remotecommand/exec.go`, `status.go`) with containerd's exit
/// error, which clients show and parse (`details.causes[0].message` is the
/// exit code).
pub fn status(json_status: bool, ending: &Ending) -> Vec<u8> {
    let (json, text) = match ending {
        Ending::Success => (serde_json::json!({"metadata": {}, "status": "Success"}), None),
        Ending::Exited { code, command } => {
            let message = format!(
                "command terminated with non-zero exit code: error executing command {command}, exit code {code}"
            );
            let json = serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            });
            (json, Some(message))
        }
        Ending::Failed(why) => {
            let message = format!("Internal error occurred: {why}");
            let json = serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "code": 500,
            });
            (json, Some(message))
        }
    };
    match (json_status, text) {
        (true, _) => json.to_string().into_bytes(),
        (false, Some(text)) => text.into_bytes(),
        (false, None) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(purpose: Purpose, offered: Option<&str>) -> Result<&'static str, String> {
        negotiate(purpose, offered).map(|p| p.name)
    }

    #[test]
    fn the_first_offered_protocol_supported_is_chosen() {
        // The `kubernetes` Python client's offer.
        let python = Some("v5.channel.k8s.io,v4.channel.k8s.io");
        assert_eq!(named(Purpose::RemoteCommand, python), Ok("v5.channel.k8s.io"));
        assert_eq!(named(Purpose::PortForward, python), Ok("v4.channel.k8s.io"));
        assert_eq!(
            named(Purpose::RemoteCommand, Some("v4.base64.channel.k8s.io, channel.k8s.io")).unwrap(),
            "v4.base64.channel.k8s.io"
        );
        assert_eq!(named(Purpose::RemoteCommand, None), Ok(""));
        assert_eq!(named(Purpose::PortForward, Some("")), Ok(""));
        let refused = named(Purpose::PortForward, Some("v5.channel.k8s.io, chat")).unwrap_err();
        assert!(refused.contains("v4.channel.k8s.io"), "{refused}");
    }

    #[test]
    fn frames_decode_as_the_clients_send_them() {
        let v5 = negotiate(Purpose::RemoteCommand, Some("v5.channel.k8s.io")).unwrap();
        let v4 = negotiate(Purpose::RemoteCommand, Some("v4.channel.k8s.io")).unwrap();
        let b64 = negotiate(Purpose::RemoteCommand, Some("v4.base64.channel.k8s.io")).unwrap();
        // `write_stdin("hi\n")` of the Python client: channel 0, then the bytes.
        assert_eq!(decode(v5, b"\x00hi\n"), Incoming::Data(0, b"hi\n".to_vec()));
        // Its `close_channel(0)` (v5 only).
        assert_eq!(decode(v5, &[255, 0]), Incoming::Close(0));
        assert_eq!(decode(v4, &[255, 0]), Incoming::Data(255, vec![0]));
        assert_eq!(decode(v5, &[255, 0, 1]), Incoming::Nothing);
        assert_eq!(decode(v5, b""), Incoming::Nothing);
        // A resize message (channel 4, JSON), as client-go sends it.
        assert_eq!(
            decode(v4, b"\x04{\"Width\":80,\"Height\":24}"),
            Incoming::Data(4, b"{\"Width\":80,\"Height\":24}".to_vec())
        );
        assert_eq!(decode(b64, b"0aGkK"), Incoming::Data(0, b"hi\n".to_vec()));
        assert_eq!(decode(b64, b"0!!"), Incoming::Nothing);
    }

    #[test]
    fn frames_encode_as_kubelet_sends_them() {
        let v4 = negotiate(Purpose::RemoteCommand, Some("v4.channel.k8s.io")).unwrap();
        let b64 = negotiate(Purpose::RemoteCommand, Some("base64.channel.k8s.io")).unwrap();
        assert_eq!(encode(v4, 1, b"hello\n"), Outgoing::Binary(b"\x01hello\n".to_vec()));
        // The empty first message on stdout that tells the client the streams are ready.
        assert_eq!(encode(v4, 1, b""), Outgoing::Binary(vec![1]));
        assert_eq!(encode(b64, 2, b"oops"), Outgoing::Text("2b29wcw==".into()));
        // A port-forward's first message on each of its channels (the second port's data: 2): the port, little-endian.
        let pf = negotiate(Purpose::PortForward, Some("v4.channel.k8s.io")).unwrap();
        assert_eq!(encode(pf, 2, &8080u16.to_le_bytes()), Outgoing::Binary(vec![2, 0x90, 0x1f]));
    }

    #[test]
    fn the_exit_status_is_what_clients_parse() {
        let v4 = negotiate(Purpose::RemoteCommand, Some("v4.channel.k8s.io")).unwrap();
        let v1 = negotiate(Purpose::RemoteCommand, Some("channel.k8s.io")).unwrap();
        let success: serde_json::Value = serde_json::from_slice(&status(v4.json_status, &Ending::Success)).unwrap();
        assert_eq!(success["status"], "Success");
        let exited = Ending::Exited { code: 3, command: "[tool]".into() };
        let failure: serde_json::Value = serde_json::from_slice(&status(v4.json_status, &exited)).unwrap();
        assert_eq!(
            (failure["status"].as_str(), failure["reason"].as_str()),
            (Some("Failure"), Some("NonZeroExitCode"))
        );
        assert_eq!(failure["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "3"}));
        assert_eq!(status(v1.json_status, &Ending::Success), b"");
        assert_eq!(
            String::from_utf8(status(v1.json_status, &exited)).unwrap(),
            "command terminated with non-zero exit code: error executing command [tool], exit code 3"
        );
        let failed: serde_json::Value =
            serde_json::from_slice(&status(v4.json_status, &Ending::Failed("container x not found".into()))).unwrap();
        assert_eq!((failed["reason"].as_str(), failed["code"].as_i64()), (Some("InternalError"), Some(500)));
    }
}
