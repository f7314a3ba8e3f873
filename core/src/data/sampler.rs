//! 2-D axial slice batches for training, fed by background workers from the slice cache.
//!
//! Batch `k` is a pure function of `(seed, k)` and the data: its random generator is ChaCha8
//! seeded with `seed` on stream `k`. Workers may finish out of order; the loader hands batches out
//! strictly by `k`, so a run resumed with `start_batch = k` sees exactly the batches it would have
//! seen. At most `prefetch + workers` batches exist ahead of the consumer, and a worker reads only
//! the slices it needs, so memory stays bounded whatever the dataset size.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::thread::JoinHandle;

use ndarray::{Array3, Array4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::cache::{default_cache_dir, f16_to_f32, prepare, CacheIndex, CachedCase, StoredSlice};
use super::{CaseSource, DataError};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplerConfig {
    pub batch_size: usize,
    /// Side of the square crop; slices smaller than this are zero-padded (centred).
    pub crop: usize,
    /// Random crop position instead of the centre crop.
    pub random_crop: bool,
    /// Probability that a sample is a slice containing tumour (else a brain slice without tumour).
    pub tumour_fraction: f64,
    pub rotate90: bool,
    pub flip: bool,
    /// Standard deviation of Gaussian noise added to brain voxels (in z-score units); 0 = off.
    pub noise_std: f32,
    /// Background threads; 0 builds batches on the caller's thread.
    pub workers: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Slice cache folder; `None` = `${CGGM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cggm-studio}/slices`.
    pub cache_dir: Option<PathBuf>,
    /// The authors' epoch: every training case exactly once per pass, in a random order per pass
    /// (one slice each), instead of cases drawn with replacement.
    pub case_sweep: bool,
    /// Which augmentation recipe `rotate90`, `flip` and `noise_std` follow.
    pub augmentation: Augmentation,
}

/// Augmentation recipes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augmentation {
    /// Rotation by k quarter turns, k in {0, 1, 2, 3}; each axis flipped with probability 1/2;
    /// N(0, noise_std) noise on the brain pixels of every sample.
    #[default]
    Project,
    /// The authors' code (zrguo/CGGM, datasets/BratsDataset.py): k in {0, 1, 2} quarter turns,
    /// then exactly one flip along a random axis; with probability 0.1, N(0, s) noise on every
    /// pixel with s ~ U(0, 0.1) (`noise_std` is ignored).
    Authors,
}

/// How one sample of a batch was drawn (for tests and statistics).
#[derive(Clone, Debug, PartialEq)]
pub struct SampleDraw {
    /// Index of the case among the loader's cases.
    pub case: usize,
    pub z: u16,
    pub tumour_slice: bool,
    /// Quarter turns.
    pub rotation: u8,
    pub flip_rows: bool,
    pub flip_cols: bool,
    /// Standard deviation of the noise added (0 = none).
    pub noise_std: f32,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            batch_size: 16,
            crop: 160,
            random_crop: false,
            tumour_fraction: 0.5,
            rotate90: true,
            flip: true,
            noise_std: 0.05,
            workers: 2,
            prefetch: 4,
            cache_dir: None,
            case_sweep: false,
            augmentation: Augmentation::Project,
        }
    }
}

impl SamplerConfig {
    fn check(&self) -> Result<(), DataError> {
        let bad = |detail: &str| {
            Err(DataError::Config {
                detail: detail.to_string(),
            })
        };
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if self.crop == 0 {
            return bad("crop must be at least 1 pixel");
        }
        if !(0.0..=1.0).contains(&self.tumour_fraction) {
            return bad("tumour_fraction must lie in [0, 1]");
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            return bad("noise_std must be a finite number >= 0");
        }
        Ok(())
    }
}

/// One training batch.
pub struct SliceBatch {
    /// `[B, 4, crop, crop]`, modalities in [`super::Modality::ALL`] order; rows follow the volume's
    /// x axis, columns its y axis (before augmentation).
    pub images: Array4<f32>,
    /// `[B, crop, crop]` internal classes.
    pub labels: Array3<u8>,
    /// How each sample was drawn.
    pub draws: Vec<SampleDraw>,
}

struct Shared {
    cases: Vec<CachedCase>,
    config: SamplerConfig,
    seed: u64,
}

struct Window {
    next_claim: u64,
    /// The batch the consumer waits for next; workers stay below `consumed + window`.
    consumed: u64,
    stop: bool,
}

