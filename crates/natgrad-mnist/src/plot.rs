//! `curves.svg`: train loss per step (smoothed) and test accuracy per epoch, one colour per
//! optimizer.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::run::RunResult;

const COLORS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Moving average over `window` steps.
fn smooth(values: &[f64], window: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(values.len());
    let mut sum = 0.0;
    for (i, v) in values.iter().enumerate() {
        sum += v;
        if i >= window {
            sum -= values[i - window];
        }
        let n = (i + 1).min(window);
        out.push(((i + 1) as f64, sum / n as f64));
    }
    out
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws the accuracy curves of `results` (`points` of each) with dots and a legend in the
/// lower right corner, one colour per run.
fn accuracy_curves<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    results: &[RunResult],
    points: impl Fn(&RunResult) -> Vec<(f64, f64)>,
) -> Result<(), Box<dyn std::error::Error>> {
    for (i, r) in results.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let curve = points(r);
        chart
            .draw_series(LineSeries::new(curve.clone(), color.stroke_width(2)))?
            .label(r.spec.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(curve.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

type Canvas<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// A white, titled SVG canvas of `size` at `path`.
fn canvas<'a>(
    path: &'a Path,
    size: (u32, u32),
    title: &str,
) -> Result<Canvas<'a>, Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root.titled(title, ("sans-serif", 20))?)
}

/// Draws the two panels into an SVG file at `path`.
pub fn draw(
    results: &[RunResult],
    title: &str,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = canvas(path, (1200, 480), title)?;
    let (left, right) = root.split_horizontally(640);

    let steps = results
        .iter()
        .map(|r| r.step_losses.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let window = (steps / 50).max(1);
    let curves: Vec<Vec<(f64, f64)>> = results
        .iter()
        .map(|r| smooth(&r.step_losses, window))
        .collect();
    let finite = curves
        .iter()
        .flatten()
        .map(|p| p.1)
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = finite.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo < hi {
        (lo * 0.9, hi * 1.1)
    } else {
        (0.01, 10.0)
    };
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!("train loss per step ({window}-step mean)"),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(1f64..steps as f64, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("step")
        .y_desc("cross-entropy (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()?;
    for (i, (r, curve)) in results.iter().zip(&curves).enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                curve
                    .iter()
                    .copied()
                    .filter(|p| p.1.is_finite() && p.1 > 0.0),
                color.stroke_width(2),
            ))?
            .label(r.spec.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;

    let epochs = results.iter().map(|r| r.epochs.len()).max().unwrap_or(1);
    let accs = results
        .iter()
        .flat_map(|r| r.epochs.iter().map(|e| 100.0 * e.test_accuracy));
    let (alo, ahi) = accs
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (alo, ahi) = if alo <= ahi {
        (alo - 0.5, (ahi + 0.5).min(100.0))
    } else {
        (0.0, 100.0)
    };
    let mut chart = ChartBuilder::on(&right)
        .caption("test accuracy per epoch", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.5f64..epochs as f64 + 0.5, alo..ahi)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("epoch")
        .y_desc("accuracy (%)")
        .x_labels(epochs + 1)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 && *x >= 1.0 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()?;
    accuracy_curves(&mut chart, results, |r| {
        r.epochs
            .iter()
            .map(|e| (e.epoch as f64, 100.0 * e.test_accuracy))
            .collect()
    })?;
    root.present()?;
    Ok(())
}

/// Draws test accuracy against training wall-clock seconds (the runs' `evals`) into an SVG file
/// at `path`: time-to-accuracy, one colour per run.
pub fn draw_time(
    results: &[RunResult],
    title: &str,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = canvas(path, (800, 480), title)?;
    let points = results.iter().flat_map(|r| r.evals.iter());
    let (t_max, lo, hi) = points.fold((1.0f64, 100.0f64, 0.0f64), |(t, lo, hi), e| {
        (t.max(e.0), lo.min(100.0 * e.2), hi.max(100.0 * e.2))
    });
    let lo = (lo - 0.5).max(0.0);
    let mut chart = ChartBuilder::on(&root)
        .caption("test accuracy against training time", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..t_max * 1.02, lo..(hi + 0.3).min(100.0))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("training wall-clock (s)")
        .y_desc("test accuracy (%)")
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()?;
    accuracy_curves(&mut chart, results, |r| {
        r.evals.iter().map(|e| (e.0, 100.0 * e.2)).collect()
    })?;
    root.present()?;
    Ok(())
}
