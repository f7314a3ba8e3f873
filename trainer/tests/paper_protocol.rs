//! The `paper` preset follows the authors' protocol (zrguo/CGGM): one random tumour slice per case
//! per epoch, their augmentation and their loss. Reads the preset, then the statistics of the
//! sampler it configures on real NIfTI cases.

use cggm_trainer::config::TrainConfig;
use cggm_trainer::data::synth::{write_synthetic_dataset, SynthConfig};
use cggm_trainer::data::{discover, Augmentation, SliceLoader};
use cggm_trainer::optim::OptimizerKind;
use cggm_trainer::run::steps_per_epoch;
use cggm_trainer::task::segmentation::SoftDice;
use std::collections::BTreeSet;

#[test]
fn the_paper_preset_has_the_authors_schedule_loss_and_epoch_length() {
    let cfg = TrainConfig::preset("paper").unwrap();
    assert_eq!(cfg.epochs, 75);
    assert_eq!(cfg.schedule.warmup_epochs, 10);
    assert_eq!(
        (
            cfg.schedule.lr,
            cfg.schedule.min_lr,
            cfg.schedule.warmup_start_lr
        ),
        (0.01, 0.001, 4e-4)
    );
    assert_eq!(cfg.schedule.classifier_lr, 6e-3);
    assert_eq!(cfg.optimizer.kind, OptimizerKind::Sgd);
    assert_eq!(
        (cfg.optimizer.momentum, cfg.optimizer.weight_decay),
        (0.9, 3e-4)
    );
    assert_eq!((cfg.sampler.batch_size, cfg.sampler.crop), (64, 160));
    assert!(!cfg.sampler.random_crop);
    assert_eq!(cfg.loss.dice, SoftDice::AuthorsPooled);
    assert_eq!(cfg.loss.class_weights, vec![0.2, 0.3, 0.25, 0.25]);
    assert_eq!((cfg.cggm.rho, cfg.cggm.lambda), (1.0, 0.1));
    // Their epoch is one slice per case: 1000 training cases at batch 64 make 16 steps.
    assert_eq!(steps_per_epoch(&cfg, 1000), 16);
    assert_eq!(steps_per_epoch(&cfg, 10), 1);
}

#[test]
fn the_paper_sampler_visits_every_case_once_per_epoch_on_tumour_slices_with_the_authors_augmentation(
) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_synthetic_dataset(
        &data,
        &SynthConfig {
            cases: 5,
            seed: 4,
            size: [32, 32, 16],
            imbalance: 1.0,
        },
    )
    .unwrap();
    let cases = discover(&data).cases;
    let mut sampler = TrainConfig::preset("paper").unwrap().sampler;
    assert_eq!(sampler.tumour_fraction, 1.0);
    assert!(sampler.case_sweep);
    assert_eq!(sampler.augmentation, Augmentation::Authors);
    // Smaller batches and crops for a CPU test; the draws do not depend on either. A batch of
    // five is one epoch of five cases.
    sampler.batch_size = 5;
    sampler.crop = 32;
    sampler.workers = 0;
    sampler.cache_dir = Some(tmp.path().join("cache"));
    let mut loader = SliceLoader::new(&cases, sampler, 7, 0).unwrap();

    let mut rotations = [0usize; 4];
    let (mut noisy, mut samples, mut max_std, mut std_sum) = (0usize, 0usize, 0f32, 0f64);
    for _ in 0..400 {
        let batch = loader.next_batch().unwrap();
        let seen: BTreeSet<usize> = batch.draws.iter().map(|d| d.case).collect();
        assert_eq!(seen.len(), 5, "each case exactly once per epoch");
        for (i, d) in batch.draws.iter().enumerate() {
            samples += 1;
            assert!(d.tumour_slice);
            assert!(
                batch
                    .labels
                    .index_axis(ndarray::Axis(0), i)
                    .iter()
                    .any(|&c| c != 0),
                "a tumour slice shows tumour"
            );
            rotations[d.rotation as usize] += 1;
            assert!(d.flip_rows ^ d.flip_cols, "exactly one flip");
            if d.noise_std > 0.0 {
                noisy += 1;
                max_std = max_std.max(d.noise_std);
                std_sum += d.noise_std as f64;
            }
        }
    }
    assert_eq!(rotations[3], 0, "k in {{0, 1, 2}} only");
    for r in &rotations[..3] {
        let share = *r as f64 / samples as f64;
        assert!((0.29..0.38).contains(&share), "rotations {rotations:?}");
    }
    let noisy_share = noisy as f64 / samples as f64;
    assert!(
        (0.08..0.12).contains(&noisy_share),
        "noise on {noisy_share:.3} of the samples, the authors' p = 0.1"
    );
    assert!(max_std < 0.1);
    let mean_std = std_sum / noisy as f64;
    assert!(
        (0.04..0.06).contains(&mean_std),
        "std ~ U(0, 0.1): mean {mean_std}"
    );
}
