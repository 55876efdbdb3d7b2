//! How many rows a range read asks for in its next page: about
//! `--page-bytes` worth, from the bytes per row of the table's pages read so
//! far, and never more than `--page-size` rows.
//!
//! What a Job holds is a few pages per range in flight (docs/bulk.md,
//! "Memory"). Counted in rows, that is set by the table's row width: 2,000
//! rows of 64 KiB are 128 MiB a page. Counted in bytes, it is the same for
//! every table, so a pod's memory can be set once.

use std::sync::atomic::{AtomicU64, Ordering};

/// Rows of a table's first pages, before any answer has told its width:
/// small enough that a table of wide rows does not overshoot much, and
/// asked only until the first page of the table arrives.
pub const FIRST_PAGE_ROWS: i32 = 32;

/// The page size of one table's reads on one cluster, shared by its ranges.
#[derive(Debug)]
pub struct PageSizing {
    max_rows: i32,
    goal_bytes: u64,
    /// Bytes per row seen so far, a running average; 0 until a page with
    /// rows has arrived.
    bytes_per_row: AtomicU64,
}

impl PageSizing {
    /// Pages of about `goal_bytes` (0: of `max_rows` rows, whatever their
    /// size), at most `max_rows` rows.
    pub fn new(max_rows: i32, goal_bytes: u64) -> Self {
        PageSizing {
            max_rows: max_rows.max(1),
            goal_bytes,
            bytes_per_row: AtomicU64::new(0),
        }
    }

    /// Rows to ask for in the next page.
    pub fn next_rows(&self) -> i32 {
        if self.goal_bytes == 0 {
            return self.max_rows;
        }
        match self.bytes_per_row.load(Ordering::Relaxed) {
            0 => FIRST_PAGE_ROWS.min(self.max_rows),
            per_row => {
                let rows = (self.goal_bytes / per_row).clamp(1, self.max_rows as u64);
                rows as i32
            }
        }
    }

    /// Learns from a page of `rows` rows in `bytes` bytes. The average
    /// weighs each page a quarter, so one range of unusually wide or narrow
    /// rows moves the size of the others' pages without setting it.
    pub fn observe(&self, rows: usize, bytes: usize) {
        if rows == 0 {
            return;
        }
        let per_row = (bytes as u64).div_ceil(rows as u64).max(1);
        // Ranges read at once race here; a lost update only delays the
        // average by one page.
        let before = self.bytes_per_row.load(Ordering::Relaxed);
        let after = if before == 0 {
            per_row
        } else {
            (before * 3 + per_row).div_ceil(4)
        };
        self.bytes_per_row.store(after, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_pages_are_small_until_a_page_tells_the_width() {
        let sizing = PageSizing::new(2000, 256 * 1024);
        assert_eq!(sizing.next_rows(), FIRST_PAGE_ROWS);
        sizing.observe(0, 0);
        assert_eq!(
            sizing.next_rows(),
            FIRST_PAGE_ROWS,
            "an empty page tells nothing"
        );
        // 64 KiB rows: 4 to a page.
        sizing.observe(32, 32 * 65_536);
        assert_eq!(sizing.next_rows(), 4);
    }

    #[test]
    fn narrow_rows_are_capped_at_page_size_rows() {
        let sizing = PageSizing::new(2000, 256 * 1024);
        sizing.observe(32, 32 * 20);
        assert_eq!(sizing.next_rows(), 2000);
    }

    #[test]
    fn rows_wider_than_the_goal_are_read_one_a_page() {
        let sizing = PageSizing::new(2000, 256 * 1024);
        sizing.observe(1, 4 << 20);
        assert_eq!(sizing.next_rows(), 1);
    }

    #[test]
    fn the_width_is_a_running_average_not_the_last_page() {
        let sizing = PageSizing::new(2000, 100_000);
        sizing.observe(100, 100 * 1000);
        assert_eq!(sizing.next_rows(), 100);
        // One page of rows ten times wider moves the estimate a quarter of
        // the way: (3 * 1000 + 10000) / 4 = 3250 bytes a row.
        sizing.observe(10, 10 * 10_000);
        assert_eq!(sizing.next_rows(), 30);
    }

    #[test]
    fn no_goal_reads_pages_of_page_size_rows() {
        let sizing = PageSizing::new(500, 0);
        assert_eq!(sizing.next_rows(), 500);
        sizing.observe(500, 500 * 65_536);
        assert_eq!(sizing.next_rows(), 500);
    }
}
