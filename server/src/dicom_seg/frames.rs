//! Where every pixel of every reference slice lies on the prediction's NIfTI grid, and the SEG's
//! bit-packed frames. Nothing is assumed about slice order or flips (dcm2niix reorders both):
//! each pixel (r, c) is placed in patient space, P = IPP + c·Δc·X + r·Δr·Y (PS3.3 C.7.6.2.1.1),
//! and found on the grid through the NIfTI affine (RAS; LPS = diag(-1, -1, 1) · RAS). The match
//! must be exact (one pixel, one voxel, every voxel covered), never a resampling.

use super::reference::SourceInstance;
use super::DicomSegError;

/// The prediction's voxel grid: its size and its voxel-to-RAS affine (3 rows of 4).
#[derive(Clone, Debug)]
pub struct Grid {
    pub dims: [usize; 3],
    pub affine: [[f64; 4]; 3],
}

/// One reference slice on the grid: pixel (r, c) is the voxel at flat (NIfTI, x fastest) index
/// `origin + r·row_step + c·col_step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceMap {
    pub origin: i64,
    pub row_step: i64,
    pub col_step: i64,
    pub rows: usize,
    pub columns: usize,
}

impl SliceMap {
    /// The voxel index of each pixel, in the frame's order (row by row).
    pub fn voxels(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rows as i64).flat_map(move |r| {
            (0..self.columns as i64)
                .map(move |c| (self.origin + r * self.row_step + c * self.col_step) as usize)
        })
    }
}

/// How far (in voxels) a pixel centre may lie from a voxel centre: float32 affines and the
/// converter's rounding, never a real offset.
const TOLERANCE: f64 = 0.05;

/// Each instance's place on `grid`, in the instances' order; refused unless the series and the
/// grid are the same sampling of space.
pub fn map_slices(
    instances: &[SourceInstance],
    grid: &Grid,
) -> Result<Vec<SliceMap>, DicomSegError> {
    let inverse = invert(grid).ok_or_else(|| {
        DicomSegError::GridMismatch("the prediction's affine is singular".to_string())
    })?;
    let strides = [
        1i64,
        grid.dims[0] as i64,
        (grid.dims[0] * grid.dims[1]) as i64,
    ];
    let mut covered = Vec::new();
    let mut maps = Vec::with_capacity(instances.len());
    for instance in instances {
        let placed = place_slice(instance, grid, &inverse)?;
        let [.., axis_s] = placed.axes;
        if covered.is_empty() {
            covered = vec![false; grid.dims[axis_s]];
        }
        let plane = placed.first[axis_s] as usize;
        if covered.len() != grid.dims[axis_s] || std::mem::replace(&mut covered[plane], true) {
            return Err(DicomSegError::GridMismatch(format!(
                "slice {} falls on a plane of the prediction that another slice covers",
                instance.sop_instance_uid
            )));
        }
        maps.push(placed.map(strides));
    }
    let planes = covered.len();
    let missing = covered.iter().filter(|c| !**c).count();
    if missing > 0 {
        return Err(DicomSegError::GridMismatch(format!(
            "the series has {} slices, the prediction {planes} planes along the slice direction \
             ({missing} without a slice)",
            instances.len()
        )));
    }
    Ok(maps)
}

/// One slice on the grid: the voxel of its first pixel, the axes of its columns, rows and
/// normal, and the signs of the column and row steps.
struct Placed {
    first: [i64; 3],
    /// Column, row and slice axis.
    axes: [usize; 3],
    sign_c: i64,
    sign_r: i64,
    rows: usize,
    columns: usize,
}

impl Placed {
    fn map(&self, strides: [i64; 3]) -> SliceMap {
        let [axis_c, axis_r, _] = self.axes;
        SliceMap {
            origin: (0..3).map(|a| self.first[a] * strides[a]).sum(),
            row_step: self.sign_r * strides[axis_r],
            col_step: self.sign_c * strides[axis_c],
            rows: self.rows,
            columns: self.columns,
        }
    }
}

