//! Service descriptions at run time: `.proto` files (files or directories, with imports) compiled
//! in-process with protox into a prost-reflect pool, swapped atomically when the files change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use prost_reflect::{DescriptorPool, MethodDescriptor};
use strait_config::grpc::Protos as ProtosConfig;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no .proto file under {0}")]
    NoFiles(PathBuf),
    #[error("cannot compile the .proto files: {0}")]
    Compile(String),
}

/// The current descriptor pool; cheap to clone and to read.
#[derive(Clone)]
pub struct Protos {
    pool: Arc<RwLock<Arc<DescriptorPool>>>,
    config: Arc<ProtosConfig>,
    /// The files as they were when the current pool was compiled.
    compiled_from: Arc<Vec<(PathBuf, u64, Option<SystemTime>)>>,
}

impl Protos {
    /// Compiles the configured files; an error names the file or the compile problem.
    pub fn load(config: ProtosConfig) -> Result<Self, ProtoError> {
        let compiled_from = Arc::new(fingerprint(&config));
        let pool = compile(&config)?;
        Ok(Self {
            pool: Arc::new(RwLock::new(Arc::new(pool))),
            config: Arc::new(config),
            compiled_from,
        })
    }

    pub fn pool(&self) -> Arc<DescriptorPool> {
        self.pool.read().expect("protos lock poisoned").clone()
    }

    /// The method named `package.Service/Method`, if the files describe it.
    pub fn method(&self, full_name: &str) -> Option<MethodDescriptor> {
        let (service, method) = full_name.split_once('/')?;
        self.pool()
            .get_service_by_name(service)?
            .methods()
            .find(|m| m.name() == method)
    }

    /// Polls the files every `reloadInterval` and swaps in a new pool when they changed and still
    /// compile (a broken edit is logged and the previous pool kept).
    pub fn watch(&self, shutdown: CancellationToken) {
        let interval = self.config.reload_interval;
        if interval.is_zero() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut seen = (*this.compiled_from).clone();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
                let now = fingerprint(&this.config);
                if now == seen {
                    continue;
                }
                seen = now;
                let config = this.config.clone();
                match tokio::task::spawn_blocking(move || compile(&config)).await {
                    Ok(Ok(pool)) => {
                        let services = pool.services().count();
                        *this.pool.write().expect("protos lock poisoned") = Arc::new(pool);
                        tracing::info!(services, "reloaded the .proto files");
                    }
                    Ok(Err(error)) => {
                        tracing::error!(%error, "changed .proto files do not compile; keeping the previous ones");
                    }
                    Err(error) => tracing::error!(%error, "proto reload task failed"),
                }
            }
        });
    }
}

fn compile(config: &ProtosConfig) -> Result<DescriptorPool, ProtoError> {
    let mut files = Vec::new();
    let mut includes = config.includes.clone();
    for path in &config.paths {
        let meta = std::fs::metadata(path).map_err(|source| ProtoError::Read {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let before = files.len();
            collect(path, &mut files)?;
            if files.len() == before {
                return Err(ProtoError::NoFiles(path.clone()));
            }
            if config.includes.is_empty() {
                includes.push(path.clone());
            }
        } else {
            files.push(path.clone());
            if config.includes.is_empty()
                && let Some(dir) = path.parent()
            {
                includes.push(if dir.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    dir.to_path_buf()
                });
            }
        }
    }
    files.sort();
    files.dedup();
    let describe = |e: protox::Error| {
        ProtoError::Compile(match e.file() {
            Some(file) => format!("{file}: {e}"),
            None => e.to_string(),
        })
    };
    let mut compiler = protox::Compiler::new(&includes).map_err(describe)?;
    compiler.include_imports(true);
    compiler.open_files(&files).map_err(describe)?;
    Ok(compiler.descriptor_pool())
}

