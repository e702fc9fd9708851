//! Progress of a long run on stderr: an indicatif bar with rate and ETA when
//! stderr is a terminal, a plain line every few seconds (and at the end)
//! when it is not (CI logs, pipes), nothing when asked to be quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// Plain lines every `interval`.
    Plain {
        interval: Duration,
    },
    Quiet,
}

impl Mode {
    /// `Auto` decided: plain lines every 2 s when stderr is not a terminal.
    fn resolve(self) -> Mode {
        match self {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Auto,
            Mode::Auto => Mode::Plain {
                interval: Duration::from_secs(2),
            },
            other => other,
        }
    }
}

/// One phase (submitting, waiting) with a known total.
pub struct Progress {
    inner: Inner,
}

enum Inner {
    Bar(ProgressBar),
    Plain {
        label: String,
        total: u64,
        position: u64,
        message: String,
        started: Instant,
        last: Instant,
        interval: Duration,
    },
    Quiet,
}

impl Progress {
    pub fn new(label: &str, total: u64, mode: Mode) -> Progress {
        let inner = match mode.resolve() {
            Mode::Auto => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{prefix:>10} [{bar:24.cyan/blue}] {pos}/{len} {rate:>8} ETA {eta:>4} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.1}/s", state.per_sec());
                    },
                )
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(label.to_string());
                bar.enable_steady_tick(Duration::from_millis(200));
                Inner::Bar(bar)
            }
            Mode::Plain { interval } => {
                let now = Instant::now();
                Inner::Plain {
                    label: label.to_string(),
                    total,
                    position: 0,
                    message: String::new(),
                    started: now,
                    last: now,
                    interval,
                }
            }
            Mode::Quiet => Inner::Quiet,
        };
        Progress { inner }
    }

    /// `position` of the total is done; `message` says how it went so far.
    pub fn update(&mut self, position: u64, message: &str) {
        match &mut self.inner {
            Inner::Bar(bar) => {
                bar.set_position(position);
                bar.set_message(message.to_string());
            }
            Inner::Plain {
                position: p,
                message: m,
                last,
                interval,
                ..
            } => {
                *p = position;
                message.clone_into(m);
                if last.elapsed() >= *interval {
                    *last = Instant::now();
                    eprintln!("{}", self.plain_line());
                }
            }
            Inner::Quiet => {}
        }
    }

    /// The phase is over: leave the final state on screen (one last line).
    pub fn finish(&mut self, position: u64, message: &str) {
        match &mut self.inner {
            Inner::Bar(bar) => {
                bar.set_position(position);
                bar.finish_with_message(message.to_string());
            }
            Inner::Plain {
                position: p,
                message: m,
                ..
            } => {
                *p = position;
                message.clone_into(m);
                eprintln!("{}", self.plain_line());
            }
            Inner::Quiet => {}
        }
    }

    /// Print a line without breaking the bar.
    pub fn println(&self, line: &str) {
        match &self.inner {
            Inner::Bar(bar) => bar.println(line),
            Inner::Plain { .. } => eprintln!("{line}"),
            Inner::Quiet => {}
        }
    }

    fn plain_line(&self) -> String {
        let Inner::Plain {
            label,
            total,
            position,
            message,
            started,
            ..
        } = &self.inner
        else {
            return String::new();
        };
        plain_line(label, *position, *total, started.elapsed(), message)
    }
}

/// `waiting: 120/200 (60%), 45.2/s, ETA 2s, 118 succeeded, 2 failed`
pub fn plain_line(
    label: &str,
    position: u64,
    total: u64,
    elapsed: Duration,
    message: &str,
) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        position as f64 / secs
    } else {
        0.0
    };
    let percent = (position * 100).checked_div(total).unwrap_or(100);
    let eta = if position >= total {
        "done".to_string()
    } else if rate > 0.0 {
        format!(
            "ETA {}",
            human_duration(Duration::from_secs_f64((total - position) as f64 / rate))
        )
    } else {
        "ETA ?".to_string()
    };
    let mut line = format!("{label}: {position}/{total} ({percent}%), {rate:.1}/s, {eta}");
    if !message.is_empty() {
        line.push_str(", ");
        line.push_str(message);
    }
    line
}

/// `850ms`, `4.2s`, `3m07s`, `1h02m`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if d.as_millis() >= 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_carry_rate_and_eta() {
        let line = plain_line("waiting", 50, 200, Duration::from_secs(10), "50 succeeded");
        assert_eq!(
            line,
            "waiting: 50/200 (25%), 5.0/s, ETA 30.0s, 50 succeeded"
        );
        let line = plain_line("waiting", 200, 200, Duration::from_secs(10), "");
        assert_eq!(line, "waiting: 200/200 (100%), 20.0/s, done");
        let line = plain_line("waiting", 0, 200, Duration::ZERO, "");
        assert!(line.ends_with("ETA ?"), "{line}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(human_duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(human_duration(Duration::from_secs(187)), "3m07s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h02m");
    }
}
