//! A PNG of latency percentile curves, several runs on one plot: x is the percentile
//! on a 1/(1-p) scale (50 %, 90 %, 99 %, 99.9 % ... evenly apart), y the latency.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Summary;

/// Fonts tried for the plot's text, in order (Debian's fonts-dejavu-core first).
const FONTS: [&str; 2] = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"];

fn register_font() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = FONTS
                .iter()
                .find_map(|path| std::fs::read(path).ok())
                .ok_or_else(|| format!("no font for the plot's text (looked for {})", FONTS.join(", ")))?;
            // Registered once per process and kept for its lifetime.
            plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
                .map_err(|_| "the plot's font cannot be read".to_string())
        })
        .clone()
}

fn percentile_label(x: &f64) -> String {
    let p = 100.0 - 100.0 / x;
    let text = format!("{p:.4}");
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// Draws every run's curve into `path`.
pub fn draw(path: &Path, runs: &[Summary]) -> Result<(), String> {
    register_font()?;
    let fail = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let points = |s: &Summary| -> Vec<(f64, f64)> {
        s.curve.iter().map(|&(p, ms)| (100.0 / (100.0 - p), ms.max(0.001))).collect::<Vec<_>>()
    };
    let x_max = runs.iter().flat_map(points).map(|(x, _)| x).fold(10.0_f64, f64::max);
    let y_max = runs.iter().flat_map(points).map(|(_, y)| y).fold(1.0_f64, f64::max) * 1.2;
    let y_min = runs.iter().flat_map(points).map(|(_, y)| y).fold(y_max, f64::min).max(0.001) / 1.2;
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency by percentile", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((1.0..x_max).log_scale(), (y_min..y_max).log_scale())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&percentile_label)
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, run) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points(run), color.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(run.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels_read_as_percentiles() {
        assert_eq!(percentile_label(&2.0), "50%");
        assert_eq!(percentile_label(&100.0), "99%");
        assert_eq!(percentile_label(&1000.0), "99.9%");
    }
}
