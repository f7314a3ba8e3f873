//! The Transformer encoder of MulT (Tsai et al., ACL 2019), which the CGGM authors use for their
//! feature tasks (`modules/transformer.py` of zrguo/CGGM): scaled embeddings plus sinusoidal
//! positions, pre-norm layers of multi-head self-attention and a ReLU feed-forward block (4x
//! wide), a final layer norm. Attention is written with matmuls (tch has no attention layer).

pub use cggm_core::model_config::TransformerConfig;
use tch::{nn, nn::Module, Kind, Tensor};

#[derive(Debug)]
pub(crate) struct EncoderLayer {
    pub(crate) attn_norm: nn::LayerNorm,
    pub(crate) in_proj: nn::Linear,
    pub(crate) out_proj: nn::Linear,
    pub(crate) ffn_norm: nn::LayerNorm,
    pub(crate) fc1: nn::Linear,
    pub(crate) fc2: nn::Linear,
}

impl EncoderLayer {
    fn new(p: &nn::Path, d: i64) -> Self {
        Self {
            attn_norm: nn::layer_norm(p / "attn_norm", vec![d], Default::default()),
            in_proj: nn::linear(p / "in_proj", d, 3 * d, Default::default()),
            out_proj: nn::linear(p / "out_proj", d, d, Default::default()),
            ffn_norm: nn::layer_norm(p / "ffn_norm", vec![d], Default::default()),
            fc1: nn::linear(p / "fc1", d, 4 * d, Default::default()),
            fc2: nn::linear(p / "fc2", 4 * d, d, Default::default()),
        }
    }

    /// x: [B, T, D], padding: [B, T] bool (true = padding) -> [B, T, D]
    fn forward_t(
        &self,
        x: &Tensor,
        padding: Option<&Tensor>,
        cfg: &TransformerConfig,
        train: bool,
    ) -> Tensor {
        let (b, t, d) = x.size3().expect("[B, T, D]");
        let h = cfg.heads;
        let qkv = self.attn_norm.forward(x).apply(&self.in_proj);
        let split = |k: i64| {
            qkv.narrow(2, k * d, d)
                .view([b, t, h, d / h])
                .transpose(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let mut scores = q.matmul(&k.transpose(-2, -1)) / ((d / h) as f64).sqrt();
        if let Some(mask) = padding {
            scores = scores.masked_fill(&mask.view([b, 1, 1, t]), f64::NEG_INFINITY);
        }
        let attn = scores
            .softmax(-1, Kind::Float)
            .dropout(cfg.attn_dropout, train);
        let mixed = attn.matmul(&v).transpose(1, 2).contiguous().view([b, t, d]);
        let x = x + mixed.apply(&self.out_proj).dropout(cfg.res_dropout, train);
        let ffn = self
            .ffn_norm
            .forward(&x)
            .apply(&self.fc1)
            .relu()
            .dropout(cfg.relu_dropout, train)
            .apply(&self.fc2)
            .dropout(cfg.res_dropout, train);
        x + ffn
    }
}

/// A stack of pre-norm self-attention layers over a token sequence.
#[derive(Debug)]
pub struct TransformerEncoder {
    pub(crate) cfg: TransformerConfig,
    pub(crate) layers: Vec<EncoderLayer>,
    pub(crate) norm: nn::LayerNorm,
}

impl TransformerEncoder {
    pub fn new(p: &nn::Path, cfg: &TransformerConfig) -> Self {
        let layers = (0..cfg.layers)
            .map(|i| EncoderLayer::new(&(p / "layers" / i), cfg.embed_dim))
            .collect();
        Self {
            cfg: cfg.clone(),
            layers,
            norm: nn::layer_norm(p / "norm", vec![cfg.embed_dim], Default::default()),
        }
    }

    /// x: [B, T, D], padding: [B, T] bool (true = padding) -> [B, T, D]
    pub fn forward_t(&self, x: &Tensor, padding: Option<&Tensor>, train: bool) -> Tensor {
        let (_, t, d) = x.size3().expect("[B, T, D]");
        let mut x = (x * (d as f64).sqrt() + sinusoidal_positions(t, d, x.device()))
            .dropout(self.cfg.embed_dropout, train);
        for layer in &self.layers {
            x = layer.forward_t(&x, padding, &self.cfg, train);
        }
        self.norm.forward(&x)
    }
}

/// The d / 2 angular frequencies of [`sinusoidal_positions`]: position p's angles are p * these.
pub fn position_frequencies(d: i64, device: tch::Device) -> Tensor {
    let half = d / 2;
    (Tensor::arange(half, (Kind::Float, device)) * (-(10000f64.ln()) / (half.max(2) - 1) as f64))
        .exp()
}

/// Fixed sinusoidal position embeddings (Vaswani et al.): [T, D].
pub fn sinusoidal_positions(t: i64, d: i64, device: tch::Device) -> Tensor {
    let pos = Tensor::arange(t, (Kind::Float, device)).unsqueeze(1);
    let angles = pos * position_frequencies(d, device).unsqueeze(0);
    let emb = Tensor::cat(&[angles.sin(), angles.cos()], 1);
    if d % 2 == 1 {
        Tensor::cat(&[emb, Tensor::zeros([t, 1], (Kind::Float, device))], 1)
    } else {
        emb
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn cfg() -> TransformerConfig {
        TransformerConfig {
            embed_dim: 12,
            heads: 3,
            layers: 2,
            attn_dropout: 0.1,
            relu_dropout: 0.1,
            res_dropout: 0.1,
            embed_dropout: 0.1,
        }
    }

    #[test]
    fn encoder_keeps_the_sequence_shape() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = TransformerEncoder::new(&vs.root(), &cfg());
        let x = Tensor::randn([2, 5, 12], (Kind::Float, Device::Cpu));
        assert_eq!(enc.forward_t(&x, None, true).size(), [2, 5, 12]);
        assert_eq!(sinusoidal_positions(5, 7, Device::Cpu).size(), [5, 7]);
    }

    #[test]
    fn padded_steps_do_not_change_the_valid_ones() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = TransformerEncoder::new(&vs.root(), &cfg());
        let x = Tensor::randn([1, 4, 12], (Kind::Float, Device::Cpu));
        let mask = Tensor::from_slice(&[false, false, true, true]).view([1, 4]);
        let a = enc.forward_t(&x, Some(&mask), false).narrow(1, 0, 2);
        let mut y = x.copy();
        let _ = y.narrow(1, 2, 2).fill_(9.0);
        let b = enc.forward_t(&y, Some(&mask), false).narrow(1, 0, 2);
        assert!(a.allclose(&b, 1e-5, 1e-5, false));
        y = x.copy();
        let _ = y.narrow(1, 2, 2).fill_(9.0);
        let c = enc.forward_t(&y, None, false).narrow(1, 0, 2);
        assert!(!a.allclose(&c, 1e-5, 1e-5, false));
    }
}
