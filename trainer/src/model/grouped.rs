//! The M modality encoders run as one grouped network (`EncoderLayout::Grouped` in
//! core/src/model_config.rs): every layer of encoder i becomes group i of one convolution and one
//! batch norm, so a step makes a quarter of the operator calls of four separate encoders. The
//! parameters stay the encoders' own (concatenated in the graph, so gradients, B_i's scaling,
//! checkpoints and export see the same per-encoder tensors); small backbones on a CPU, where
//! per-call overhead dominates, run about twice as fast this way.

use super::aspp::Aspp;
use super::decoder::interleave_groups;
use super::encoder::Encoder;
use super::resnet::{Block, ConvBn, ResNet};
use tch::Tensor;

/// xs: [B, M, H, W] (channel i is encoder i's modality) -> (high [B, M * aspp_channels, H/OS,
/// W/OS], low [B, M * low_level_channels, H/4, W/4]): the encoders' features side by side, as
/// concatenating the separate encoders' outputs gives.
pub(crate) fn forward(encoders: &[Encoder], xs: &Tensor, train: bool) -> (Tensor, Tensor) {
    let backbones: Vec<&ResNet> = encoders.iter().map(|e| &e.backbone).collect();
    let (low, high) = backbone_features(&backbones, xs, train);
    let asppes: Vec<&Aspp> = encoders.iter().map(|e| &e.aspp).collect();
    (aspp(&asppes, &high, train), low)
}

fn backbone_features(set: &[&ResNet], xs: &Tensor, train: bool) -> (Tensor, Tensor) {
    let stems: Vec<&ConvBn> = set.iter().map(|r| &r.stem).collect();
    let mut ys = ConvBn::forward_grouped(&stems, xs, train)
        .relu()
        .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
    let mut low = None;
    for s in 0..set[0].stages.len() {
        for b in 0..set[0].stages[s].len() {
            let blocks: Vec<&Block> = set.iter().map(|r| &r.stages[s][b]).collect();
            ys = block(&blocks, &ys, train);
        }
        if s == 0 {
            low = Some(ys.shallow_clone());
        }
    }
    (low.expect("ResNet has four stages"), ys)
}

fn block(set: &[&Block], xs: &Tensor, train: bool) -> Tensor {
    let last = set[0].convs.len() - 1;
    let mut ys = xs.shallow_clone();
    for i in 0..=last {
        let convs: Vec<&ConvBn> = set.iter().map(|b| &b.convs[i]).collect();
        ys = ConvBn::forward_grouped(&convs, &ys, train);
        if i != last {
            ys = ys.relu();
        }
    }
    let shortcut = match set[0].downsample {
        Some(_) => {
            let downs: Vec<&ConvBn> = set
                .iter()
                .map(|b| b.downsample.as_ref().expect("the encoders share one shape"))
                .collect();
            ConvBn::forward_grouped(&downs, xs, train)
        }
        None => xs.shallow_clone(),
    };
    (ys + shortcut).relu()
}

/// `Aspp::forward_t` for the set: the branches' outputs are concatenated per encoder (group
/// by group), as each encoder's projection expects.
fn aspp(set: &[&Aspp], xs: &Tensor, train: bool) -> Tensor {
    let (h, w) = (xs.size()[2], xs.size()[3]);
    let mut outs: Vec<Tensor> = (0..set[0].branches.len())
        .map(|k| {
            let branch: Vec<&ConvBn> = set.iter().map(|a| &a.branches[k]).collect();
            ConvBn::forward_grouped(&branch, xs, train).relu()
        })
        .collect();
    // As in `Aspp::forward_t`: a single-image batch uses running statistics on the 1x1 map.
    let pooled = xs.adaptive_avg_pool2d([1, 1]);
    let pool_train = train && xs.size()[0] > 1;
    let pooling: Vec<&ConvBn> = set.iter().map(|a| &a.pooling).collect();
    let pooled = ConvBn::forward_grouped(&pooling, &pooled, pool_train).relu();
    outs.push(pooled.upsample_bilinear2d([h, w], false, None, None));
    let ys = interleave_groups(&outs, set.len() as i64);
    let project: Vec<&ConvBn> = set.iter().map(|a| &a.project).collect();
    ConvBn::forward_grouped(&project, &ys, train)
        .relu()
        .dropout(0.1, train)
}

#[cfg(test)]
mod tests {
    use super::super::{ModelConfig, MultimodalSegmenter};
    use super::*;
    use cggm_core::model_config::EncoderLayout;
    use tch::{nn, Device, Kind};

    const NAMES: [&str; 4] = ["flair", "t1ce", "t1", "t2"];

    fn model(cfg: &ModelConfig) -> (nn::VarStore, MultimodalSegmenter) {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = MultimodalSegmenter::new(&vs.root(), cfg, &NAMES);
        (vs, model)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// The largest difference relative to the largest magnitude of `a`.
    fn relative_diff(a: &Tensor, b: &Tensor) -> f64 {
        max_abs_diff(a, b) / a.abs().max().double_value(&[]).max(1e-6)
    }

    /// Gradient and running statistics of every backbone tensor, by name.
    fn encoder_state(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut state: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(name, _)| name.starts_with("encoders.") && name.contains(".backbone."))
            .map(|(name, t)| {
                let value = if t.requires_grad() {
                    t.grad().copy()
                } else {
                    t.copy()
                };
                (name, value)
            })
            .collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        state
    }

