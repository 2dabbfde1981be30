//! Pane arithmetic. A sliding window of `size` every `slide` is the union of size/slide panes,
//! each `slide` long; an event updates exactly one pane, and a window is merged on read.
//! A tumbling window is the case slide == size.

use std::time::Duration;

/// A window definition, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub size_ms: i64,
    pub slide_ms: i64,
}

impl Window {
    /// Checks that the slide divides the size, so panes tile the window exactly.
    pub fn new(size: Duration, slide: Duration) -> Result<Window, String> {
        let (size_ms, slide_ms) = (size.as_millis() as i64, slide.as_millis() as i64);
        if slide_ms <= 0 || size_ms <= 0 {
            return Err("window and slide must be longer than 0".into());
        }
        if size_ms % slide_ms != 0 {
            return Err(format!(
                "slide ({slide:?}) must divide the window ({size:?}) evenly"
            ));
        }
        Ok(Window { size_ms, slide_ms })
    }

    /// Start of the pane holding time `t_ms`.
    pub fn pane_of(&self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.slide_ms) * self.slide_ms
    }

    /// Pane starts of the window that ends with the pane holding `t_ms`: `[end - size, end)`.
    pub fn panes_ending_at(&self, t_ms: i64) -> std::ops::Range<i64> {
        let end = self.pane_of(t_ms) + self.slide_ms;
        (end - self.size_ms)..end
    }

    /// The window's time range `[start, end)` ending with the pane holding `t_ms`.
    pub fn range_at(&self, t_ms: i64) -> (i64, i64) {
        let r = self.panes_ending_at(t_ms);
        (r.start, r.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(size: u64, slide: u64) -> Window {
        Window::new(Duration::from_secs(size), Duration::from_secs(slide)).unwrap()
    }

    #[test]
    fn panes_tile_the_window() {
        let w = w(60, 5);
        assert_eq!(w.pane_of(0), 0);
        assert_eq!(w.pane_of(4_999), 0);
        assert_eq!(w.pane_of(5_000), 5_000);
        assert_eq!(w.pane_of(-1), -5_000, "before the epoch rounds down too");
        assert_eq!(w.range_at(62_000), (5_000, 65_000));
        assert_eq!(w.panes_ending_at(62_000).step_by(5_000).count(), 12);
    }

    #[test]
    fn tumbling_is_one_pane() {
        let w = w(60, 60);
        assert_eq!(w.range_at(61_000), (60_000, 120_000));
    }

    #[test]
    fn slide_must_divide_size() {
        assert!(Window::new(Duration::from_secs(60), Duration::from_secs(7)).is_err());
        assert!(Window::new(Duration::from_secs(60), Duration::ZERO).is_err());
    }
}
