//! `runtime.v1.ImageService`: PullImage, ListImages, ImageStatus, RemoveImage, ImageFsInfo.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use super::{Parts, verbose_json};
use crate::api;
use crate::api::image_service_server::ImageService;
use crate::error::Error;
use crate::images::{Credentials, Image};

pub struct ImageHandler {
    parts: Parts,
}

impl ImageHandler {
    pub fn new(parts: Parts) -> Self {
        Self { parts }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl ImageService for ImageHandler {
    async fn list_images(&self, request: Request<api::ListImagesRequest>) -> Reply<api::ListImagesResponse> {
        let request = request.into_inner();
        let filter = request.filter.clone().and_then(|f| f.image).map(|spec| spec.image);
        let mut images: Vec<api::Image> = self.parts.images.list(filter.as_deref())?.iter().map(to_api).collect();
        images.extend(
            self.parts
                .backing_list("ListImages", |backing| async move {
                    backing.images().list_images(request).await.map(|r| r.into_inner().images)
                })
                .await,
        );
        Ok(Response::new(api::ListImagesResponse { images }))
    }

    async fn image_status(&self, request: Request<api::ImageStatusRequest>) -> Reply<api::ImageStatusResponse> {
        let request = request.into_inner();
        let name = request.image.as_ref().map(|spec| spec.image.clone()).unwrap_or_default();
        // An absent image is an empty answer, not an error: kubelet asks before every pull.
        let Some(image) = self.parts.images.status(&name)? else {
            return match &self.parts.backing {
                Some(backing) => Ok(Response::new(
                    backing.images().image_status(request).await.map_err(|s| backing.status(s))?.into_inner(),
                )),
                None => Ok(Response::new(api::ImageStatusResponse::default())),
            };
        };
        let mut info = HashMap::new();
        if request.verbose {
            info.insert("info".to_owned(), verbose_json(&image));
        }
        Ok(Response::new(api::ImageStatusResponse { image: Some(to_api(&image)), info }))
    }

    async fn pull_image(&self, request: Request<api::PullImageRequest>) -> Reply<api::PullImageResponse> {
        let request = request.into_inner();
        let forwarded = request.clone();
        let name = request.image.map(|spec| spec.image).unwrap_or_default();
        let credentials = request
            .auth
            .map(|auth| Credentials {
                username: auth.username,
                password: auth.password,
                auth: auth.auth,
                identity_token: auth.identity_token,
                registry_token: auth.registry_token,
            })
            .unwrap_or_default();
        match self.parts.images.pull(&name, &credentials).await {
            Ok(image) => Ok(Response::new(api::PullImageResponse { image_ref: image.id })),
            // Not wasm: the backing runtime's image, pulled by the backing runtime.
            Err(Error::NotWasm(why)) => match &self.parts.backing {
                Some(backing) => {
                    tracing::debug!(image = %name, %why, "forwarding the pull of a non-wasm image");
                    Ok(Response::new(
                        backing.images().pull_image(forwarded).await.map_err(|s| backing.status(s))?.into_inner(),
                    ))
                }
                None => Err(Error::NotWasm(why).into()),
            },
            // No source gave the manifest: whether it is wasm is unknown, and
            // the backing runtime, with its own registry configuration, may
            // reach what wasmrun cannot. Its answer is the answer.
            Err(Error::Unfetchable(why)) => match &self.parts.backing {
                Some(backing) => {
                    tracing::warn!(image = %name, error = %why, endpoint = %backing.endpoint, "wasmrun cannot fetch the image's manifest; forwarding the pull to the backing runtime");
                    Ok(Response::new(
                        backing.images().pull_image(forwarded).await.map_err(|s| backing.status(s))?.into_inner(),
                    ))
                }
                None => Err(Error::Unfetchable(why).into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_image(&self, request: Request<api::RemoveImageRequest>) -> Reply<api::RemoveImageResponse> {
        let request = request.into_inner();
        let name = request.image.as_ref().map(|spec| spec.image.clone()).unwrap_or_default();
        if let (None, Some(backing)) = (self.parts.images.status(&name)?, &self.parts.backing) {
            return Ok(Response::new(
                backing.images().remove_image(request).await.map_err(|s| backing.status(s))?.into_inner(),
            ));
        }
        self.parts.images.remove(&name).await?;
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
        let mut image_filesystems = vec![filesystem];
        let mut container_filesystems = Vec::new();
        let backing = self
            .parts
            .backing_list("ImageFsInfo", |backing| async move {
                backing.images().image_fs_info(api::ImageFsInfoRequest {}).await.map(|r| vec![r.into_inner()])
            })
            .await;
        for answer in backing {
            image_filesystems.extend(answer.image_filesystems);
            container_filesystems.extend(answer.container_filesystems);
        }
        Ok(Response::new(api::ImageFsInfoResponse { image_filesystems, container_filesystems }))
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