    /// One training forward + backward of the backbones with the layout given; returns the
    /// features and the state after it, and puts the running statistics back as they were.
    fn backbone_pass(
        vs: &mut nn::VarStore,
        model: &MultimodalSegmenter,
        xs: &Tensor,
        grouped: bool,
    ) -> (Tensor, Tensor, Vec<(String, Tensor)>) {
        let saved: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(name, t)| (name, t.copy()))
            .collect();
        vs.trainable_variables()
            .iter()
            .for_each(|t| t.shallow_clone().zero_grad());
        let (low, high) = if grouped {
            let backbones: Vec<&ResNet> = model.encoders.iter().map(|e| &e.backbone).collect();
            backbone_features(&backbones, xs, true)
        } else {
            let feats: Vec<_> = (0..4)
                .map(|i| {
                    model.encoders[i]
                        .backbone
                        .features(&xs.narrow(1, i as i64, 1), true)
                })
                .collect();
            let low = Tensor::cat(&feats.iter().map(|f| &f.low).collect::<Vec<_>>(), 1);
            let high = Tensor::cat(&feats.iter().map(|f| &f.high).collect::<Vec<_>>(), 1);
            (low, high)
        };
        // A loss that weighs every channel differently, so a swapped group would show.
        let weights = Tensor::arange(high.size()[1], (Kind::Double, Device::Cpu)) + 1.0;
        (high.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Double) * weights)
            .sum(Kind::Double)
            .backward();
        let state = encoder_state(vs);
        tch::no_grad(|| {
            let now = vs.variables();
            for (name, value) in &saved {
                now[name].shallow_clone().copy_(value);
            }
        });
        (low.detach(), high.detach(), state)
    }

    #[test]
    fn grouped_backbones_train_exactly_as_four_separate_ones() {
        for depth in [18, 50] {
            let mut cfg = ModelConfig::tiny();
            cfg.backbone.depth = depth;
            // In double precision, so that only a real difference (a swapped or misrouted
            // group) can exceed the tolerances, not float summation order.
            let (mut vs, model) = model(&cfg);
            vs.double();
            let xs = Tensor::randn([3, 4, 32, 32], (Kind::Double, Device::Cpu));
            let (low_s, high_s, state_s) = backbone_pass(&mut vs, &model, &xs, false);
            let (low_g, high_g, state_g) = backbone_pass(&mut vs, &model, &xs, true);
            let (low, high) = (
                relative_diff(&low_s, &low_g),
                relative_diff(&high_s, &high_g),
            );
            assert!(low < 1e-9, "depth {depth}: low differs by {low} (relative)");
            assert!(
                high < 1e-9,
                "depth {depth}: high differs by {high} (relative)"
            );
            assert_eq!(state_s.len(), state_g.len());
            for ((name, s), (_, g)) in state_s.iter().zip(&state_g) {
                let diff = relative_diff(s, g);
                assert!(
                    diff < 1e-6,
                    "depth {depth}: {name} differs by {diff} (relative)"
                );
            }
            // The running statistics moved (the copy back reached each layer).
            let moved = state_g
                .iter()
                .filter(|(name, _)| name.ends_with("running_mean"))
                .filter(|(_, t)| t.abs().sum(Kind::Float).double_value(&[]) > 0.0)
                .count();
            assert!(
                moved > 4 * 10,
                "depth {depth}: only {moved} running means moved"
            );
        }
    }

    #[test]
    fn the_grouped_model_predicts_what_the_separate_one_does() {
        let (_vs, mut model) = model(&ModelConfig::tiny());
        assert!(model.grouped_encoders, "auto groups ResNet-18 on the CPU");
        let xs = Tensor::randn([2, 4, 32, 32], (Kind::Float, Device::Cpu));
        let grouped = model.forward_t(&xs, false);
        model.grouped_encoders = false;
        let separate = model.forward_t(&xs, false);
        assert!(max_abs_diff(&grouped.logits, &separate.logits) < 1e-4);
        assert!(max_abs_diff(&grouped.high, &separate.high) < 1e-4);
        for i in 0..4 {
            assert!(max_abs_diff(&grouped.features[i].low, &separate.features[i].low) < 1e-4);
        }
    }

    #[test]
    fn auto_groups_basic_blocks_on_a_cpu_only() {
        let mut cfg = ModelConfig::tiny();
        assert!(EncoderLayout::Auto.grouped(&cfg.backbone, true));
        assert!(!EncoderLayout::Auto.grouped(&cfg.backbone, false));
        cfg.backbone.depth = 101;
        assert!(!EncoderLayout::Auto.grouped(&cfg.backbone, true));
        assert!(EncoderLayout::Grouped.grouped(&cfg.backbone, true));
        assert!(!EncoderLayout::Separate.grouped(&ModelConfig::tiny().backbone, true));
    }
}
