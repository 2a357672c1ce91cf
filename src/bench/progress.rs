//! The progress bar: drawn on stderr when it is a terminal, hidden otherwise (CI, pipes,
//! `--json` into a file), and redrawn at most a few times a second from the loop
//! itself (no ticker thread).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the bar is updated, in nanoseconds of bench time.
const REDRAW_EVERY_NS: u64 = 200_000_000;

/// One bar, reused across a scenario's stages.
pub struct Progress {
    bar: ProgressBar, // hidden when stderr is not a terminal
    next_ns: u64,     // bench time of the next redraw
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Progress {
    /// A bar on stderr if it is a terminal, hidden otherwise.
    pub fn new() -> Progress {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(5)
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress { bar: ProgressBar::with_draw_target(Some(0), target), next_ns: 0 }
    }

    /// Starts a stage of `len` units, shown as `prefix`.
    pub fn stage(&mut self, prefix: &'static str, len: u64) {
        // The template is a constant in indicatif's syntax; should it ever be refused,
        // the default style is a fine fallback.
        let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.set_prefix(prefix);
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.bar.set_message("");
        self.next_ns = 0;
    }

    /// Is a redraw due at `now_ns`? (Lets callers skip building the message.)
    #[inline]
    pub fn due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_ns && !self.bar.is_hidden()
    }

    /// Moves the bar to `pos` with `message`.
    pub fn update(&mut self, now_ns: u64, pos: u64, message: String) {
        self.next_ns = now_ns + REDRAW_EVERY_NS;
        self.bar.set_position(pos);
        self.bar.set_message(message);
    }

    /// Removes the bar before the summary is printed.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
