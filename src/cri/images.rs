//! `runtime.v1.ImageService` of the wasm side: PullImage, ListImages,
//! ImageStatus, RemoveImage, ImageFsInfo on wasmrun's own image store.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use super::{Facade, verbose_json};
use crate::api;
use crate::api::image_service_server::ImageService;
use crate::error::Error;
use crate::images::{Credentials, Image};

type Reply<T> = Result<Response<T>, Status>;

impl Facade {
    /// PullImage, with the error as it is: the front reads `Error::NotWasm`
    /// and `Error::Unfetchable` to decide whether the backing runtime pulls
    /// instead (see `route::Rules::failed_pull`).
    pub async fn pull(&self, request: &api::PullImageRequest) -> Result<api::PullImageResponse, Error> {
        let name = request.image.as_ref().map_or("", |spec| spec.image.as_str());
        let credentials = request
            .auth
            .clone()
            .map(|auth| Credentials {
                username: auth.username,
                password: auth.password,
                auth: auth.auth,
                identity_token: auth.identity_token,
                registry_token: auth.registry_token,
            })
            .unwrap_or_default();
        let image = self.parts.images.pull(name, &credentials).await?;
        Ok(api::PullImageResponse { image_ref: image.id })
    }
}

#[tonic::async_trait]
impl ImageService for Facade {
    async fn list_images(&self, request: Request<api::ListImagesRequest>) -> Reply<api::ListImagesResponse> {
        let filter = request.into_inner().filter.and_then(|f| f.image).map(|spec| spec.image);
        let images = self.parts.images.list(filter.as_deref())?.iter().map(to_api).collect();
        Ok(Response::new(api::ListImagesResponse { images }))
    }

    /// An absent image is an empty answer, not an error: kubelet asks before every pull.
    async fn image_status(&self, request: Request<api::ImageStatusRequest>) -> Reply<api::ImageStatusResponse> {
        let request = request.into_inner();
        let name = request.image.as_ref().map_or("", |spec| spec.image.as_str());
        let Some(image) = self.parts.images.status(name)? else {
            return Ok(Response::new(api::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if request.verbose {
            info.insert("info".to_owned(), verbose_json(&image));
        }
        Ok(Response::new(api::ImageStatusResponse { image: Some(to_api(&image)), info }))
    }

    async fn pull_image(&self, request: Request<api::PullImageRequest>) -> Reply<api::PullImageResponse> {
        Ok(Response::new(self.pull(request.get_ref()).await?))
    }

    /// Removing an absent image is not an error.
    async fn remove_image(&self, request: Request<api::RemoveImageRequest>) -> Reply<api::RemoveImageResponse> {
        let name = request.get_ref().image.as_ref().map_or("", |spec| spec.image.as_str());
        self.parts.images.remove(name).await?;
        Ok(Response::new(api::RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _request: Request<api::ImageFsInfoRequest>) -> Reply<api::ImageFsInfoResponse> {
        let usage = self.parts.images.fs_usage().await?;
        let filesystem = api::FilesystemUsage {
            timestamp: usage.timestamp,
            fs_id: Some(api::FilesystemIdentifier { mountpoint: usage.mountpoint.display().to_string() }),
            used_bytes: Some(api::UInt64Value { value: usage.used_bytes }),
            inodes_used: Some(api::UInt64Value { value: usage.inodes_used }),
        };
        Ok(Response::new(api::ImageFsInfoResponse {
            image_filesystems: vec![filesystem],
            container_filesystems: Vec::new(),
        }))
    }
}

fn to_api(image: &Image) -> api::Image {
    api::Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid: None,
        username: String::new(),
        spec: Some(api::ImageSpec { image: image.id.clone(), ..Default::default() }),
        pinned: false,
    }
}
