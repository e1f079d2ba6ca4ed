//! Safetensors checkpoint IO: reads (single file or sharded with an `*.index.json`), strict
//! loading into named parameters, and atomic writes.
//!
//! This is the one place where tensors cross the disk boundary.
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo};
use tch::{Kind, Tensor};

use crate::error::{MfError, Result};
use crate::file::write_atomic;

pub use crate::hub::{WEIGHTS_INDEX_NAME, WEIGHTS_NAME};

struct Shard {
    path: PathBuf,
    file: File,
    /// The whole file, mapped for the header and the bounds checks only: tensor data is read
    /// with `pread` into the tensor's own memory. Copying out of the mapping would fault the
    /// file's pages into this process, and they count in its RSS for as long as the mapping
    /// lives, so a load would peak at twice the checkpoint.
    mmap: Mmap,
    data_start: usize,
}

/// A read-only view of one or more safetensors files.
pub struct SafeTensors {
    origin: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, (usize, TensorInfo)>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensors")
            .field("origin", &self.origin)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafeTensors {
    /// Opens a `.safetensors` file, an `*.index.json`, or a directory holding either.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            let single = path.join(WEIGHTS_NAME);
            let index = path.join(WEIGHTS_INDEX_NAME);
            if single.is_file() {
                return Self::open_files(path, &[single]);
            }
            if index.is_file() {
                return Self::open_index(&index);
            }
            let hint = if path.join("pytorch_model.bin").exists() {
                " (pytorch_model.bin is not read: convert it to safetensors, e.g. with \
                 `model.save_pretrained(dir, safe_serialization=True)` in transformers)"
            } else {
                ""
            };
            return Err(MfError::checkpoint(
                path.display(),
                format!("no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in this directory{hint}"),
            ));
        }
        if !path.exists() {
            return Err(MfError::checkpoint(path.display(), "file does not exist"));
        }
        if path.to_string_lossy().ends_with(".json") {
            Self::open_index(path)
        } else {
            Self::open_files(path, &[path.to_path_buf()])
        }
    }

    fn open_index(index: &Path) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(index).map_err(|e| MfError::io(index, e))?;
        let parsed: Index = serde_json::from_str(&text).map_err(|e| {
            MfError::checkpoint(index.display(), format!("malformed index json: {e}"))
        })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files: Vec<String> = parsed.weight_map.values().cloned().collect();
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        let st = Self::open_files(index, &paths)?;
        for (name, file) in &parsed.weight_map {
            match st.tensors.get(name) {
                Some((i, _)) if st.shards[*i].path == dir.join(file) => {}
                _ => {
                    return Err(MfError::checkpoint(
                        index.display(),
                        format!("index maps '{name}' to {file}, which does not hold it"),
                    ))
                }
            }
        }
        Ok(st)
    }

    fn open_files(origin: &Path, paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut tensors = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| MfError::io(path, e))?;
            // SAFETY: the file is opened read-only and checkpoints are not modified while read;
            // a concurrent writer uses a temp file + rename, which leaves this mapping intact.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| MfError::io(path, e))?;
            let (header_len, meta) =
                safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| {
                    MfError::checkpoint(
                        path.display(),
                        format!("not a valid safetensors file: {e}"),
                    )
                })?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                if tensors.contains_key(&name) {
                    return Err(MfError::checkpoint(
                        origin.display(),
                        format!("tensor '{name}' appears in more than one shard"),
                    ));
                }
                tensors.insert(name, (i, info.clone()));
            }
            shards.push(Shard {
                path: path.clone(),
                file,
                mmap,
                data_start,
            });
        }
        Ok(SafeTensors {
            origin: origin.to_path_buf(),
            shards,
            tensors,
        })
    }

    /// Where this checkpoint was opened from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.tensors
            .get(name)
            .map(|(_, info)| info.shape.iter().map(|&d| d as i64).collect())
    }

    /// Reads one tensor into a CPU tensor of its stored dtype.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let (i, info) = self.tensors.get(name).ok_or_else(|| {
            MfError::checkpoint(self.origin.display(), format!("no tensor named '{name}'"))
        })?;
        let shard = &self.shards[*i];
        let kind = kind_of(info.dtype).ok_or_else(|| {
            MfError::checkpoint(
                shard.path.display(),
                format!("tensor '{name}' has unsupported dtype {:?}", info.dtype),
            )
        })?;
        let (start, end) = info.data_offsets;
        let truncated = || {
            MfError::checkpoint(
                shard.path.display(),
                format!("tensor '{name}' is truncated"),
            )
        };
        let (from, to) = (shard.data_start + start, shard.data_start + end);
        if to > shard.mmap.len() || from > to {
            return Err(truncated());
        }
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let t = crate::memory::empty_aligned(&shape, kind)?;
        let nbytes = t.numel() * kind.elt_size_in_bytes();
        if nbytes != to - from {
            return Err(MfError::checkpoint(
                shard.path.display(),
                format!(
                    "tensor '{name}' holds {} bytes but its shape {shape:?} and dtype need \
                     {nbytes}",
                    to - from
                ),
            ));
        }
        if nbytes > 0 {
            // SAFETY: `t` is a fresh contiguous CPU tensor of exactly `nbytes` bytes that
            // nothing else references yet.
            let buf = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, nbytes) };
            read_at(shard, buf, from).map_err(|e| MfError::io(&shard.path, e))?;
            crate::memory::advise_huge_pages(&t);
        }
        Ok(t)
    }
}

