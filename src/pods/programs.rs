//! What `pods` needs of images: the image a container names and the compiled
//! program it runs. The daemon's is [`ImagePrograms`] (the image store and
//! the engine's compiled-code cache); unit tests give hand-written modules,
//! so pods and containers can be driven without a registry.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::Result;
use crate::images::{Image, Images};
use crate::wasm::{Compiled, Engine, ModuleSource};

/// A future that borrows its caller, as the trait's async methods return.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The images and programs containers are created from.
pub trait Programs: Send + Sync {
    /// The stored image `name` names (an id, a tag or a digest reference).
    /// Errors: NotFound when it is not stored.
    fn image(&self, name: &str) -> Result<Image>;

    /// A compat image's unpacked filesystem, which its guests see as `/`;
    /// `None` for an artifact.
    fn rootfs(&self, image: &Image) -> Result<Option<PathBuf>>;

    /// The compiled program a container of `image` runs when its argv[0] is
    /// `argv0` and its working directory `working_dir`, and where the code
    /// came from. Errors: as the image's content or compilation fails
    /// (FailedPrecondition for imports the host lacks, InvalidArgument for a bad binary).
    fn program<'a>(
        &'a self,
        image: &'a Image,
        argv0: &'a str,
        working_dir: &'a str,
    ) -> Pending<'a, Result<(Arc<Compiled>, ModuleSource)>>;

    /// The compiled program at `argv0` (absolute, or relative to
    /// `working_dir`) in a compat image's filesystem, as an exec looks it up;
    /// `None` when the image has no filesystem or nothing is at that path.
    /// Errors: as [`Programs::program`] (InvalidArgument for a file that is not WebAssembly).
    fn find_program<'a>(
        &'a self,
        image: &'a Image,
        argv0: &'a str,
        working_dir: &'a str,
    ) -> Pending<'a, Result<Option<Arc<Compiled>>>>;
}

/// The daemon's programs: images from the store, code from the engine's cache.
pub struct ImagePrograms {
    pub images: Arc<Images>,
    pub engine: Arc<Engine>,
}

impl Programs for ImagePrograms {
    fn image(&self, name: &str) -> Result<Image> {
        self.images.require(name)
    }

    fn rootfs(&self, image: &Image) -> Result<Option<PathBuf>> {
        self.images.rootfs(image)
    }

    fn program<'a>(
        &'a self,
        image: &'a Image,
        argv0: &'a str,
        working_dir: &'a str,
    ) -> Pending<'a, Result<(Arc<Compiled>, ModuleSource)>> {
        Box::pin(async move {
            let program = self.images.program(image, argv0, working_dir).await?;
            self.engine.prepare(&program.digest, program.kind, program.source).await
        })
    }

    fn find_program<'a>(
        &'a self,
        image: &'a Image,
        argv0: &'a str,
        working_dir: &'a str,
    ) -> Pending<'a, Result<Option<Arc<Compiled>>>> {
        Box::pin(async move {
            let Some(program) = self.images.find_program(image, argv0, working_dir).await? else {
                return Ok(None);
            };
            let (compiled, _) = self.engine.prepare(&program.digest, program.kind, program.source).await?;
            Ok(Some(compiled))
        })
    }
}