struct Workers {
    receiver: Option<Receiver<(u64, Result<SliceBatch, DataError>)>>,
    window: Arc<(Mutex<Window>, Condvar)>,
    handles: Vec<JoinHandle<()>>,
    ready: BTreeMap<u64, Result<SliceBatch, DataError>>,
}

pub struct SliceLoader {
    shared: Arc<Shared>,
    next: u64,
    workers: Option<Workers>,
}

impl SliceLoader {
    /// Prepares (or reuses) the slice cache of every case, then starts the workers at batch
    /// `start_batch`. Every case needs a label.
    pub fn new(
        cases: &[CaseSource],
        config: SamplerConfig,
        seed: u64,
        start_batch: u64,
    ) -> Result<Self, DataError> {
        config.check()?;
        if cases.is_empty() {
            return Err(DataError::Config {
                detail: "no training cases; check the dataset with `cggm validate DIR`".into(),
            });
        }
        let cache_dir = config.cache_dir.clone().unwrap_or_else(default_cache_dir);
        let cached = prepare_all(cases, &cache_dir, config.workers.max(1))?;
        if cached
            .iter()
            .all(|c| c.index.tumour_slices.is_empty() && c.index.other_brain_slices.is_empty())
        {
            return Err(DataError::Config {
                detail: "no case has a brain slice to sample".into(),
            });
        }
        let shared = Arc::new(Shared {
            cases: cached,
            config,
            seed,
        });
        let workers = (shared.config.workers > 0).then(|| start_workers(&shared, start_batch));
        Ok(SliceLoader {
            shared,
            next: start_batch,
            workers,
        })
    }

    /// Number of the batch that the next call returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next batch of the (infinite) stream.
    pub fn next_batch(&mut self) -> Result<SliceBatch, DataError> {
        let k = self.next;
        self.next += 1;
        let Some(workers) = self.workers.as_mut() else {
            return make_batch(&self.shared, k);
        };
        let result = loop {
            if let Some(result) = workers.ready.remove(&k) {
                break result;
            }
            let received = workers
                .receiver
                .as_ref()
                .expect("receiver lives until drop")
                .recv();
            match received {
                Ok((index, batch)) => {
                    workers.ready.insert(index, batch);
                }
                Err(_) => {
                    break Err(DataError::Config {
                        detail: "the slice loader's worker threads stopped unexpectedly".into(),
                    })
                }
            }
        };
        let (lock, wake) = &*workers.window;
        lock.lock().expect("window lock").consumed = self.next;
        wake.notify_all();
        result
    }
}

impl Drop for SliceLoader {
    fn drop(&mut self) {
        if let Some(mut workers) = self.workers.take() {
            {
                let (lock, wake) = &*workers.window;
                lock.lock().expect("window lock").stop = true;
                wake.notify_all();
            }
            workers.receiver.take();
            for handle in workers.handles.drain(..) {
                let _ = handle.join();
            }
        }
    }
}

fn prepare_all(
    cases: &[CaseSource],
    cache_dir: &std::path::Path,
    threads: usize,
) -> Result<Vec<CachedCase>, DataError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<CachedCase, DataError>>>> =
        cases.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(cases.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let result = prepare(case, cache_dir);
                *slots[i].lock().expect("slot lock") = Some(result);
            });
        }
    });
    slots
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .expect("slot lock")
                .expect("every case visited")
        })
        .collect()
}

fn start_workers(shared: &Arc<Shared>, start_batch: u64) -> Workers {
    let window_size = (shared.config.prefetch + shared.config.workers) as u64;
    let window = Arc::new((
        Mutex::new(Window {
            next_claim: start_batch,
            consumed: start_batch,
            stop: false,
        }),
        Condvar::new(),
    ));
    let (sender, receiver) = channel();
    let handles = (0..shared.config.workers)
        .map(|_| {
            let shared = Arc::clone(shared);
            let window = Arc::clone(&window);
            let sender = sender.clone();
            std::thread::spawn(move || loop {
                let k = {
                    let (lock, wake) = &*window;
                    let mut state = lock.lock().expect("window lock");
                    while !state.stop && state.next_claim >= state.consumed + window_size {
                        state = wake.wait(state).expect("window lock");
                    }
                    if state.stop {
                        return;
                    }
                    state.next_claim += 1;
                    state.next_claim - 1
                };
                if sender.send((k, make_batch(&shared, k))).is_err() {
                    return;
                }
            })
        })
        .collect();
    Workers {
        receiver: Some(receiver),
        window,
        handles,
        ready: BTreeMap::new(),
    }
}

