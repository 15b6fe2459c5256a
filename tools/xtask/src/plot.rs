//! The bench chart, drawn with plotters once per backend (SVG and PNG):
//! per workload, each row's IOPS ratio to its baseline, with a line at 1.0
//! and dashed goal lines.

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// One bar series: a label and one ratio per workload group.
pub struct Series {
    pub label: String,
    pub values: Vec<Option<f64>>,
}

pub struct Chart {
    pub title: String,
    pub groups: Vec<String>,
    pub series: Vec<Series>,
    /// Dashed goal lines: ratio and what it is the goal of.
    pub goals: Vec<(f64, String)>,
}

const SIZE: (u32, u32) = (1200, 520);
/// Text for the PNG: plotters' pure-Rust glyph path needs a font file.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

impl Chart {
    /// Writes the chart as SVG and PNG.
    pub fn write(&self, svg: &Path, png: &Path) -> Result<()> {
        register_font()?;
        self.draw(SVGBackend::new(svg, SIZE).into_drawing_area())
            .map_err(|e| anyhow!("{}: {e}", svg.display()))?;
        let area = BitMapBackend::new(png, SIZE).into_drawing_area();
        self.draw(area)
            .map_err(|e| anyhow!("{}: {e}", png.display()))
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let ymax = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().flatten())
            .fold(
                self.goals.iter().map(|g| g.0).fold(1.0, f64::max) + 0.1,
                |a, &b| a.max(b * 1.05),
            );
        let n = self.groups.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..n, 0.0..ymax)?;
        let groups = &self.groups;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                let centred = (x - x.floor() - 0.5).abs() < 1e-6;
                match groups.get(i) {
                    Some(g) if centred => g.to_string(),
                    _ => String::new(),
                }
            })
            .y_desc("IOPS ratio to the baseline")
            .draw()?;
        let k = self.series.len().max(1) as f64;
        let width = 0.8 / k;
        for (si, s) in self.series.iter().enumerate() {
            let color = Palette99::pick(si).to_rgba();
            let bars = s.values.iter().enumerate().filter_map(|(g, v)| {
                let x0 = g as f64 + 0.1 + si as f64 * width;
                v.map(|v| Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled()))
            });
            chart
                .draw_series(bars)?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart.draw_series(LineSeries::new(
            [(0.0, 1.0), (n, 1.0)],
            BLACK.stroke_width(1),
        ))?;
        for (i, (goal, what)) in self.goals.iter().enumerate() {
            let color = [RED, BLUE, MAGENTA][i % 3];
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, *goal), (n, *goal)],
                    8,
                    5,
                    color.stroke_width(1),
                ))?
                .label(format!("goal {goal:.2}: {what}"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()
    }
}

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("cannot read {FONT} (apt-get install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
        .map_err(|_| anyhow!("{FONT} is not a usable font"))?;
    let _ = DONE.set(());
    Ok(())
}
