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

fn latency_label(y: &f64) -> String {
    let text = match *y {
        y if y >= 10.0 => return format!("{y:.0}"),
        y if y >= 1.0 => format!("{y:.1}"),
        y => format!("{y:.3}"),
    };
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A run's legend: its label, throughput, clients and errors.
fn legend(run: &Summary) -> String {
    let errors: u64 = run.errors.values().sum();
    format!("{}: {:.0} req/s, {} clients, {errors} errors", run.label, run.throughput, run.clients)
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
    // Ticks at the percentiles people quote, and on y at each decade and at every
    // run's p50, p99 and p99.9.
    let x_keys: Vec<f64> =
        [2.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0].into_iter().filter(|x| *x <= x_max).collect();
    let mut y_keys: Vec<f64> = (-3..=5).map(|e| 10f64.powi(e)).filter(|y| (y_min..=y_max).contains(y)).collect();
    y_keys.extend(runs.iter().flat_map(|r| [r.latency.p50_ms, r.latency.p99_ms, r.latency.p999_ms]));
    y_keys.retain(|y| (y_min..=y_max).contains(y));
    y_keys.sort_by(f64::total_cmp);
    // Labels closer than 15 % would print over each other: keep the lower one.
    let mut spaced: Vec<f64> = Vec::new();
    for y in y_keys {
        if spaced.last().is_none_or(|last| y >= last * 1.15) {
            spaced.push(y);
        }
    }
    let y_keys = spaced;
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency by percentile", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (1.0..x_max).log_scale().with_key_points(x_keys),
            (y_min..y_max).log_scale().with_key_points(y_keys),
        )
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&percentile_label)
        .y_label_formatter(&latency_label)
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, run) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points(run), color.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(legend(run))
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
        assert_eq!(
            (latency_label(&0.25), latency_label(&1.0), latency_label(&250.4)),
            ("0.25".into(), "1".into(), "250".into())
        );
        assert_eq!(latency_label(&3.251), "3.3");
    }
}