/// 65,536 draws from N(0, 1) (fixed seed). Noise augmentation resamples this table instead of
/// running a Gaussian sampler per voxel: that sampler cost as much as everything else in a batch
/// together, while a uniform pick from a large Gaussian sample is, for augmentation, the same.
static GAUSSIAN_TABLE: LazyLock<Vec<f32>> = LazyLock::new(|| {
    let mut rng = ChaCha8Rng::seed_from_u64(0x6761_7573_7369_616e);
    (0..1 << 16)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect()
});

/// Adds N(0, std) noise to the brain (non-zero) pixels of one sample; indices into the table come
/// from xorshift64* seeded by the batch generator, so noise is as reproducible as everything else.
fn add_noise(mut sample: ndarray::ArrayViewMut3<f32>, std: f32, seed: u64) {
    let table = &*GAUSSIAN_TABLE;
    let mut state = seed | 1;
    for value in sample.iter_mut() {
        if *value != 0.0 {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let index = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 48) as usize;
            *value += std * table[index];
        }
    }
}

/// Adds N(0, std) noise to every pixel of one sample (the authors' recipe: background too).
fn add_noise_everywhere(mut sample: ndarray::ArrayViewMut3<f32>, std: f32, seed: u64) {
    let table = &*GAUSSIAN_TABLE;
    let mut state = seed | 1;
    for value in sample.iter_mut() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let index = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 48) as usize;
        *value += std * table[index];
    }
}

/// The case of sample `n` of the stream under `case_sweep`: pass `n / N` visits the N cases in an
/// order shuffled by `(seed, pass)`.
fn swept_case(seed: u64, n: u64, sampleable: &[usize]) -> usize {
    use rand::seq::SliceRandom;
    let count = sampleable.len() as u64;
    let mut order = sampleable.to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7377_6565_7073_2121);
    rng.set_stream(n / count);
    order.shuffle(&mut rng);
    order[(n % count) as usize]
}

/// Start of a crop of `crop` pixels along an axis of `len` voxels: inside the slice when it fits
/// (centred or random), else negative so that the slice sits centred in zero padding.
fn crop_start(len: usize, crop: usize, random: bool, rng: &mut ChaCha8Rng) -> isize {
    if len >= crop {
        if random {
            rng.gen_range(0..=len - crop) as isize
        } else {
            ((len - crop) / 2) as isize
        }
    } else {
        -(((crop - len) / 2) as isize)
    }
}

/// Builds batch `k`; depends only on `(seed, k)` and the cached data.
fn make_batch(shared: &Shared, k: u64) -> Result<SliceBatch, DataError> {
    let config = &shared.config;
    let mut rng = ChaCha8Rng::seed_from_u64(shared.seed);
    rng.set_stream(k);
    let (b, crop) = (config.batch_size, config.crop);
    let mut images = Array4::<f32>::zeros((b, 4, crop, crop));
    let mut labels = Array3::<u8>::zeros((b, crop, crop));
    let sampleable: Vec<usize> = (0..shared.cases.len())
        .filter(|&i| {
            let index = &shared.cases[i].index;
            !(index.tumour_slices.is_empty() && index.other_brain_slices.is_empty())
        })
        .collect();
    let plane = crop * crop;
    let mut draws = Vec::with_capacity(b);
    for item in 0..b {
        let sweep_position = k * b as u64 + item as u64;
        let (mut draw, origin) = draw_sample(shared, sweep_position, &sampleable, &mut rng);
        let case = &shared.cases[draw.case];
        let slice = case.read_slice(draw.z as usize)?;
        let out_images = &mut images
            .as_slice_mut()
            .expect("freshly allocated, standard layout")[item * 4 * plane..(item + 1) * 4 * plane];
        let out_labels = &mut labels
            .as_slice_mut()
            .expect("freshly allocated, standard layout")[item * plane..(item + 1) * plane];
        copy_crop(
            &slice,
            &case.index,
            crop,
            origin,
            &draw,
            out_images,
            out_labels,
        );
        draw.noise_std = add_sample_noise(
            config,
            images.index_axis_mut(ndarray::Axis(0), item),
            &mut rng,
        );
        draws.push(draw);
    }
    Ok(SliceBatch {
        images,
        labels,
        draws,
    })
}