/// Fills `buf` from `offset` of the shard's file.
#[cfg(unix)]
fn read_at(shard: &Shard, buf: &mut [u8], offset: usize) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    shard.file.read_exact_at(buf, offset as u64)
}

/// Fills `buf` from `offset` of the shard's file (through the mapping where `pread` is
/// missing).
#[cfg(not(unix))]
fn read_at(shard: &Shard, buf: &mut [u8], offset: usize) -> std::io::Result<()> {
    let _ = &shard.file;
    buf.copy_from_slice(&shard.mmap[offset..offset + buf.len()]);
    Ok(())
}

fn kind_of(d: Dtype) -> Option<Kind> {
    Some(match d {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(k: Kind) -> Option<Dtype> {
    Some(match k {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double)
}

/// How checkpoint names relate to a model's parameter names.
pub struct LoadSpec<'a> {
    /// Maps a checkpoint name to a parameter name; `None` means "not a parameter".
    pub rename: &'a dyn Fn(&str) -> Option<String>,
    /// Checkpoint tensors that may be present and are skipped (buffers, tied copies).
    pub ignore: &'a dyn Fn(&str) -> bool,
}

/// Copies checkpoint tensors into `params`, failing on missing, unexpected or mis-shaped tensors.
///
/// Float tensors are converted to the parameter's dtype (as transformers does); a non-float
/// tensor for a float parameter is an error.
pub fn load_parameters(
    ckpt: &SafeTensors,
    params: &HashMap<String, Tensor>,
    spec: &LoadSpec<'_>,
) -> Result<()> {
    let origin = ckpt.origin().display().to_string();
    let mut loaded = std::collections::HashSet::new();
    let mut unexpected = Vec::new();
    for name in ckpt.names() {
        if (spec.ignore)(name) {
            continue;
        }
        let Some(target) = (spec.rename)(name).filter(|t| params.contains_key(t)) else {
            unexpected.push(name.to_string());
            continue;
        };
        let param = &params[&target];
        let src = ckpt.get(name)?;
        if src.size() != param.size() {
            return Err(MfError::checkpoint(
                &origin,
                format!(
                    "tensor '{name}' has shape {:?} but the model's '{target}' expects {:?}; \
                     the checkpoint does not match this config",
                    src.size(),
                    param.size()
                ),
            ));
        }
        if is_float(param.kind()) != is_float(src.kind()) {
            return Err(MfError::checkpoint(
                &origin,
                format!(
                    "tensor '{name}' has dtype {:?} but '{target}' is {:?}",
                    src.kind(),
                    param.kind()
                ),
            ));
        }
        tch::no_grad(|| -> Result<()> {
            let mut p = param.shallow_clone();
            p.f_copy_(&src.f_to_kind(param.kind())?)?;
            Ok(())
        })?;
        if !loaded.insert(target.clone()) {
            return Err(MfError::checkpoint(
                &origin,
                format!("two checkpoint tensors map to parameter '{target}'"),
            ));
        }
    }
    if !unexpected.is_empty() {
        return Err(MfError::checkpoint(
            &origin,
            format!(
                "unexpected tensor(s) not in the model: {} (is this checkpoint for another \
                 architecture?)",
                preview(&unexpected)
            ),
        ));
    }
    let mut missing: Vec<String> = params
        .keys()
        .filter(|k| !loaded.contains(*k))
        .cloned()
        .collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(MfError::checkpoint(
            &origin,
            format!("missing tensor(s): {}", preview(&missing)),
        ));
    }
    Ok(())
}

/// The first names of a list, for an error message (`a, b, ... (12 in all)`).
pub fn preview(names: &[String]) -> String {
    const MAX: usize = 8;
    let mut s = names
        .iter()
        .take(MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX {
        s.push_str(&format!(" ... ({} in all)", names.len()));
    }
    s
}

struct View {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &View {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Raw little-endian bytes of a tensor (moved to CPU, made contiguous).
pub fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(data)
}

/// Writes tensors to one safetensors file through a temp file and a rename, so a crash never
/// leaves a half-written checkpoint under the final name.
pub fn save_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = dtype_of(t.kind()).ok_or_else(|| {
            MfError::checkpoint(path.display(), format!("cannot store dtype {:?}", t.kind()))
        })?;
        views.push((
            name.clone(),
            View {
                dtype,
                shape: t.size().iter().map(|&d| d as usize).collect(),
                data: tensor_bytes(t)?,
            },
        ));
    }
    let refs: Vec<(String, &View)> = views.iter().map(|(n, v)| (n.clone(), v)).collect();
    write_atomic(path, |tmp| {
        safetensors::serialize_to_file(refs, metadata, tmp)
            .map_err(|e| MfError::checkpoint(tmp.display(), e.to_string()))?;
        // The safetensors crate creates its file owner-only (0600); a checkpoint is shared
        // like the config.json beside it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| MfError::io(tmp, e))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> HashMap<String, Tensor> {
        let mut p = HashMap::new();
        p.insert(
            "a.weight".to_string(),
            Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu)),
        );
        p.insert(
            "b.bias".to_string(),
            Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
        );
        p
    }

    fn same(name: &str) -> Option<String> {
        Some(name.to_string())
    }

    #[test]
    fn round_trip_single_and_sharded() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).reshape([2, 3]);
        let b = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).to_kind(Kind::BFloat16);
        save_safetensors(
            dir.path().join(WEIGHTS_NAME),
            &[
                ("a.weight".into(), a.shallow_clone()),
                ("b.bias".into(), b.shallow_clone()),
            ],
            None,
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(dir.path().join(WEIGHTS_NAME)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        }
        let st = SafeTensors::open(dir.path()).unwrap();
        assert_eq!(st.names().collect::<Vec<_>>(), ["a.weight", "b.bias"]);
        let p = params();
        load_parameters(
            &st,
            &p,
            &LoadSpec {
                rename: &same,
                ignore: &|_| false,
            },
        )
        .unwrap();
        assert!(p["a.weight"].equal(&a));
        assert_eq!(p["b.bias"].kind(), Kind::Float);
        assert!(p["b.bias"].equal(&b.to_kind(Kind::Float)));

        let sharded = tempfile::tempdir().unwrap();
        save_safetensors(
            sharded.path().join("m-1.safetensors"),
            &[("a.weight".into(), a)],
            None,
        )
        .unwrap();
        save_safetensors(
            sharded.path().join("m-2.safetensors"),
            &[("b.bias".into(), b)],
            None,
        )
        .unwrap();
        std::fs::write(
            sharded.path().join(WEIGHTS_INDEX_NAME),
            r#"{"metadata":{},"weight_map":{"a.weight":"m-1.safetensors","b.bias":"m-2.safetensors"}}"#,
        )
        .unwrap();
        let st = SafeTensors::open(sharded.path()).unwrap();
        let p2 = params();
        load_parameters(
            &st,
            &p2,
            &LoadSpec {
                rename: &same,
                ignore: &|_| false,
            },
        )
        .unwrap();
        assert!(p2["a.weight"].equal(&p["a.weight"]));
    }

    fn load_error(f: &Path) -> String {
        let spec = LoadSpec {
            rename: &same,
            ignore: &|_| false,
        };
        load_parameters(&SafeTensors::open(f).unwrap(), &params(), &spec)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn mismatches_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.safetensors");
        let zeros = |s: &[i64]| Tensor::zeros(s, (Kind::Float, tch::Device::Cpu));
        save_safetensors(
            &f,
            &[
                ("a.weight".into(), zeros(&[3, 2])),
                ("b.bias".into(), zeros(&[3])),
            ],
            None,
        )
        .unwrap();
        let err = load_error(&f);
        assert!(
            err.contains("'a.weight' has shape [3, 2]") && err.contains("[2, 3]"),
            "{err}"
        );

        save_safetensors(&f, &[("a.weight".into(), zeros(&[2, 3]))], None).unwrap();
        let err = load_error(&f);
        assert!(err.contains("missing tensor(s): b.bias"), "{err}");

        save_safetensors(
            &f,
            &[
                ("a.weight".into(), zeros(&[2, 3])),
                ("b.bias".into(), zeros(&[3])),
                ("c".into(), zeros(&[1])),
            ],
            None,
        )
        .unwrap();
        let err = load_error(&f);
        assert!(
            err.contains("unexpected tensor(s) not in the model: c"),
            "{err}"
        );

        std::fs::write(&f, b"garbage").unwrap();
        let err = SafeTensors::open(&f).unwrap_err().to_string();
        assert!(err.contains("not a valid safetensors file"), "{err}");
        let err = SafeTensors::open(dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
