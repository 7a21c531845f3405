//! MNIST data: burn-dataset's `MnistDataset` (downloads once into its cache), or IDX files read
//! from a folder, gzipped or raw, with their headers checked.
//!
//! The IDX format (LeCun et al., <http://yann.lecun.com/exdb/mnist/>): a big-endian header —
//! magic `0x00000803` for images (count, rows, cols) or `0x00000801` for labels (count) — then
//! one unsigned byte per pixel or label.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::vision::{MnistDataset, MnistItem};
use burn::data::dataset::Dataset;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Image side length.
pub const SIDE: usize = 28;
/// Pixels per image.
pub const PIXELS: usize = SIDE * SIDE;
const IMAGE_MAGIC: u32 = 0x0803;
const LABEL_MAGIC: u32 = 0x0801;

/// File names of the four IDX files (burn-dataset's and most loaders' names).
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
/// Training labels.
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
/// Test images.
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
/// Test labels.
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// Why the data could not be loaded. Each message names the file and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum DataError {
    /// Neither `NAME` nor `NAME.gz` exists in the folder.
    Missing {
        /// The folder searched.
        dir: PathBuf,
        /// The IDX file name.
        name: &'static str,
    },
    /// The file exists but cannot be read or decompressed.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O or gzip error.
        reason: String,
    },
    /// The header or size is not what an MNIST IDX file has.
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The images and labels files disagree on the number of examples.
    CountMismatch {
        /// The images file and its count.
        images: (PathBuf, usize),
        /// The labels file and its count.
        labels: (PathBuf, usize),
    },
    /// burn-dataset's download failed (no network?).
    Download {
        /// The cache folder burn-dataset uses.
        cache: PathBuf,
        /// The panic message from burn-dataset.
        reason: String,
    },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Missing { dir, name } => write!(
                f,
                "MNIST file missing: neither {name} nor {name}.gz is in {}",
                dir.display()
            ),
            DataError::Unreadable { path, reason } => {
                write!(f, "cannot read {}: {reason}", path.display())
            }
            DataError::Invalid { path, reason } => write!(f, "{}: {reason}", path.display()),
            DataError::CountMismatch { images, labels } => write!(
                f,
                "{} holds {} images but {} holds {} labels",
                images.0.display(),
                images.1,
                labels.0.display(),
                labels.1
            ),
            DataError::Download { cache, reason } => write!(
                f,
                "could not download MNIST into burn-dataset's cache {} ({reason}). Without \
                 network access, pass --data-dir DIR (or set MNIST_DIR) pointing at a folder with \
                 the four IDX files, gzipped or raw",
                cache.display()
            ),
        }
    }
}

impl std::error::Error for DataError {}

/// The train and test splits.
#[derive(Clone, Debug)]
pub struct MnistData {
    /// Training examples.
    pub train: Vec<MnistItem>,
    /// Test examples.
    pub test: Vec<MnistItem>,
}

impl MnistData {
    /// Reads the four IDX files from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, DataError> {
        Ok(Self {
            train: read_split(dir, TRAIN_IMAGES, TRAIN_LABELS)?,
            test: read_split(dir, TEST_IMAGES, TEST_LABELS)?,
        })
    }

    /// burn-dataset's `MnistDataset` (downloads into its cache unless the files are there).
    pub fn from_burn_dataset() -> Result<Self, DataError> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let result = std::panic::catch_unwind(|| {
            let collect = |d: MnistDataset| {
                (0..d.len())
                    .map(|i| d.get(i))
                    .collect::<Result<Vec<_>, _>>()
            };
            (
                collect(MnistDataset::train()),
                collect(MnistDataset::test()),
            )
        });
        std::panic::set_hook(hook);
        match result {
            Ok((Ok(train), Ok(test))) => Ok(Self { train, test }),
            Ok((Err(e), _)) | Ok((_, Err(e))) => Err(DataError::Unreadable {
                path: burn_dataset_cache(),
                reason: e.to_string(),
            }),
            Err(e) => Err(DataError::Download {
                cache: burn_dataset_cache(),
                reason: e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown error".into()),
            }),
        }
    }

    /// Keeps the first `n` training examples.
    pub fn limit_train(mut self, n: Option<usize>) -> Self {
        if let Some(n) = n {
            self.train.truncate(n);
        }
        self
    }
}

/// burn-dataset's MNIST cache folder.
pub fn burn_dataset_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_default()
        .join("burn-dataset")
        .join("mnist")
}

/// The most a gzipped IDX file may decompress to (MNIST's largest, the training images, is
/// 47 MiB).
const MAX_DECOMPRESSED: u64 = 256 << 20;

