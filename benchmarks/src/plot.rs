//! SVG plots of the simulation grid (plotters' SVG backend: text is left to the viewer's fonts,
//! so nothing here needs system fonts).

use std::path::Path;

use plotters::prelude::*;
use thiserror::Error;

use crate::results::SimCellResult;

#[derive(Debug, Error)]
#[error("cannot draw {path}: {detail}")]
pub struct PlotError {
    path: String,
    detail: String,
}

const COLORS: [RGBColor; 3] = [
    RGBColor(200, 60, 40),
    RGBColor(40, 110, 200),
    RGBColor(40, 160, 80),
];

/// One line: (x, speedup) points of one α and mode.
struct Line {
    label: String,
    color: RGBColor,
    adaptive: bool,
    points: Vec<(f64, f64)>,
}

fn lines(cells: &[SimCellResult], x: impl Fn(&SimCellResult) -> Option<f64>) -> Vec<Line> {
    let mut alphas: Vec<f64> = cells.iter().map(|c| c.acceptance).collect();
    alphas.sort_by(f64::total_cmp);
    alphas.dedup();
    let mut out = Vec::new();
    for (i, alpha) in alphas.iter().enumerate() {
        for adaptive in [false, true] {
            let mut points: Vec<(f64, f64)> = cells
                .iter()
                .filter(|c| c.acceptance == *alpha && (c.mode == "adaptive") == adaptive)
                .filter_map(|c| x(c).map(|x| (x, c.speedup)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            if points.is_empty() {
                continue;
            }
            out.push(Line {
                label: format!(
                    "α = {alpha}, {}",
                    if adaptive {
                        "adaptive"
                    } else {
                        "pinned best k"
                    }
                ),
                color: COLORS[i % COLORS.len()],
                adaptive,
                points,
            });
        }
    }
    out
}

fn draw(
    path: &Path,
    caption: &str,
    x_desc: &str,
    x_max: f64,
    lines: &[Line],
) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(1.5f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("speedup (proxy ÷ target alone)")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new([(0.0, 1.0), (x_max, 1.0)], BLACK.mix(0.5)))
        .map_err(|e| err(&e))?
        .label("1.0x (target alone)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    for line in lines {
        let color = line.color;
        let style = if line.adaptive {
            color.mix(0.55).stroke_width(2)
        } else {
            color.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(line.points.clone(), style))
            .map_err(|e| err(&e))?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        if line.adaptive {
            chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 5, color.mix(0.55).filled())),
                )
                .map_err(|e| err(&e))?;
        } else {
            chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|&p| Circle::new(p, 4, color.filled())),
                )
                .map_err(|e| err(&e))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Speedup against the target's own speed, at the RTT with the most cells (2 ms in the default grid).
pub fn speedup_vs_target_speed(
    cells: &[SimCellResult],
    rtt_ms: f64,
    path: &Path,
) -> Result<(), PlotError> {
    let at: Vec<SimCellResult> = cells
        .iter()
        .filter(|c| c.rtt_ms == rtt_ms)
        .cloned()
        .collect();
    let x_max = at.iter().map(|c| c.target_tok_s).fold(10.0, f64::max) * 1.1;
    draw(
        path,
        &format!(
            "SIMULATION: speedup vs target speed (RTT {rtt_ms} ms, draft {} tok/s)",
            at.first().map_or(0.0, |c| c.draft_tok_s)
        ),
        "target alone, tokens/s",
        x_max,
        &lines(&at, |c| Some(c.target_tok_s)),
    )
}

/// Speedup against the network round-trip time, at one target speed.
pub fn speedup_vs_rtt(
    cells: &[SimCellResult],
    target_tok_s: f64,
    path: &Path,
) -> Result<(), PlotError> {
    let at: Vec<SimCellResult> = cells
        .iter()
        .filter(|c| c.target_tok_s == target_tok_s)
        .cloned()
        .collect();
    let x_max = at.iter().map(|c| c.rtt_ms).fold(1.0, f64::max) * 1.1;
    draw(
        path,
        &format!("SIMULATION: speedup vs RTT (target {target_tok_s} tok/s)"),
        "round-trip time per exchange, ms",
        x_max,
        &lines(&at, |c| Some(c.rtt_ms)),
    )
}
