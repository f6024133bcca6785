//! Safetensors files — the one reader and the one writer of the format in ferrolm (model
//! checkpoints, LoRA and prompt-tuning adapters, saved models), both through the `safetensors`
//! crate, which validates headers (size, JSON, dtypes, shapes, contiguous in-bounds offsets)
//! before any tensor is touched.
//!
//! Reading maps the file read-only and hands out borrowed byte slices; writing streams one
//! tensor at a time through lazy views (each tensor's bytes are produced only when written)
//! into a file beside the target that is renamed into place once complete, so a failed write
//! leaves nothing behind and never truncates an existing file.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};

use crate::error::{Error, Result};
use crate::model::DType;

/// One tensor of an open file: where its bytes lie in the mapping.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    /// The safetensors dtype, as named in the header ("F32", "BF16", "I8", "U8", ...).
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the mapped file.
    start: usize,
    end: usize,
}

/// A safetensors file, mapped read-only; tensors in file (offset) order.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    tensors: Vec<TensorEntry>,
    index: HashMap<String, usize>,
    metadata: HashMap<String, String>,
}

/// ferrolm's dtype of a safetensors dtype, for the dtypes the loaders convert.
pub fn dtype_of(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        Dtype::F64 => Some(DType::F64),
        Dtype::I8 => Some(DType::I8),
        Dtype::U8 => Some(DType::U8),
        _ => None,
    }
}

fn safetensors_dtype(dtype: DType) -> Dtype {
    match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F64 => Dtype::F64,
        DType::I8 => Dtype::I8,
        DType::U8 => Dtype::U8,
    }
}

impl SafetensorsFile {
    /// Opens and validates `path` (header and offsets; the data is not read).
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        let file = File::open(path).map_err(|e| Error::Io(format!("cannot open {shown}: {e}")))?;
        let len = file.metadata().map_err(|e| Error::Io(format!("cannot read {shown}: {e}")))?.len();
        if len < 8 {
            return Err(Error::Io(format!("{shown} is not a valid safetensors file: {len} bytes is too short for a header")));
        }
        // SAFETY: the file is opened read-only and only read through the mapping while it lives.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::Io(format!("cannot map {shown}: {e}")))?;
        let (header_len, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| Error::Io(format!("{shown} is not a valid safetensors file: {e}")))?;
        let data_start = 8 + header_len;
        let mut tensors: Vec<TensorEntry> = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| TensorEntry {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: data_start + info.data_offsets.0,
                end: data_start + info.data_offsets.1,
            })
            .collect();
        tensors.sort_by_key(|t| (t.start, t.end));
        let index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(Self { path: path.to_path_buf(), mmap, tensors, index, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The header's `__metadata__` (empty when absent).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    pub fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.index.get(name).map(|&i| &self.tensors[i]).ok_or_else(|| Error::MissingTensor(format!("{name} (in {})", self.path.display())))
    }

    /// The little-endian bytes of `entry` (a slice of the mapping).
    pub fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.mmap[entry.start..entry.end]
    }

    /// Values of float tensor `name` widened to f32; `None` for an int8 / packed int4 tensor (it
    /// has no float values of its own: its scales live beside it).
    pub fn f32_values(&self, name: &str) -> Result<Option<Vec<f32>>> {
        let entry = self.entry(name)?;
        match dtype_of(entry.dtype) {
            Some(DType::I8 | DType::U8) => Ok(None),
            Some(dtype) => crate::model::tensors::to_f32(dtype, self.bytes(entry)).map(Some),
            None => Err(Error::Tensor(format!("tensor '{name}' in {} has dtype {}, not a float type", self.path.display(), entry.dtype))),
        }
    }

    /// The mapping behind every tensor (to drop pages once a tensor is converted).
    pub fn mmap(&self) -> &memmap2::Mmap {
        &self.mmap
    }
}

/// A tensor to write: its name, dtype and shape; the bytes come later, from the writer's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl WriteEntry {
    /// Bytes of the tensor, checked against overflow.
    pub fn nbytes(&self) -> Result<usize> {
        self.shape
            .iter()
            .try_fold(self.dtype.size(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::InvalidArgument(format!("tensor '{}' of shape {:?} is too large", self.name, self.shape)))
    }
}

/// A tensor whose bytes are asked of the source only when the writer reaches it.
struct LazyView<'a> {
    entry: &'a WriteEntry,
    dtype: Dtype,
    len: usize,
    source: &'a dyn Fn(&WriteEntry) -> Result<Vec<u8>>,
    failed: &'a RefCell<Option<Error>>,
}

impl View for LazyView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.entry.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if self.failed.borrow().is_some() {
            return Cow::Owned(Vec::new());
        }
        match (self.source)(self.entry) {
            Ok(bytes) if bytes.len() == self.len => Cow::Owned(bytes),
            Ok(bytes) => {
                let msg = format!("tensor '{}': got {} bytes, its dtype and shape need {}", self.entry.name, bytes.len(), self.len);
                *self.failed.borrow_mut() = Some(Error::InvalidArgument(msg));
                Cow::Owned(Vec::new())
            }
            Err(e) => {
                *self.failed.borrow_mut() = Some(e);
                Cow::Owned(Vec::new())
            }
        }
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