/// Reads `NAME` or `NAME.gz` from `dir`, decompressing gzip (detected by its magic bytes).
fn read_file(dir: &Path, name: &'static str) -> Result<(PathBuf, Vec<u8>), DataError> {
    let candidates = [dir.join(name), dir.join(format!("{name}.gz"))];
    let path = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::Missing {
            dir: dir.to_path_buf(),
            name,
        })?;
    let unreadable = |e: std::io::Error| DataError::Unreadable {
        path: path.clone(),
        reason: e.to_string(),
    };
    let raw = std::fs::read(&path).map_err(unreadable)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        // At most MAX_DECOMPRESSED bytes (and one more, to tell): a gzip bomb is refused
        // instead of filling the memory.
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_DECOMPRESSED + 1)
            .read_to_end(&mut out)
            .map_err(|e| DataError::Unreadable {
                path: path.clone(),
                reason: format!("gzip data is corrupt or truncated: {e}"),
            })?;
        if out.len() as u64 > MAX_DECOMPRESSED {
            return Err(DataError::Invalid {
                path,
                reason: format!(
                    "decompresses to more than {} MiB, far more than MNIST's largest file",
                    MAX_DECOMPRESSED >> 20
                ),
            });
        }
        Ok((path, out))
    } else {
        Ok((path, raw))
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Checks an IDX header: magic, and that the payload holds `count × item` bytes.
fn check_header(
    path: &Path,
    bytes: &[u8],
    magic: u32,
    header: usize,
    item: usize,
    kind: &str,
) -> Result<usize, DataError> {
    let invalid = |reason: String| DataError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < header {
        return Err(invalid(format!(
            "truncated: {} bytes, shorter than the {header}-byte IDX {kind} header",
            bytes.len()
        )));
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(invalid(format!(
            "not an IDX {kind} file: magic number 0x{found:08x}, expected 0x{magic:08x}"
        )));
    }
    let count = be_u32(bytes, 4) as usize;
    let expected = count.saturating_mul(item);
    let available = bytes.len() - header;
    if available < expected {
        return Err(invalid(format!(
            "truncated: the header declares {count} {kind} ({expected} bytes) but only \
             {available} bytes follow"
        )));
    }
    if available > expected {
        return Err(invalid(format!(
            "{} unexpected trailing bytes after {count} {kind}",
            available - expected
        )));
    }
    Ok(count)
}

fn read_split(
    dir: &Path,
    images: &'static str,
    labels: &'static str,
) -> Result<Vec<MnistItem>, DataError> {
    let (ipath, ibytes) = read_file(dir, images)?;
    let (lpath, lbytes) = read_file(dir, labels)?;
    parse_split(ipath, &ibytes, lpath, &lbytes)
}

/// The examples of an images file and a labels file (their paths for the errors): every
/// header field is checked against the bytes that follow before anything is allocated, so
/// that no input, however malformed, makes it panic or allocate more than the files hold.
pub fn parse_split(
    ipath: PathBuf,
    ibytes: &[u8],
    lpath: PathBuf,
    lbytes: &[u8],
) -> Result<Vec<MnistItem>, DataError> {
    if ibytes.len() >= 16 && be_u32(ibytes, 0) == IMAGE_MAGIC {
        let (rows, cols) = (be_u32(ibytes, 8) as usize, be_u32(ibytes, 12) as usize);
        if (rows, cols) != (SIDE, SIDE) {
            return Err(DataError::Invalid {
                path: ipath,
                reason: format!("images are {rows}×{cols}, MNIST's are {SIDE}×{SIDE}"),
            });
        }
    }
    let n_images = check_header(&ipath, ibytes, IMAGE_MAGIC, 16, PIXELS, "images")?;
    let n_labels = check_header(&lpath, lbytes, LABEL_MAGIC, 8, 1, "labels")?;
    if n_images != n_labels {
        return Err(DataError::CountMismatch {
            images: (ipath, n_images),
            labels: (lpath, n_labels),
        });
    }
    if let Some(bad) = lbytes[8..].iter().find(|&&l| l > 9) {
        return Err(DataError::Invalid {
            path: lpath,
            reason: format!("label {bad} is outside 0..=9"),
        });
    }
    Ok((0..n_images)
        .map(|i| {
            let px = &ibytes[16 + i * PIXELS..16 + (i + 1) * PIXELS];
            let mut image = [[0f32; SIDE]; SIDE];
            for (k, &p) in px.iter().enumerate() {
                image[k / SIDE][k % SIDE] = p as f32;
            }
            MnistItem {
                image,
                label: lbytes[8 + i],
            }
        })
        .collect())
}

/// A batch: images `[N, 784]` scaled to `[0, 1]`, labels `[N]`.
#[derive(Clone, Debug)]
pub struct MnistBatch {
    /// Flattened images, pixels in `[0, 1]`.
    pub images: Tensor<2>,
    /// Digit labels.
    pub targets: Tensor<1, Int>,
}

/// Turns items into a [`MnistBatch`].
#[derive(Clone, Debug, Default)]
pub struct MnistBatcher;

impl Batcher<MnistItem, MnistBatch> for MnistBatcher {
    fn batch(&self, items: Vec<MnistItem>, device: &Device) -> MnistBatch {
        let n = items.len();
        let pixels: Vec<f32> = items
            .iter()
            .flat_map(|item| item.image.iter().flatten().map(|p| p / 255.0))
            .collect();
        let labels: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        MnistBatch {
            images: Tensor::from_data(TensorData::new(pixels, [n, PIXELS]), device),
            targets: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}
