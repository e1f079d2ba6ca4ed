//! Where model files come from: the mindformers cache (`$MF_HOME`), an existing Hugging Face
//! hub cache (`HF_HOME`), or a download from the hub into that cache.
use std::path::{Path, PathBuf};

use crate::error::{MfError, Result};

/// The single-file weight name Hugging Face uses.
pub const WEIGHTS_NAME: &str = "model.safetensors";
/// The index file of a sharded Hugging Face checkpoint.
pub const WEIGHTS_INDEX_NAME: &str = "model.safetensors.index.json";

/// The model file locations in effect.
#[derive(Debug, Clone)]
pub struct ModelHub {
    /// mindformers' own cache: `<mf_home>/<model name>/config.json` etc.
    pub mf_home: PathBuf,
    /// The Hugging Face hub cache (`models--org--name/snapshots/<rev>/...`).
    pub hf_cache: PathBuf,
    /// Hub endpoint for downloads.
    pub endpoint: String,
    /// Never touch the network.
    pub offline: bool,
}

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> PathBuf {
    env_path("HOME").unwrap_or_else(|| PathBuf::from("."))
}

fn truthy(key: &str) -> bool {
    matches!(
        std::env::var(key)
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl ModelHub {
    /// From the environment: `MF_HOME` (default `~/.cache/mindformers`), `HF_HUB_CACHE` or
    /// `HF_HOME/hub` (default `~/.cache/huggingface/hub`), `HF_ENDPOINT`, and
    /// `MF_OFFLINE`/`HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let mf_home = env_path("MF_HOME").unwrap_or_else(|| home().join(".cache/mindformers"));
        let hf_cache = env_path("HF_HUB_CACHE")
            .or_else(|| env_path("HF_HOME").map(|h| h.join("hub")))
            .unwrap_or_else(|| home().join(".cache/huggingface/hub"));
        ModelHub {
            mf_home,
            hf_cache,
            endpoint: std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "https://huggingface.co".to_string()),
            offline: truthy("MF_OFFLINE") || truthy("HF_HUB_OFFLINE"),
        }
    }

    /// Finds (or downloads) a model directory holding `config.json` and its safetensors
    /// weights for the preset `name`, whose hub repository is `repo`.
    pub fn model_dir(&self, name: &str, repo: Option<&str>) -> Result<PathBuf> {
        let local = self.mf_home.join(name);
        if has_model_files(&local) {
            return Ok(local);
        }
        let Some(repo) = repo else {
            return Err(MfError::NotFound(format!(
                "model '{name}': no weights in {} and the preset names no hub repository; put \
                 config.json and {WEIGHTS_NAME} there",
                local.display()
            )));
        };
        if let Some(dir) = self.cached_snapshot(repo) {
            return Ok(dir);
        }
        let why = if self.offline {
            "offline mode (MF_OFFLINE/HF_HUB_OFFLINE) is on".to_string()
        } else {
            match self.download(repo) {
                Ok(dir) => return Ok(dir),
                Err(e) => format!("download from {}/{repo} failed: {e}", self.endpoint),
            }
        };
        Err(MfError::NotFound(format!(
            "model '{name}': weights not found. Looked in {} and the Hugging Face cache {}; {why}. \
             Put config.json and {WEIGHTS_NAME} in {} (or set MF_HOME), or pass a directory",
            local.display(),
            self.hf_cache.join(repo_folder(repo)).display(),
            local.display()
        )))
    }

    /// The snapshot directory of `repo` in the HF cache, if it holds a complete model.
    pub fn cached_snapshot(&self, repo: &str) -> Option<PathBuf> {
        let cache = hf_hub::Cache::new(self.hf_cache.clone());
        let cached = cache.model(repo.to_string());
        let config = cached.get("config.json")?;
        let dir = config.parent()?.to_path_buf();
        if cached.get(WEIGHTS_NAME).is_some() {
            return Some(dir);
        }
        let index = cached.get(WEIGHTS_INDEX_NAME)?;
        let shards = index_shards(&index).ok()?;
        shards
            .iter()
            .all(|s| cached.get(s).is_some())
            .then_some(dir)
    }

    /// Downloads `config.json` and the safetensors weights of `repo` into the HF cache
    /// (the `download` feature; without it, an error saying where to put the files instead).
    #[cfg(not(feature = "download"))]
    pub fn download(&self, _repo: &str) -> Result<PathBuf> {
        Err(MfError::NotFound(
            "this build cannot download: mf-core's `download` feature is off (the `mindformers` \
             crate turns it on by default)"
                .into(),
        ))
    }

    /// Downloads `config.json` and the safetensors weights of `repo` into the HF cache.
    #[cfg(feature = "download")]
    pub fn download(&self, repo: &str) -> Result<PathBuf> {
        let api =
            hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(self.hf_cache.clone()))
                .with_endpoint(self.endpoint.clone())
                .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .build()
                .map_err(|e| MfError::NotFound(format!("hub client: {e}")))?;
        let model = api.model(repo.to_string());
        let fetch = |file: &str| {
            model
                .get(file)
                .map_err(|e| MfError::NotFound(format!("{file}: {e}")))
        };
        let config = fetch("config.json")?;
        if fetch(WEIGHTS_NAME).is_err() {
            let index = fetch(WEIGHTS_INDEX_NAME)?;
            for shard in index_shards(&index)? {
                fetch(&shard)?;
            }
        }
        // A repository's tokenizer lives beside its weights; each file is optional (a repo
        // ships tokenizer.json, or vocab.txt, or vocab.json + merges.txt).
        for file in TOKENIZER_FILES {
            let _ = model.get(file);
        }
        Ok(config
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.hf_cache.clone()))
    }
}

