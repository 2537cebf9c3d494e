//! `runtime.v1.ImageService` of the front (see the table in `front/mod.rs`).

use tonic::{Request, Response, Status};

use super::{Front, Owner, merge, route};
use crate::api;
use crate::api::image_service_server::ImageService;
use crate::error::Error;

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl ImageService for Front {
    async fn list_images(&self, request: Request<api::ListImagesRequest>) -> Reply<api::ListImagesResponse> {
        merge::list_images(&self.wasm, self.backing.as_ref(), request).await
    }

    async fn image_status(&self, request: Request<api::ImageStatusRequest>) -> Reply<api::ImageStatusResponse> {
        route!(self, images.image_status(request), by image)
    }

    /// The wasm side pulls first: only it can tell a wasm image. When it
    /// finds the image is not wasm, or no source (mirror or registry) gave it
    /// the manifest, the backing runtime (with a registry configuration of
    /// its own, which may reach what wasmrun cannot) pulls instead, and its
    /// answer is the answer (`Rules::failed_pull`).
    async fn pull_image(&self, request: Request<api::PullImageRequest>) -> Reply<api::PullImageResponse> {
        let request = request.into_inner();
        let error = match self.wasm.pull(&request).await {
            Ok(pulled) => return Ok(Response::new(pulled)),
            Err(error) => error,
        };
        let Owner::Backing(backing) = self.to(self.rules.failed_pull(&error))? else {
            return Err(error.into());
        };
        let name = request.image.as_ref().map_or("", |spec| spec.image.as_str());
        match &error {
            Error::Unfetchable(_) => {
                tracing::warn!(image = %name, %error, endpoint = %backing.endpoint, "wasmrun cannot fetch the image's manifest; forwarding the pull to the backing runtime");
            }
            _ => tracing::debug!(image = %name, why = %error, "forwarding the pull of a non-wasm image"),
        }
        backing.images().pull_image(request).await.map_err(|s| backing.status(s))
    }

    async fn remove_image(&self, request: Request<api::RemoveImageRequest>) -> Reply<api::RemoveImageResponse> {
        route!(self, images.remove_image(request), by image)
    }

    async fn image_fs_info(&self, request: Request<api::ImageFsInfoRequest>) -> Reply<api::ImageFsInfoResponse> {
        merge::image_fs_info(&self.wasm, self.backing.as_ref(), request).await
    }
}
