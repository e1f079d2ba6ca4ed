//! The loss / learning-rate curve PNG written at the end of training, from `metrics.jsonl`.
//! Drawing is the `plot` feature (plotters); without it the curves are read but not drawn.
use std::path::{Path, PathBuf};

use mf_core::{invalid, MfError, Result};
#[cfg(feature = "plot")]
use plotters::prelude::*;

/// The font is bundled so the plot renders on machines without system fonts.
#[cfg(feature = "plot")]
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSansMono.ttf");

#[cfg(feature = "plot")]
fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(invalid("the bundled plot font could not be loaded"))
    }
}

/// Points read from `metrics.jsonl`: (step, loss, lr) of training records and (step, eval_loss).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Curves {
    /// (step, mean loss, lr) per logged step.
    pub train: Vec<(f64, f64, f64)>,
    /// (step, eval_loss) per evaluation.
    pub eval: Vec<(f64, f64)>,
}

impl Curves {
    /// Reads a `metrics.jsonl`; records of a resumed run replace the ones they repeat.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| MfError::io(path, e))?;
        let mut c = Curves::default();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| invalid(format!("{}: line {}: {e}", path.display(), i + 1)))?;
            let step = v.get("step").and_then(|s| s.as_f64()).unwrap_or(0.0);
            if let (Some(loss), Some(lr)) = (
                v.get("loss").and_then(|x| x.as_f64()),
                v.get("lr").and_then(|x| x.as_f64()),
            ) {
                c.train.retain(|p| p.0 < step);
                c.train.push((step, loss, lr));
            } else if let Some(e) = v.get("eval_loss").and_then(|x| x.as_f64()) {
                c.eval.retain(|p| p.0 < step);
                c.eval.push((step, e));
            }
        }
        Ok(c)
    }
}

/// Writes `loss_curve.png` into `out_dir` and returns its path; `None` when no training step
/// was logged, or in a build without the `plot` feature.
pub fn loss_curve(curves: &Curves, out_dir: &Path) -> Result<Option<PathBuf>> {
    if curves.train.is_empty() || !cfg!(feature = "plot") {
        return Ok(None);
    }
    let png = out_dir.join("loss_curve.png");
    #[cfg(feature = "plot")]
    write_png(curves, &png)?;
    Ok(Some(png))
}

#[cfg(feature = "plot")]
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
    (lo - pad, hi + pad)
}

/// Draws loss (with evaluation loss, if any) over steps above the learning rate over steps.
#[cfg(feature = "plot")]
pub fn write_png(curves: &Curves, out: &Path) -> Result<()> {
    if curves.train.is_empty() {
        return Err(invalid("no logged training steps to plot"));
    }
    register_font()?;
    let err = |e: &dyn std::fmt::Display| invalid(format!("plot {}: {e}", out.display()));
    let root = BitMapBackend::new(out, (900, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(430);
    let max_step = curves.train.last().map_or(1.0, |p| p.0).max(1.0);
    let (lo, hi) = range(
        curves
            .train
            .iter()
            .map(|p| p.1)
            .chain(curves.eval.iter().map(|p| p.1)),
    );
    let mut loss_chart = ChartBuilder::on(&top)
        .caption("loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_step, lo..hi)
        .map_err(|e| err(&e))?;
    loss_chart
        .configure_mesh()
        .x_desc("step")
        .draw()
        .map_err(|e| err(&e))?;
    loss_chart
        .draw_series(LineSeries::new(
            curves.train.iter().map(|p| (p.0, p.1)),
            &BLUE,
        ))
        .map_err(|e| err(&e))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    // Markers keep a curve of one logged point visible.
    loss_chart
        .draw_series(
            curves
                .train
                .iter()
                .map(|p| Circle::new((p.0, p.1), 3, BLUE.filled())),
        )
        .map_err(|e| err(&e))?;
    loss_chart
        .draw_series(
            curves
                .eval
                .iter()
                .map(|p| Circle::new((p.0, p.1), 3, RED.filled())),
        )
        .map_err(|e| err(&e))?;
    if !curves.eval.is_empty() {
        loss_chart
            .draw_series(LineSeries::new(curves.eval.iter().copied(), &RED))
            .map_err(|e| err(&e))?
            .label("eval")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    }
    loss_chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    let (lo, hi) = range(curves.train.iter().map(|p| p.2));
    let mut lr_chart = ChartBuilder::on(&bottom)
        .caption("learning rate", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_step, lo..hi)
        .map_err(|e| err(&e))?;
    lr_chart
        .configure_mesh()
        .x_desc("step")
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .draw()
        .map_err(|e| err(&e))?;
    lr_chart
        .draw_series(LineSeries::new(
            curves.train.iter().map(|p| (p.0, p.2)),
            &GREEN,
        ))
        .map_err(|e| err(&e))?;
    lr_chart
        .draw_series(
            curves
                .train
                .iter()
                .map(|p| Circle::new((p.0, p.2), 3, GREEN.filled())),
        )
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "plot")]
    fn reads_metrics_and_draws() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("metrics.jsonl");
        let mut text = String::new();
        for s in 1..=6 {
            text += &format!(
                "{{\"step\":{s},\"loss\":{},\"lr\":{}}}\n",
                5.0 / s as f64,
                1e-3
            );
        }
        text += "{\"step\":3,\"eval_loss\":2.5,\"perplexity\":12.1}\n";
        // A resumed run re-logs steps 5 and 6: the later records win.
        text += "{\"step\":5,\"loss\":0.5,\"lr\":0.001}\n";
        std::fs::write(&m, text).unwrap();
        let c = Curves::read(&m).unwrap();
        assert_eq!(c.train.len(), 5);
        assert_eq!(c.train[4], (5.0, 0.5, 1e-3));
        assert_eq!(c.eval, vec![(3.0, 2.5)]);
        let png = dir.path().join("loss.png");
        write_png(&c, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(write_png(&Curves::default(), &png).is_err());
    }
}