/// Draws one sample of a batch from `rng` (in this order: case unless swept, tumour or not,
/// slice, crop origin, rotation, flips; the batch's reproducibility depends on it): the draw
/// (without noise yet) and the crop's origin in the slice.
fn draw_sample(
    shared: &Shared,
    sweep_position: u64,
    sampleable: &[usize],
    rng: &mut ChaCha8Rng,
) -> (SampleDraw, (isize, isize)) {
    let config = &shared.config;
    let case_index = if config.case_sweep {
        swept_case(shared.seed, sweep_position, sampleable)
    } else {
        sampleable[rng.gen_range(0..sampleable.len())]
    };
    let index = &shared.cases[case_index].index;
    let want_tumour = rng.gen_bool(config.tumour_fraction);
    let list = match (
        want_tumour,
        index.tumour_slices.is_empty(),
        index.other_brain_slices.is_empty(),
    ) {
        (true, false, _) | (false, false, true) => &index.tumour_slices,
        _ => &index.other_brain_slices,
    };
    let z = list[rng.gen_range(0..list.len())] as usize;
    let tumour_slice = std::ptr::eq(list, &index.tumour_slices);
    let x0 = crop_start(index.shape[0], config.crop, config.random_crop, rng);
    let y0 = crop_start(index.shape[1], config.crop, config.random_crop, rng);
    let authors = config.augmentation == Augmentation::Authors;
    let rotation = match (config.rotate90, authors) {
        (false, _) => 0,
        (true, false) => rng.gen_range(0..4u8),
        (true, true) => rng.gen_range(0..3u8),
    };
    let (flip_rows, flip_cols) = match (config.flip, authors) {
        (false, _) => (false, false),
        (true, false) => (rng.gen_bool(0.5), rng.gen_bool(0.5)),
        (true, true) => {
            let rows = rng.gen_bool(0.5);
            (rows, !rows)
        }
    };
    let draw = SampleDraw {
        case: case_index,
        z: z as u16,
        tumour_slice,
        rotation,
        flip_rows,
        flip_cols,
        noise_std: 0.0,
    };
    (draw, (x0, y0))
}

/// Writes the `crop` x `crop` window at `origin` of a cached slice into one sample's images
/// (4 planes) and labels, flipped and rotated as `draw` says; pixels outside the slice's stored
/// box stay zero (background).
fn copy_crop(
    slice: &StoredSlice,
    index: &CacheIndex,
    crop: usize,
    (x0, y0): (isize, isize),
    draw: &SampleDraw,
    out_images: &mut [f32],
    out_labels: &mut [u8],
) {
    let (bx, by) = index.box_size();
    let (box_x, box_y) = (index.x_range[0] as isize, index.y_range[0] as isize);
    let last = crop - 1;
    let plane = crop * crop;
    let box_plane = bx * by;
    for i in 0..crop {
        for j in 0..crop {
            // Output pixel (i, j) shows crop pixel (u, v): flips, then a rotation by 90° steps.
            let (i2, j2) = (
                if draw.flip_rows { last - i } else { i },
                if draw.flip_cols { last - j } else { j },
            );
            let (u, v) = match draw.rotation {
                0 => (i2, j2),
                1 => (j2, last - i2),
                2 => (last - i2, last - j2),
                _ => (last - j2, i2),
            };
            let bxi = x0 + u as isize - box_x;
            let byi = y0 + v as isize - box_y;
            if bxi < 0 || byi < 0 || bxi >= bx as isize || byi >= by as isize {
                continue;
            }
            let offset = bxi as usize * by + byi as usize;
            let pixel = i * crop + j;
            out_labels[pixel] = slice.labels[offset];
            for c in 0..4 {
                out_images[c * plane + pixel] = f16_to_f32(slice.images[c * box_plane + offset]);
            }
        }
    }
}

/// The noise augmentation of one sample (the authors' recipe, or `noise_std` on the brain), drawn
/// from `rng` after the sample's other draws; returns the standard deviation added (0 = none).
fn add_sample_noise(
    config: &SamplerConfig,
    sample: ndarray::ArrayViewMut3<f32>,
    rng: &mut ChaCha8Rng,
) -> f32 {
    if config.augmentation == Augmentation::Authors {
        if rng.gen_bool(0.1) {
            let noise_std = rng.gen_range(0.0..0.1f32);
            add_noise_everywhere(sample, noise_std, rng.gen::<u64>());
            return noise_std;
        }
        0.0
    } else if config.noise_std > 0.0 {
        add_noise(sample, config.noise_std, rng.gen::<u64>());
        config.noise_std
    } else {
        0.0
    }
}