/// Every `.proto` file under `dir`, skipping hidden entries: a mounted ConfigMap keeps each
/// file twice, as `NAME` (a symlink) and inside the hidden `..data`/`..<timestamp>` directories
/// it points into, and compiling both defines every name twice.
fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), ProtoError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ProtoError::Read {
        path: dir.into(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| ProtoError::Read {
                path: dir.into(),
                source,
            })?
            .path();
        if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            collect(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
    Ok(())
}

/// Paths, sizes and modification times of every file; a change in any means recompile.
fn fingerprint(config: &ProtosConfig) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files = Vec::new();
    for path in config.paths.iter().chain(&config.includes) {
        if path.is_dir() {
            let _ = collect(path, &mut files);
        } else {
            files.push(path.clone());
        }
    }
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (path, len, modified)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "strait-protos-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn directory_with_imports_compiles_and_reloads_on_change() {
        let dir = temp_dir("reload");
        write(
            &dir,
            "a/common.proto",
            "syntax = \"proto3\"; package a; message M { string s = 1; }",
        );
        write(
            &dir,
            "b/svc.proto",
            "syntax = \"proto3\"; package b; import \"a/common.proto\"; \
             service S { rpc One(a.M) returns (a.M); }",
        );
        let protos = Protos::load(ProtosConfig {
            paths: vec![dir.clone()],
            includes: vec![],
            reload_interval: Duration::from_millis(50),
        })
        .unwrap();
        let one = protos.method("b.S/One").expect("b.S/One");
        assert_eq!(one.input().full_name(), "a.M");
        assert!(protos.method("b.S/Two").is_none());
        assert!(protos.method("nope").is_none());

        let shutdown = CancellationToken::new();
        protos.watch(shutdown.clone());
        // mtime granularity: make the change also change the size.
        write(
            &dir,
            "b/svc.proto",
            "syntax = \"proto3\"; package b; import \"a/common.proto\"; \
             service S { rpc One(a.M) returns (a.M); rpc Two(a.M) returns (stream a.M); }",
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while protos.method("b.S/Two").is_none() {
            assert!(tokio::time::Instant::now() < deadline, "reload within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A broken edit keeps the previous pool.
        write(
            &dir,
            "b/svc.proto",
            "syntax = \"proto3\"; package b; service S { rpc",
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(protos.method("b.S/Two").is_some());
        shutdown.cancel();
    }

    #[test]
    fn a_mounted_config_map_compiles_each_file_once() {
        // The layout the kubelet gives a ConfigMap volume: the files live in a hidden
        // timestamped directory, `..data` points at it, and each visible name points into it.
        let dir = temp_dir("configmap");
        write(
            &dir,
            "..2026_12_07_05_51_25.4282632470/echo.proto",
            "syntax = \"proto3\"; package e; message M {} service S { rpc One(M) returns (M); }",
        );
        std::os::unix::fs::symlink("..2026_12_07_05_51_25.4282632470", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/echo.proto", dir.join("echo.proto")).unwrap();
        let protos = Protos::load(ProtosConfig {
            paths: vec![dir],
            includes: vec![],
            reload_interval: Duration::ZERO,
        })
        .expect("a ConfigMap's files compile");
        assert!(protos.method("e.S/One").is_some());
    }

    #[test]
    fn errors_name_the_problem() {
        let missing = Protos::load(ProtosConfig {
            paths: vec!["/nonexistent/x.proto".into()],
            includes: vec![],
            reload_interval: Duration::ZERO,
        })
        .err()
        .unwrap()
        .to_string();
        assert!(missing.contains("/nonexistent/x.proto"), "{missing}");
        let dir = temp_dir("broken");
        write(&dir, "bad.proto", "syntax = \"proto3\"; message {");
        let broken = Protos::load(ProtosConfig {
            paths: vec![dir],
            includes: vec![],
            reload_interval: Duration::ZERO,
        })
        .err()
        .unwrap()
        .to_string();
        assert!(broken.contains("bad.proto"), "{broken}");
    }
}
