//! CRI messages whose encoding wasmrun does by hand.
//!
//! kubelet lists every pod and every container once a second (PLEG's
//! relist). On a dense node that is thousands of entries, each with several
//! strings and two maps: building and encoding them anew on every call is
//! most of the call. An entry changes only when its pod's or container's
//! state does, so each keeps its entry encoded (and a whole unfiltered list
//! is kept too, see `pods::listing`), and the list responses carry those
//! bytes as they are. On the wire they are the same messages; a client
//! decodes them as usual.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, message, skip_field};

use crate::api;

/// Field number of the repeated field of both responses (`containers`, `items`).
const ENTRIES: u32 = 1;

/// One message encoded as an entry of a list response (field 1): its key, its
/// length and the message.
pub fn encode_entry(message: &impl prost::Message) -> Bytes {
    let mut buf = Vec::with_capacity(message::encoded_len(ENTRIES, message));
    message::encode(ENTRIES, message, &mut buf);
    Bytes::from(buf)
}

/// Defines a list response, generated code's stand-in (see build.rs): its
/// repeated field 1, `$field`, decodes as usual; it encodes entries already
/// encoded (see [`encode_entry`]), concatenated, before `$field`.
macro_rules! encoded_list_response {
    ($(#[$doc:meta])* $name:ident, $field:ident: $entry:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $name {
            /// Entries as messages: what a client decodes, and what the
            /// backing runtime's part of a list comes as.
            pub $field: Vec<$entry>,
            /// Entries already encoded, one after another, sent first.
            encoded: Bytes,
        }

        impl $name {
            /// A response made of already-encoded entries, concatenated.
            pub fn from_encoded(encoded: Bytes) -> Self {
                Self { $field: Vec::new(), encoded }
            }
        }

        impl prost::Message for $name {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                // One slice: the encoder's buffer grows once, to the size needed.
                buf.put_slice(&self.encoded);
                for entry in &self.$field {
                    message::encode(ENTRIES, entry, buf);
                }
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), prost::DecodeError> {
                if tag == ENTRIES {
                    message::merge_repeated(wire_type, &mut self.$field, buf, ctx)
                } else {
                    skip_field(wire_type, tag, buf, ctx)
                }
            }

            fn encoded_len(&self) -> usize {
                self.encoded.len() + message::encoded_len_repeated(ENTRIES, &self.$field)
            }

            fn clear(&mut self) {
                self.$field.clear();
                self.encoded.clear();
            }
        }
    };
}

encoded_list_response!(
    /// `runtime.v1.ListContainersResponse`.
    ListContainersResponse, containers: api::Container
);

encoded_list_response!(
    /// `runtime.v1.ListPodSandboxResponse`.
    ListPodSandboxResponse, items: api::PodSandbox
);

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
    fn pods_encode_and_decode_as_items_the_same_way() {
        let pod = |id: &str| api::PodSandbox {
            id: id.into(),
            metadata: Some(api::PodSandboxMetadata { name: format!("pod-{id}"), ..Default::default() }),
            labels: [("app".to_owned(), id.to_owned())].into(),
            runtime_handler: "wasmrun".into(),
            ..Default::default()
        };
        let mut expected = Vec::new();
        message::encode(1, &pod("a"), &mut expected);
        message::encode(1, &pod("b"), &mut expected);
        let mut response = ListPodSandboxResponse::from_encoded(encode_entry(&pod("a")));
        response.items.push(pod("b"));
        assert_eq!(response.encode_to_vec(), expected);
        assert_eq!(response.encoded_len(), expected.len());
        assert_eq!(ListPodSandboxResponse::decode(expected.as_slice()).unwrap().items, vec![pod("a"), pod("b")]);
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut bytes = ListContainersResponse::from_encoded(encode_entry(&container("a"))).encode_to_vec();
        prost::encoding::string::encode(9, &"from a newer CRI".to_owned(), &mut bytes);
        let decoded = ListContainersResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.containers, vec![container("a")]);
    }
}