/// Writes `entries` to `path`, asking `source` for each tensor's little-endian bytes only when
/// it is written (at most one tensor in memory at a time). The file is written under a
/// temporary name beside `path` and renamed into place when complete; on any error (a source
/// failing, a wrong byte count, I/O) nothing is left behind and an existing `path` is untouched.
pub fn write(path: &Path, entries: &[WriteEntry], metadata: Option<HashMap<String, String>>, source: &dyn Fn(&WriteEntry) -> Result<Vec<u8>>) -> Result<()> {
    let shown = path.display();
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        if !seen.insert(e.name.as_str()) {
            return Err(Error::InvalidArgument(format!("tensor '{}' is listed twice", e.name)));
        }
        if e.name == "__metadata__" {
            return Err(Error::InvalidArgument("'__metadata__' is not a tensor name".into()));
        }
    }
    let failed = RefCell::new(None);
    let views = entries
        .iter()
        .map(|entry| Ok((entry.name.clone(), LazyView { entry, dtype: safetensors_dtype(entry.dtype), len: entry.nbytes()?, source, failed: &failed })))
        .collect::<Result<Vec<_>>>()?;
    let name = path.file_name().ok_or_else(|| Error::InvalidArgument(format!("{shown} is not a file path")))?;
    let tmp = path.with_file_name(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
    let result = safetensors::serialize_to_file(views, metadata, &tmp).map_err(|e| Error::Io(format!("cannot write {shown}: {e}")));
    let result = match (result, failed.into_inner()) {
        (_, Some(e)) => Err(e),
        (r, None) => r,
    };
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io(format!("cannot write {shown}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferrolm-stfile-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_lazily_and_reads_back() {
        let d = dir("rw");
        let path = d.join("t.safetensors");
        let entries = vec![
            WriteEntry { name: "b".into(), dtype: DType::BF16, shape: vec![2] },
            WriteEntry { name: "a".into(), dtype: DType::F32, shape: vec![1, 2] },
            WriteEntry { name: "q".into(), dtype: DType::I8, shape: vec![3] },
        ];
        let asked = RefCell::new(Vec::new());
        let source = |e: &WriteEntry| -> Result<Vec<u8>> {
            asked.borrow_mut().push(e.name.clone());
            Ok(match e.name.as_str() {
                "a" => [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
                "b" => vec![0x80, 0x3f, 0x40, 0xc0],
                _ => vec![1, 0xff, 3],
            })
        };
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        write(&path, &entries, Some(meta.clone()), &source).unwrap();
        assert_eq!(asked.borrow().len(), 3);
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.metadata(), &meta);
        assert_eq!(f.tensors().len(), 3);
        assert_eq!(f.f32_values("a").unwrap().unwrap(), vec![1.5, -2.0]);
        assert_eq!(f.f32_values("b").unwrap().unwrap(), vec![1.0, -3.0]);
        assert_eq!(f.f32_values("q").unwrap(), None);
        assert_eq!(f.bytes(f.entry("q").unwrap()), &[1, 0xff, 3]);
        assert_eq!(f.entry("a").unwrap().shape, vec![1, 2]);
        assert!(matches!(f.entry("zz"), Err(Error::MissingTensor(_))));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_partial() {
        let d = dir("fail");
        let path = d.join("t.safetensors");
        std::fs::write(&path, b"old").unwrap();
        let entries = vec![WriteEntry { name: "a".into(), dtype: DType::F32, shape: vec![2] }];
        let short = |_: &WriteEntry| -> Result<Vec<u8>> { Ok(vec![0; 7]) };
        assert!(matches!(write(&path, &entries, None, &short), Err(Error::InvalidArgument(_))));
        let failing = |_: &WriteEntry| -> Result<Vec<u8>> { Err(Error::Tensor("no".into())) };
        assert!(matches!(write(&path, &entries, None, &failing), Err(Error::Tensor(_))));
        let twice = vec![entries[0].clone(), entries[0].clone()];
        assert!(matches!(write(&path, &twice, None, &short), Err(Error::InvalidArgument(_))));
        let huge = vec![WriteEntry { name: "h".into(), dtype: DType::F32, shape: vec![usize::MAX, 2] }];
        assert!(matches!(write(&path, &huge, None, &short), Err(Error::InvalidArgument(_))));
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn damaged_files_are_errors() {
        let d = dir("bad");
        let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut good = (header.len() as u64).to_le_bytes().to_vec();
        good.extend_from_slice(header);
        good.extend_from_slice(&[0; 8]);
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            good[..4].to_vec(),
            good[..good.len() - 1].to_vec(),
            [u64::MAX.to_le_bytes().to_vec(), good[8..].to_vec()].concat(),
            [(1u64 << 40).to_le_bytes().to_vec(), good[8..].to_vec()].concat(),
            good.iter().map(|&b| if b == b'8' { b'9' } else { b }).collect(),
            good.iter().map(|&b| if b == b'2' { b'7' } else { b }).collect(),
        ];
        for (i, bytes) in cases.iter().enumerate() {
            let p = d.join(format!("{i}.safetensors"));
            std::fs::write(&p, bytes).unwrap();
            assert!(matches!(SafetensorsFile::open(&p), Err(Error::Io(_))), "case {i}");
        }
        assert!(matches!(SafetensorsFile::open(&d.join("missing")), Err(Error::Io(_))));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
