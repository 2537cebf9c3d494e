//! CRI messages whose encoding wasmrun does by hand.
//!
//! kubelet lists every container once a second (PLEG's relist). On a dense
//! node that is thousands of `Container` entries, each with several strings
//! and two maps: building and encoding them anew on every call is most of the
//! call. An entry changes only when its container's state does, so each
//! container keeps its entry encoded (and a whole unfiltered list is kept
//! too, see `pods::listing`), and `ListContainersResponse` carries those
//! bytes as they are. On the wire it is the same message; a client decodes
//! it into `containers` as usual.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, message, skip_field};

use crate::api;

/// Field number of `containers` in `runtime.v1.ListContainersResponse`.
const CONTAINERS: u32 = 1;

/// `runtime.v1.ListContainersResponse`, generated code's stand-in (see build.rs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListContainersResponse {
    /// Containers as messages: what a client decodes, and what the backing
    /// runtime's part of a list comes as.
    pub containers: Vec<api::Container>,
    /// Containers already encoded as `containers` fields, one after
    /// another, sent first.
    encoded: Bytes,
}

impl ListContainersResponse {
    /// A response made of already-encoded entries (see [`encode_entry`]),
    /// concatenated.
    pub fn from_encoded(encoded: Bytes) -> Self {
        Self { containers: Vec::new(), encoded }
    }
}

/// One container encoded as a `containers` field of the response: its key,
/// its length and the `Container` message.
pub fn encode_entry(container: &api::Container) -> Bytes {
    let mut buf = Vec::with_capacity(message::encoded_len(CONTAINERS, container));
    message::encode(CONTAINERS, container, &mut buf);
    Bytes::from(buf)
}

impl prost::Message for ListContainersResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // One slice: the encoder's buffer grows once, to the size needed.
        buf.put_slice(&self.encoded);
        for container in &self.containers {
            message::encode(CONTAINERS, container, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag == CONTAINERS {
            message::merge_repeated(wire_type, &mut self.containers, buf, ctx)
        } else {
            skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.encoded.len() + message::encoded_len_repeated(CONTAINERS, &self.containers)
    }

    fn clear(&mut self) {
        self.containers.clear();
        self.encoded.clear();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn container(id: &str) -> api::Container {
        api::Container {
            id: id.into(),
            pod_sandbox_id: format!("pod-of-{id}"),
            metadata: Some(api::ContainerMetadata { name: format!("name-{id}"), attempt: 2 }),
            state: api::ContainerState::ContainerRunning as i32,
            created_at: 42,
            labels: [("app".to_owned(), id.to_owned())].into(),
            annotations: [("note".to_owned(), "x".to_owned())].into(),
            image_id: "sha256:abc".into(),
            ..Default::default()
        }
    }

    #[test]
    fn encoded_entries_decode_as_containers_in_order() {
        let mut response = ListContainersResponse::from_encoded(encode_entry(&container("a")));
        response.containers.push(container("b"));
        let bytes = response.encode_to_vec();
        assert_eq!(bytes.len(), response.encoded_len());

        let decoded = ListContainersResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.containers, vec![container("a"), container("b")]);
    }

    #[test]
    fn the_wire_format_is_that_of_the_generated_message() {
        // The same bytes as the message prost would generate: a repeated message field 1.
        let mut expected = Vec::new();
        message::encode(1, &container("a"), &mut expected);
        message::encode(1, &container("b"), &mut expected);
        let entries = [encode_entry(&container("a")), encode_entry(&container("b"))].concat();
        let response = ListContainersResponse::from_encoded(entries.into());
        assert_eq!(response.encode_to_vec(), expected);
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut bytes = ListContainersResponse::from_encoded(encode_entry(&container("a"))).encode_to_vec();
        prost::encoding::string::encode(9, &"from a newer CRI".to_owned(), &mut bytes);
        let decoded = ListContainersResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.containers, vec![container("a")]);
    }
}
