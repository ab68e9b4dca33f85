//! HdrHistogram's percentile-distribution text (`.hgrm`), as HdrHistogram's plotters read it:
//! writing one from a histogram, and reading one back for `compare` and `--plot`.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Writes `histogram` (values recorded in `unit_scale` units per output unit, e.g. 1000 for
/// nanoseconds shown as microseconds) with 5 ticks per half distance, like HdrHistogram's
/// `outputPercentileDistribution`.
pub fn write(histogram: &Histogram<u64>, unit_scale: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in histogram.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / unit_scale;
        if q < 1.0 {
            let _ = writeln!(
                out,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        histogram.mean() / unit_scale,
        histogram.stdev() / unit_scale
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.max() as f64 / unit_scale,
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        histogram.distinct_values()
    );
    out
}

/// `(value, percentile)` points of an `.hgrm` text, in order.
pub fn read(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let value = f.next()?.parse::<f64>().ok()?;
            let percentile = f.next()?.parse::<f64>().ok()?;
            f.next()?.parse::<u64>().ok()?;
            Some((value, percentile))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_distribution_reads_back_monotonic_and_ends_at_the_max() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let text = write(&h, 1000.0);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        assert!(text.contains("#[Max     ="));
        let points = read(&text);
        assert!(points.len() > 20);
        assert!(
            points
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
        );
        let (max, last_percentile) = *points.last().unwrap();
        assert_eq!(last_percentile, 1.0);
        assert!((max - 10_000.0).abs() / 10_000.0 < 0.01, "{max}");
        let (median, _) = points.iter().find(|(_, p)| *p >= 0.5).unwrap();
        assert!((*median - 5000.0).abs() / 5000.0 < 0.01, "{median}");
    }
}