/// Tokenizer files fetched with a model, when the repository has them.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "modules.json",
    "1_Pooling/config.json",
];

/// Whether `dir` holds `config.json` and safetensors weights.
pub fn has_model_files(dir: &Path) -> bool {
    dir.join("config.json").is_file()
        && (dir.join(WEIGHTS_NAME).is_file() || dir.join(WEIGHTS_INDEX_NAME).is_file())
}

/// The HF cache folder name of a model repository.
pub fn repo_folder(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

fn index_shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| MfError::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| MfError::checkpoint(index.display(), format!("malformed index: {e}")))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| MfError::checkpoint(index.display(), "index has no weight_map object"))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(root: &Path) -> ModelHub {
        ModelHub {
            mf_home: root.join("mf"),
            hf_cache: root.join("hf"),
            endpoint: "http://127.0.0.1:9".into(),
            offline: true,
        }
    }

    #[test]
    fn finds_mf_home_then_hf_cache_then_explains() {
        let root = tempfile::tempdir().unwrap();
        let hub = hub(root.path());
        let err = hub
            .model_dir("gpt2", Some("openai-community/gpt2"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("weights not found") && err.contains("mf/gpt2"),
            "{err}"
        );
        assert!(err.contains("offline"), "{err}");

        // An HF cache in the layout huggingface_hub writes.
        let repo = root.path().join("hf/models--openai-community--gpt2");
        let snap = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        assert!(
            hub.cached_snapshot("openai-community/gpt2").is_none(),
            "no weights yet"
        );
        std::fs::write(
            snap.join(WEIGHTS_INDEX_NAME),
            r#"{"weight_map":{"a":"s1.safetensors"}}"#,
        )
        .unwrap();
        assert!(
            hub.cached_snapshot("openai-community/gpt2").is_none(),
            "shard missing"
        );
        std::fs::write(snap.join("s1.safetensors"), "x").unwrap();
        assert_eq!(
            hub.model_dir("gpt2", Some("openai-community/gpt2"))
                .unwrap(),
            snap
        );

        // $MF_HOME wins over the HF cache.
        let local = root.path().join("mf/gpt2");
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(local.join("config.json"), "{}").unwrap();
        std::fs::write(local.join(WEIGHTS_NAME), "x").unwrap();
        assert_eq!(
            hub.model_dir("gpt2", Some("openai-community/gpt2"))
                .unwrap(),
            local
        );
    }

    #[cfg(feature = "download")]
    /// A loopback stand-in for the hub's `/{repo}/resolve/{rev}/{file}` endpoint, speaking the
    /// protocol hf-hub uses (a `Range: bytes=0-0` probe for etag/commit/size, then the body).
    fn serve(
        files: Vec<(&'static str, Vec<u8>)>,
        requests: usize,
    ) -> (String, std::thread::JoinHandle<()>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            for _ in 0..requests {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                stream
                    .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut probe = false;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    probe |= h.to_ascii_lowercase().starts_with("range: bytes=0-0");
                }
                let found = files
                    .iter()
                    .find(|(name, _)| path.ends_with(&format!("/resolve/main/{name}")));
                let resp = match found {
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                    Some((_, body)) => {
                        let part: &[u8] = if probe { &body[..1] } else { body };
                        let mut r = format!(
                            "HTTP/1.1 206 Partial Content\r\netag: \"e{}\"\r\nx-repo-commit: 0123456789abcdef\r\n\
                             Content-Range: bytes 0-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len(),
                            part.len() - 1,
                            body.len(),
                            part.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(part);
                        r
                    }
                };
                let _ = stream.write_all(&resp);
            }
        });
        (addr, handle)
    }

    #[test]
    #[cfg(feature = "download")]
    fn downloads_into_the_hf_cache_then_reads_it_offline() {
        let root = tempfile::tempdir().unwrap();
        let index =
            br#"{"weight_map":{"a":"part-1.safetensors","b":"part-2.safetensors"}}"#.to_vec();
        let files = vec![
            ("config.json", b"{\"model_type\": \"gpt2\"}".to_vec()),
            (WEIGHTS_INDEX_NAME, index),
            ("part-1.safetensors", vec![1u8; 300]),
            ("part-2.safetensors", vec![2u8; 70]),
        ];
        // config (probe + body), model.safetensors (404), index, two shards (probe + body each).
        let (endpoint, server) = serve(files, 9);
        let hub = ModelHub {
            endpoint,
            offline: false,
            ..hub(root.path())
        };
        let dir = hub.model_dir("tiny", Some("org/tiny")).unwrap();
        server.join().unwrap();
        assert!(
            dir.starts_with(root.path().join("hf/models--org--tiny/snapshots")),
            "{}",
            dir.display()
        );
        assert_eq!(
            std::fs::read(dir.join("part-1.safetensors")).unwrap(),
            vec![1u8; 300]
        );
        assert_eq!(
            std::fs::read(dir.join("part-2.safetensors")).unwrap(),
            vec![2u8; 70]
        );
        // Now served from the cache with the network forbidden.
        let offline = ModelHub {
            offline: true,
            ..hub
        };
        assert_eq!(offline.model_dir("tiny", Some("org/tiny")).unwrap(), dir);
    }

    #[test]
    #[cfg(feature = "download")]
    fn failed_download_says_what_and_where() {
        let root = tempfile::tempdir().unwrap();
        let (endpoint, server) = serve(Vec::new(), 1);
        let hub = ModelHub {
            endpoint: endpoint.clone(),
            offline: false,
            ..hub(root.path())
        };
        let err = hub
            .model_dir("tiny", Some("org/tiny"))
            .unwrap_err()
            .to_string();
        server.join().unwrap();
        assert!(
            err.contains(&format!("download from {endpoint}/org/tiny failed")),
            "{err}"
        );
        assert!(err.contains("config.json"), "{err}");
    }

    #[test]
    #[cfg(not(feature = "download"))]
    fn without_the_download_feature_the_error_names_it() {
        let root = tempfile::tempdir().unwrap();
        let hub = ModelHub {
            offline: false,
            ..hub(root.path())
        };
        let err = hub
            .model_dir("tiny", Some("org/tiny"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`download` feature"), "{err}");
        assert!(err.contains("MF_HOME") || err.contains("tiny"), "{err}");
    }
}
