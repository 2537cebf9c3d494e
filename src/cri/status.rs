//! The one place where errors become gRPC statuses.

use crate::error::Error;

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        // Nobody to forward to (the front decided that): the error of the
        // sources, with its own kind.
        let error = match error {
            Error::Unfetchable(error) => *error,
            error => error,
        };
        let message = capped(error.to_string());
        match error {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::AlreadyExists(_) => tonic::Status::already_exists(message),
            Error::FailedPrecondition(_) | Error::NotWasm(_) => tonic::Status::failed_precondition(message),
            Error::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            Error::Unavailable(_) => tonic::Status::unavailable(message),
            Error::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
            Error::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(message),
            Error::DataLoss(_) => tonic::Status::data_loss(message),
            // Unwrapped above; one level is all `Puller::fetch` makes.
            Error::Unfetchable(_) => tonic::Status::unavailable(message),
            Error::Internal(_) => {
                tracing::error!(error = %message, "internal error");
                tonic::Status::internal(message)
            }
        }
    }
}

/// The longest status message sent, in bytes. It travels percent-encoded in
/// the `grpc-message` header, and clients refuse a header list over 8–16 KiB
/// (grpc-go's and hyper's defaults); parts of requests are cut where they are
/// echoed ([`crate::error::quoted`]), and this bounds what is left.
pub const MAX_STATUS_MESSAGE: usize = 2048;

/// `message` cut to [`MAX_STATUS_MESSAGE`] bytes at a character boundary.
fn capped(mut message: String) -> String {
    if message.len() > MAX_STATUS_MESSAGE {
        let mut cut = MAX_STATUS_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("… (cut)");
    }
    message
}
