//! Bar charts of a bench run as SVG (plotters' SVG backend: no system font
//! libraries; text is left to the viewer's fonts).

use std::path::Path;

use anyhow::anyhow;
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// One group of bars per path; each group has one bar per series.
pub struct Bars<'a> {
    pub title: &'a str,
    pub unit: &'a str,
    /// Path labels along the x axis.
    pub groups: Vec<String>,
    /// (series name, one value per group).
    pub series: Vec<(&'a str, Vec<f64>)>,
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x2b, 0x6c, 0xb0),
    RGBColor(0xe0, 0x8e, 0x1b),
    RGBColor(0x3a, 0x9a, 0x4a),
    RGBColor(0xb0, 0x3a, 0x48),
];

pub fn draw(bars: &Bars<'_>, file: &Path) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("bench: cannot draw {}: {e}", file.display());
    let n = bars.groups.len().max(1);
    let width = (160 * n as u32 + 140).max(640);
    let root = SVGBackend::new(file, (width, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let max = bars
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        // Room for the value labels, and for the legend when there is one.
        * if bars.series.len() > 1 { 1.4 } else { 1.15 };
    let mut chart = ChartBuilder::on(&root)
        .caption(bars.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, 0.0..max)
        .map_err(|e| err(&e))?;
    let groups = bars.groups.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            // Label the centre of each group only.
            let i = x.floor() as usize;
            let centre = (x - x.floor() - 0.5).abs() < 1e-6;
            match groups.get(i) {
                Some(g) if centre => g.clone(),
                _ => String::new(),
            }
        })
        .y_desc(bars.unit)
        .y_label_formatter(&|y| format_value(*y))
        .draw()
        .map_err(|e| err(&e))?;

    let k = bars.series.len().max(1) as f64;
    let slot = 0.8 / k;
    for (s, (name, values)) in bars.series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let rects = values.iter().enumerate().map(|(g, v)| {
            let x0 = g as f64 + 0.1 + s as f64 * slot;
            Rectangle::new([(x0, 0.0), (x0 + slot * 0.9, *v)], color.filled())
        });
        let series = chart.draw_series(rects).map_err(|e| err(&e))?;
        if bars.series.len() > 1 {
            series
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        // The value above each bar.
        chart
            .draw_series(values.iter().enumerate().map(|(g, v)| {
                let x = g as f64 + 0.1 + (s as f64 + 0.45) * slot;
                Text::new(
                    format_value(*v),
                    (x, *v + max * 0.01),
                    TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            }))
            .map_err(|e| err(&e))?;
    }
    if bars.series.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn format_value(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_every_label() {
        let file = std::env::temp_dir().join(format!("bench-chart-{}.svg", std::process::id()));
        draw(
            &Bars {
                title: "calls per second",
                unit: "calls/s",
                groups: vec!["direct".into(), "HAProxy".into()],
                series: vec![("p50", vec![71_464.0, 38_220.0]), ("p99", vec![3.88, 6.52])],
            },
            &file,
        )
        .expect("draw");
        let svg = std::fs::read_to_string(&file).expect("svg written");
        let _ = std::fs::remove_file(&file);
        assert!(svg.starts_with("<svg"), "not an SVG: {}", &svg[..svg.len().min(80)]);
        for text in ["calls per second", "direct", "HAProxy", "71.5k", "6.52", "p99"] {
            assert!(svg.contains(text), "{text} missing from the chart");
        }
    }
}
