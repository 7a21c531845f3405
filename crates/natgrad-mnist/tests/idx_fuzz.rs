//! Fuzzing the IDX reader: random and mutated headers and bodies never make it panic, and what
//! it accepts is exactly what the bytes hold (it allocates one item per image the files
//! contain, never what a header merely claims). A gzip bomb is refused.

use std::io::Write;
use std::path::PathBuf;

use natgrad_mnist::data::parse_split;
use natgrad_mnist::{DataError, MnistData};
use proptest::prelude::*;

const IMAGE_MAGIC: u32 = 0x0000_0803;
const LABEL_MAGIC: u32 = 0x0000_0801;

fn images(count: u32, rows: u32, cols: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [IMAGE_MAGIC, count, rows, cols] {
        v.extend(x.to_be_bytes());
    }
    v.extend(body);
    v
}

fn labels(count: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [LABEL_MAGIC, count] {
        v.extend(x.to_be_bytes());
    }
    v.extend(body);
    v
}

/// Parses, and checks that an accepted split holds exactly the images its bytes hold.
fn parse(ibytes: &[u8], lbytes: &[u8]) {
    let result = parse_split(PathBuf::from("i"), ibytes, PathBuf::from("l"), lbytes);
    if let Ok(items) = result {
        assert_eq!(16 + items.len() * 784, ibytes.len());
        assert_eq!(8 + items.len(), lbytes.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes for both files.
    #[test]
    fn random_bytes_never_panic(
        i in proptest::collection::vec(any::<u8>(), 0..2000),
        l in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        parse(&i, &l);
    }

    /// Valid magic numbers with random counts, shapes and body lengths (claims of up to 4·10⁹
    /// images over a few bytes among them).
    #[test]
    fn headers_that_lie_never_panic(
        count in prop_oneof![0u32..4, Just(u32::MAX), any::<u32>()],
        lcount in prop_oneof![0u32..4, Just(u32::MAX), any::<u32>()],
        rows in prop_oneof![Just(28u32), any::<u32>()],
        cols in prop_oneof![Just(28u32), any::<u32>()],
        ibody in 0usize..(3 * 784 + 3),
        lbody in 0usize..6,
        label in any::<u8>(),
    ) {
        parse(&images(count, rows, cols, &vec![7; ibody]), &labels(lcount, &vec![label; lbody]));
    }

    /// A valid pair of files with one byte replaced, removed or added.
    #[test]
    fn mutated_valid_files_never_panic(
        n in 1usize..3,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        op in 0u8..3,
        in_images in any::<bool>(),
    ) {
        let mut i = images(n as u32, 28, 28, &vec![128; n * 784]);
        let mut l = labels(n as u32, &vec![3; n]);
        let target = if in_images { &mut i } else { &mut l };
        let k = at.index(target.len());
        match op {
            0 => target[k] = byte,
            1 => { target.remove(k); }
            _ => target.insert(k, byte),
        }
        parse(&i, &l);
    }
}

#[test]
fn a_valid_split_parses() {
    let items = parse_split(
        PathBuf::from("i"),
        &images(2, 28, 28, &[9; 2 * 784]),
        PathBuf::from("l"),
        &labels(2, &[4, 5]),
    )
    .unwrap();
    assert_eq!((items.len(), items[1].label), (2, 5));
    assert_eq!(items[0].image[27][27], 9.0);
}

#[test]
fn a_gzip_bomb_is_refused() {
    let dir = std::env::temp_dir().join(format!("natgrad-gzip-bomb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 300 MiB of zeros behind a valid image header, gzipped to a few hundred KiB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&images(382_000, 28, 28, &[])).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..300 {
        gz.write_all(&zeros).unwrap();
    }
    let bytes = gz.finish().unwrap();
    assert!(bytes.len() < 2 << 20, "{} bytes", bytes.len());
    for name in ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"] {
        std::fs::write(dir.join(format!("{name}.gz")), &bytes).unwrap();
    }
    match MnistData::from_dir(&dir) {
        Err(e @ DataError::Invalid { .. }) => {
            assert!(
                e.to_string().contains("decompresses to more than 256 MiB"),
                "{e}"
            )
        }
        other => panic!("expected the bomb refused, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