/// Where `instance` lies on `grid`: its pixels must be voxels (one step, one voxel, along one
/// axis each for rows and columns), its first pixel a voxel centre, all of it inside the grid.
fn place_slice(
    instance: &SourceInstance,
    grid: &Grid,
    inverse: &Inverse,
) -> Result<Placed, DicomSegError> {
    let mismatch = |detail: String| DicomSegError::GridMismatch(detail);
    let uid = &instance.sop_instance_uid;
    let start = inverse.voxel(lps_to_ras(instance.position));
    let columns = instance.columns as usize;
    let rows = instance.rows as usize;
    let (axis_c, sign_c, axis_r, sign_r) = slice_axes(instance, inverse)?;
    let axis_s = 3 - axis_c - axis_r;
    let first = start.map(f64::round);
    if start
        .iter()
        .zip(&first)
        .any(|(v, r)| (v - r).abs() > TOLERANCE)
    {
        return Err(mismatch(format!(
            "the first pixel of slice {uid} lies between the prediction's voxels (at voxel \
             {start:.3?})"
        )));
    }
    let first = first.map(|v| v as i64);
    if columns != grid.dims[axis_c] || rows != grid.dims[axis_r] {
        return Err(mismatch(format!(
            "the slices are {rows} rows × {columns} columns, the prediction's grid is \
             {:?} voxels",
            grid.dims
        )));
    }
    let end_c = first[axis_c] + sign_c * (columns as i64 - 1);
    let end_r = first[axis_r] + sign_r * (rows as i64 - 1);
    let inside = |v: i64, axis: usize| v >= 0 && v < grid.dims[axis] as i64;
    if ![
        (first[axis_c], axis_c),
        (end_c, axis_c),
        (first[axis_r], axis_r),
        (end_r, axis_r),
        (first[axis_s], axis_s),
    ]
    .iter()
    .all(|(v, axis)| inside(*v, *axis))
    {
        return Err(mismatch(format!(
            "slice {uid} lies (partly) outside the prediction's grid"
        )));
    }
    Ok(Placed {
        first,
        axes: [axis_c, axis_r, axis_s],
        sign_c,
        sign_r,
        rows,
        columns,
    })
}

/// The grid axis and sign of one column step and of one row step of `instance`; refused unless
/// each is one voxel along one axis, and the two axes differ.
fn slice_axes(
    instance: &SourceInstance,
    inverse: &Inverse,
) -> Result<(usize, i64, usize, i64), DicomSegError> {
    let mismatch = |detail: String| DicomSegError::GridMismatch(detail);
    let uid = &instance.sop_instance_uid;
    let along_row = scale(instance.row_direction(), instance.pixel_spacing[1]);
    let along_column = scale(instance.column_direction(), instance.pixel_spacing[0]);
    let step_c = inverse.direction(lps_to_ras(along_row));
    let step_r = inverse.direction(lps_to_ras(along_column));
    let (axis_c, sign_c) = unit_step(step_c, instance.columns as usize).ok_or_else(|| {
        mismatch(format!(
            "one column of slice {uid} is a step of {step_c:.3?} voxels on the prediction's \
             grid, not one voxel along one axis"
        ))
    })?;
    let (axis_r, sign_r) = unit_step(step_r, instance.rows as usize).ok_or_else(|| {
        mismatch(format!(
            "one row of slice {uid} is a step of {step_r:.3?} voxels on the prediction's \
             grid, not one voxel along one axis"
        ))
    })?;
    if axis_c == axis_r {
        return Err(mismatch(format!(
            "rows and columns of slice {uid} run along the same axis of the prediction"
        )));
    }
    Ok((axis_c, sign_c, axis_r, sign_r))
}

/// The axis and sign of a step that is one voxel along one axis, within tolerance over `count`
/// steps.
fn unit_step(step: [f64; 3], count: usize) -> Option<(usize, i64)> {
    let rounded = step.map(f64::round);
    let span = count.saturating_sub(1).max(1) as f64;
    let exact = step
        .iter()
        .zip(&rounded)
        .all(|(s, r)| (s - r).abs() * span <= TOLERANCE);
    let axes: Vec<usize> = (0..3).filter(|a| rounded[*a] != 0.0).collect();
    match axes.as_slice() {
        [axis] if exact && rounded[*axis].abs() == 1.0 => Some((*axis, rounded[*axis] as i64)),
        _ => None,
    }
}

fn lps_to_ras(p: [f64; 3]) -> [f64; 3] {
    [-p[0], -p[1], p[2]]
}

fn scale(v: [f64; 3], by: f64) -> [f64; 3] {
    v.map(|x| x * by)
}

