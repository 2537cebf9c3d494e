//! The error every part below the CRI façade returns. Each variant says what
//! kind of failure it is; `cri::status` maps kinds to gRPC codes in one place.

/// A failure, with a message that names what failed (which id, which image, which digest).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong: a missing field, a bad name, a bad module.
    #[error("{0}")]
    InvalidArgument(String),
    /// The object asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An object with the same identity exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is not in a state that allows the call, or the call cannot
    /// apply to this kind of object (a shell in a wasm guest).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The image is not a wasm image: the backing runtime's, if there is one.
    #[error("{0}")]
    NotWasm(String),
    /// No source of the image (mirror or registry) gave its manifest and
    /// config, so whether it is wasm is unknown: a backing runtime, with a
    /// registry configuration of its own, may still pull it. Holds the error
    /// to return when there is none; its message names the image and each
    /// source's failure, its kind is that of the last source's failure.
    #[error("{0}")]
    Unfetchable(Box<Error>),
    /// The registry refused our credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Something we depend on (a registry) cannot be reached now; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// A limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The call's own deadline passed (ExecSync's `timeout`), as containerd
    /// reports it: kubelet takes this code as a probe's timeout.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Content did not match its digest.
    #[error("{0}")]
    DataLoss(String),
    /// A fault of ours or of the host (I/O), with its chain of causes.
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

/// A digest a request, a manifest or the index gave that wasmrun cannot use.
impl From<crate::digest::ParseError> for Error {
    fn from(error: crate::digest::ParseError) -> Self {
        Error::InvalidArgument(error.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The longest part of a request (an id, a name, a path) an error message
/// echoes, in characters; a longer one is cut, with its length said.
pub const MAX_ECHOED: usize = 128;

/// `value` quoted for an error message, as `{:?}` would, and cut to
/// [`MAX_ECHOED`] characters: a message goes back to the client in a
/// `grpc-message` header, and an id of 10,000 characters would make that
/// header too big for the client to read (it would see RESOURCE_EXHAUSTED,
/// not the status the message belongs to).
pub fn quoted(value: &str) -> String {
    match value.char_indices().nth(MAX_ECHOED) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes in all)", &value[..cut], value.len()),
    }
}

impl Error {
    /// Says which image a request failure belongs to, unless the message names it already.
    pub fn about_image(self, name: &str) -> Self {
        match self {
            Error::InvalidArgument(m) if !m.contains(name) => Error::InvalidArgument(format!("image {name}: {m}")),
            Error::FailedPrecondition(m) if !m.contains(name) => {
                Error::FailedPrecondition(format!("image {name}: {m}"))
            }
            Error::ResourceExhausted(m) if !m.contains(name) => Error::ResourceExhausted(format!("image {name}: {m}")),
            other => other,
        }
    }

    pub fn internal(context: impl std::fmt::Display, cause: impl Into<anyhow::Error>) -> Self {
        Error::Internal(cause.into().context(context.to_string()))
    }
}

/// Adds "what we were doing" to I/O errors, the way anyhow's `context` does.
pub trait IoContext<T> {
    fn io_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::internal(what(), e))
    }
}
