//! The one convolution call of the segmentation model (training, grouped encoders and folded
//! inference), which leaves out the kernel taps that can only read zero padding.
//!
//! A "same" convolution (stride 1, padding dilation x (k - 1) / 2) with dilation d on a map of n
//! pixels reads, with its tap at offset j x d from the centre, only padding once |j| x d >= n. At
//! output stride 16 a 64-pixel training crop leaves a 4x4 map, so ASPP's rates 6, 12 and 18 are
//! 3x3 kernels of which only the centre ever meets the image; at the paper's crop of 160 (10x10)
//! rates 12 and 18 are. Dropping those taps changes nothing computed — the dropped weights
//! multiply only zeros, so the output and every gradient are the same, a dropped weight's
//! gradient being exactly zero either way — and removes up to 8/9 of the layer's FLOPs. It also
//! sidesteps libtorch's CPU backward of large dilated kernels on tiny maps, measured ~8x slower
//! than their forward (the paper preset's ASPP at batch 2, crop 64: 46 ms per layer, 6-9 ms with
//! the centre tap alone; the README's Performance section).

use super::resnet::ConvGeometry;
use tch::Tensor;

/// `xs.conv2d(ws, bias, geometry)` with the taps that can only read padding left out.
pub(crate) fn conv2d(xs: &Tensor, ws: &Tensor, bias: Option<&Tensor>, g: ConvGeometry) -> Tensor {
    let (map, kernel) = (xs.size(), ws.size());
    let rows = live_taps(kernel[2], map[2], g);
    let cols = live_taps(kernel[3], map[3], g);
    let trimmed;
    let ws = match (rows, cols) {
        (None, None) => ws,
        _ => {
            let (r0, rn, _) = rows.unwrap_or((0, kernel[2], g.padding));
            let (c0, cn, _) = cols.unwrap_or((0, kernel[3], g.padding));
            trimmed = ws.narrow(2, r0, rn).narrow(3, c0, cn);
            &trimmed
        }
    };
    let padding = [rows, cols].map(|taps| taps.map_or(g.padding, |(_, _, pad)| pad));
    xs.conv2d(
        ws,
        bias,
        [g.stride, g.stride],
        padding,
        [g.dilation, g.dilation],
        g.groups,
    )
}

/// For one axis of a `k`-tap kernel over `n` pixels: (first tap kept, taps kept, padding) when
/// some taps read only padding, None when every tap can meet the map (or the convolution is not a
/// stride-1 "same" one, where the rule does not hold).
fn live_taps(k: i64, n: i64, g: ConvGeometry) -> Option<(i64, i64, i64)> {
    let centre = (k - 1) / 2;
    let same = g.stride == 1 && k % 2 == 1 && g.padding == g.dilation * centre;
    if !same || n < 1 {
        return None;
    }
    // Tap centre ± r reads pixel y ± r·d for outputs y in [0, n): some pixel iff r·d <= n - 1.
    let reach = centre.min((n - 1) / g.dilation);
    (reach < centre).then_some((centre - reach, 2 * reach + 1, reach * g.dilation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn geometry(k: i64, stride: i64, dilation: i64) -> ConvGeometry {
        ConvGeometry {
            stride,
            padding: dilation * (k - 1) / 2,
            dilation,
            groups: 1,
        }
    }

    #[test]
    fn only_taps_that_can_only_read_padding_are_dropped() {
        // ASPP at output stride 16 on a 4x4 map: the centre alone.
        assert_eq!(live_taps(3, 4, geometry(3, 1, 6)), Some((1, 1, 0)));
        assert_eq!(live_taps(3, 4, geometry(3, 1, 4)), Some((1, 1, 0)));
        // Dilation 3 on 4 pixels: tap ±1 reads pixel 3 from output 0 and back: all kept.
        assert_eq!(live_taps(3, 4, geometry(3, 1, 3)), None);
        // A 7-tap kernel, dilation 2, on 5 pixels: offsets ±2, ±4 meet the map; ±6 cannot.
        assert_eq!(live_taps(7, 5, geometry(7, 1, 2)), Some((1, 5, 4)));
        // 3x3 without dilation on a 1-pixel map (a tiny crop's deepest layer).
        assert_eq!(live_taps(3, 1, geometry(3, 1, 1)), Some((1, 1, 0)));
        // Strided or not "same": left alone.
        assert_eq!(live_taps(3, 1, geometry(3, 2, 1)), None);
        let valid = ConvGeometry {
            padding: 0,
            ..geometry(3, 1, 6)
        };
        assert_eq!(live_taps(3, 4, valid), None);
    }

    /// Output and gradients (input, weights, bias) equal libtorch's full convolution, in double
    /// precision, on maps where rows, columns or both lose taps, grouped and not.
    #[test]
    fn the_trimmed_convolution_computes_what_the_full_one_does() {
        tch::manual_seed(0);
        let opts = (Kind::Double, Device::Cpu);
        for (h, w, k, d, groups) in [
            (4, 4, 3, 6, 1),
            (4, 4, 3, 18, 2),
            (10, 10, 3, 12, 1),
            (4, 12, 3, 6, 1),
            (12, 4, 3, 6, 4),
            (5, 5, 7, 2, 1),
            (1, 1, 3, 1, 1),
            (6, 6, 3, 2, 1),
        ] {
            let g = ConvGeometry {
                groups,
                ..geometry(k, 1, d)
            };
            let xs = Tensor::randn([2, 8, h, w], opts).set_requires_grad(true);
            let ws = Tensor::randn([8, 8 / groups, k, k], opts).set_requires_grad(true);
            let bs = Tensor::randn([8], opts).set_requires_grad(true);
            let full = xs.conv2d(&ws, Some(&bs), [1, 1], [g.padding; 2], [d, d], groups);
            let ours = conv2d(&xs, &ws, Some(&bs), g);
            assert_eq!(ours.size(), full.size(), "{h}x{w} k{k} d{d}");
            let upstream = Tensor::randn_like(&full);
            let grads = |out: &Tensor| {
                Tensor::run_backward(&[out * &upstream], &[&xs, &ws, &bs], true, false)
            };
            let (a, b) = (grads(&full), grads(&ours));
            let diff = |x: &Tensor, y: &Tensor| (x - y).abs().max().double_value(&[]);
            assert!(diff(&full, &ours) < 1e-10, "{h}x{w} k{k} d{d}: output");
            for (name, (x, y)) in ["input", "weight", "bias"].iter().zip(a.iter().zip(&b)) {
                assert!(diff(x, y) < 1e-10, "{h}x{w} k{k} d{d}: {name} gradient");
            }
        }
    }
}