/// The inverse of a grid's affine.
struct Inverse {
    linear: [[f64; 3]; 3],
    offset: [f64; 3],
}

impl Inverse {
    fn direction(&self, d: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|i| (0..3).map(|j| self.linear[i][j] * d[j]).sum())
    }

    fn voxel(&self, ras: [f64; 3]) -> [f64; 3] {
        self.direction(std::array::from_fn(|i| ras[i] - self.offset[i]))
    }
}

fn invert(grid: &Grid) -> Option<Inverse> {
    let m: [[f64; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| grid.affine[i][j]));
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if !det.is_finite() || det.abs() < 1e-12 {
        return None;
    }
    // The adjugate over the determinant.
    let cofactor = |i: usize, j: usize| {
        let (r0, r1) = ((i + 1) % 3, (i + 2) % 3);
        let (c0, c1) = ((j + 1) % 3, (j + 2) % 3);
        m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]
    };
    Some(Inverse {
        linear: std::array::from_fn(|i| std::array::from_fn(|j| cofactor(j, i) / det)),
        offset: std::array::from_fn(|i| grid.affine[i][3]),
    })
}

/// Frames of one bit a pixel (PS3.5 8.1.1: the first pixel in the lowest bit of the first byte),
/// concatenated without padding between frames; the whole padded to an even length.
#[derive(Default)]
pub struct BitPacker {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitPacker {
    pub fn push(&mut self, bit: bool) {
        if self.bits.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if bit {
            *self.bytes.last_mut().expect("pushed above") |= 1 << (self.bits % 8);
        }
        self.bits += 1;
    }

    pub fn finish(mut self) -> Vec<u8> {
        if !self.bytes.len().is_multiple_of(2) {
            self.bytes.push(0);
        }
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(
        position: [f64; 3],
        orientation: [f64; 6],
        rows: u16,
        columns: u16,
    ) -> SourceInstance {
        SourceInstance {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
            sop_instance_uid: format!("2.25.{}", (position[2] * 10.0) as i64 + 1000),
            position,
            orientation,
            pixel_spacing: [2.0, 1.0],
            rows,
            columns,
        }
    }

    /// A 4 × 3 × 2 grid of 1 × 2 × 3 mm voxels as dcm2niix writes an axial series: x and y
    /// flipped from LPS to RAS.
    fn grid() -> Grid {
        Grid {
            dims: [4, 3, 2],
            affine: [
                [-1.0, 0.0, 0.0, 10.0],
                [0.0, -2.0, 0.0, 20.0],
                [0.0, 0.0, 3.0, -5.0],
            ],
        }
    }

    fn ras_of(grid: &Grid, flat: usize) -> [f64; 3] {
        let [nx, ny, _] = grid.dims;
        let v = [flat % nx, (flat / nx) % ny, flat / (nx * ny)].map(|x| x as f64);
        std::array::from_fn(|i| {
            (0..3).map(|j| grid.affine[i][j] * v[j]).sum::<f64>() + grid.affine[i][3]
        })
    }

    /// Every pixel's mapped voxel lies where the pixel lies in patient space.
    fn assert_pixels_land_on_their_voxels(instances: &[SourceInstance], grid: &Grid) {
        let maps = map_slices(instances, grid).unwrap();
        let mut seen = vec![0; grid.dims.iter().product()];
        for (instance, map) in instances.iter().zip(&maps) {
            for (i, voxel) in map.voxels().enumerate() {
                let (r, c) = ((i / map.columns) as f64, (i % map.columns) as f64);
                let x = instance.row_direction();
                let y = instance.column_direction();
                let lps: [f64; 3] = std::array::from_fn(|k| {
                    instance.position[k]
                        + c * instance.pixel_spacing[1] * x[k]
                        + r * instance.pixel_spacing[0] * y[k]
                });
                let ras = ras_of(grid, voxel);
                let expected = lps_to_ras(lps);
                assert!(
                    (0..3).all(|k| (ras[k] - expected[k]).abs() < 1e-9),
                    "pixel ({r}, {c}) at {expected:?} mapped to voxel {voxel} at {ras:?}"
                );
                seen[voxel] += 1;
            }
        }
        assert!(seen.iter().all(|n| *n == 1), "each voxel once: {seen:?}");
    }

    #[test]
    fn axial_slices_in_any_order_map_pixel_for_voxel() {
        let grid = grid();
        // Voxel (0,0,k) is RAS (10, 20, -5 + 3k): LPS (-10, -20, -5 + 3k); rows along +y LPS
        // (RAS -y: NIfTI +j), columns along +x LPS (NIfTI +i).
        let axial = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        // The second slice first: the order of the files never matters.
        let slices = [
            instance([-10.0, -20.0, -2.0], axial, 3, 4),
            instance([-10.0, -20.0, -5.0], axial, 3, 4),
        ];
        let maps = map_slices(&slices, &grid).unwrap();
        assert_eq!(
            maps[1],
            SliceMap {
                origin: 0,
                row_step: 4,
                col_step: 1,
                rows: 3,
                columns: 4
            }
        );
        assert_eq!(maps[0].origin, 12);
        assert_pixels_land_on_their_voxels(&slices, &grid);
    }

    #[test]
    fn flipped_rows_and_swapped_axes_still_map_exactly() {
        let grid = grid();
        // Rows run towards anterior (LPS -y): the first row is the last NIfTI j.
        let flipped = [1.0, 0.0, 0.0, 0.0, -1.0, 0.0];
        let slices = [
            instance([-10.0, -16.0, -5.0], flipped, 3, 4),
            instance([-10.0, -16.0, -2.0], flipped, 3, 4),
        ];
        assert_pixels_land_on_their_voxels(&slices, &grid);
        assert_eq!(map_slices(&slices, &grid).unwrap()[0].row_step, -4);
        // Rows and columns swapped (columns run along y): 4 rows of 3 columns, 2 mm columns.
        let swapped = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
        let mut slices = [
            instance([-10.0, -20.0, -5.0], swapped, 4, 3),
            instance([-10.0, -20.0, -2.0], swapped, 4, 3),
        ];
        for s in &mut slices {
            s.pixel_spacing = [1.0, 2.0];
        }
        assert_pixels_land_on_their_voxels(&slices, &grid);
    }

    #[test]
    fn another_grid_is_refused_naming_the_mismatch() {
        let grid = grid();
        let axial = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let message =
            |slices: &[SourceInstance]| map_slices(slices, &grid).unwrap_err().to_string();
        // Half a voxel off.
        let shifted = [
            instance([-9.5, -20.0, -5.0], axial, 3, 4),
            instance([-9.5, -20.0, -2.0], axial, 3, 4),
        ];
        let text = message(&shifted);
        assert!(
            text.starts_with("prediction grid does not match the reference series"),
            "{text}"
        );
        assert!(text.contains("between the prediction's voxels"), "{text}");
        // A slice missing.
        let text = message(
            &shifted[..0]
                .iter()
                .chain([&instance([-10.0, -20.0, -5.0], axial, 3, 4)])
                .cloned()
                .collect::<Vec<_>>(),
        );
        assert!(text.contains("1 slices, the prediction 2 planes"), "{text}");
        // Another in-plane size.
        let text = message(&[instance([-10.0, -20.0, -5.0], axial, 3, 3)]);
        assert!(text.contains("3 rows × 3 columns"), "{text}");
        // Finer pixels than voxels.
        let mut fine = instance([-10.0, -20.0, -5.0], axial, 3, 4);
        fine.pixel_spacing = [1.0, 1.0];
        let text = message(&[fine]);
        assert!(text.contains("not one voxel along one axis"), "{text}");
    }

    #[test]
    fn bits_are_packed_lowest_first_across_frame_boundaries() {
        let mut packer = BitPacker::default();
        // Two frames of 3 pixels, [1 0 1] and [1 1 0], then a third of 5 pixels all set.
        for bit in [1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1] {
            packer.push(bit == 1);
        }
        // Bits 0..8: 1 0 1 1 1 0 1 1 -> 0b1101_1101; bits 8..11: 1 1 1 -> 0b111; padded to even.
        assert_eq!(packer.finish(), vec![0b1101_1101, 0b0000_0111]);
        let mut odd = BitPacker::default();
        for _ in 0..17 {
            odd.push(true);
        }
        assert_eq!(odd.finish(), vec![0xFF, 0xFF, 0x01, 0x00]);
        assert!(BitPacker::default().finish().is_empty());
    }
}
