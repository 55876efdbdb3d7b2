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
/// few, so that a table of wide rows does not overshoot much (8 ranges of 4
/// rows of 1 MiB are 32 MiB), and asked only until the first page of the
/// table arrives.
pub const FIRST_PAGE_ROWS: i32 = 4;

/// The page size of one table's reads on one cluster, shared by its ranges.
#[derive(Debug)]
pub struct PageSizing {
    max_rows: i32,
    goal_bytes: u64,
    /// Bytes per row seen so far; 0 until a page with rows has arrived.
    /// It rises at once to a wider page's width and falls a quarter of the
    /// way to a narrower one's: a page too large costs memory, one too
    /// small only a round trip.
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

    fn rows_for(&self, bytes_per_row: u64) -> i32 {
        if self.goal_bytes == 0 {
            return self.max_rows;
        }
        match bytes_per_row {
            0 => FIRST_PAGE_ROWS.min(self.max_rows),
            per_row => {
                let rows = (self.goal_bytes / per_row).clamp(1, self.max_rows as u64);
                rows as i32
            }
        }
    }

    /// Learns from a page of `rows` rows in `bytes` bytes; returns its
    /// bytes per row (0 for an empty page, which tells nothing).
    pub fn observe(&self, rows: usize, bytes: usize) -> u64 {
        if rows == 0 {
            return 0;
        }
        let per_row = (bytes as u64).div_ceil(rows as u64).max(1);
        let _ = self
            .bytes_per_row
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |before| {
                Some(if before == 0 || per_row >= before {
                    per_row
                } else {
                    (before * 3 + per_row).div_ceil(4)
                })
            });
        per_row
    }
}

/// One range read's page sizes: the table's, or its own last page's width
/// when that is wider. A range of wide rows among ranges of narrow ones
/// would otherwise be sized by the narrow pages, which pull the table's
/// figure down between its own pages.
#[derive(Debug)]
pub struct RangePaging<'a> {
    table: &'a PageSizing,
    own_bytes_per_row: u64,
}

impl<'a> RangePaging<'a> {
    pub fn new(table: &'a PageSizing) -> Self {
        RangePaging {
            table,
            own_bytes_per_row: 0,
        }
    }

    /// Rows to ask for in this range's next page.
    pub fn next_rows(&self) -> i32 {
        let table = self.table.bytes_per_row.load(Ordering::Relaxed);
        self.table.rows_for(table.max(self.own_bytes_per_row))
    }

    /// Learns from this range's page of `rows` rows in `bytes` bytes.
    pub fn observe(&mut self, rows: usize, bytes: usize) {
        let per_row = self.table.observe(rows, bytes);
        if per_row > 0 {
            self.own_bytes_per_row = per_row;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a range that has read nothing yet asks for: the table's figure.
    impl PageSizing {
        fn next_rows(&self) -> i32 {
            RangePaging::new(self).next_rows()
        }
    }

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
        sizing.observe(4, 4 * 65_536);
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
    fn the_width_rises_at_once_and_falls_by_a_quarter() {
        let sizing = PageSizing::new(2000, 100_000);
        sizing.observe(100, 100 * 1000);
        assert_eq!(sizing.next_rows(), 100);
        // A page of rows ten times wider sets the width at once...
        sizing.observe(10, 10 * 10_000);
        assert_eq!(sizing.next_rows(), 10);
        // ... and a narrower one moves it a quarter of the way:
        // (3 * 10000 + 1000) / 4 = 7750 bytes a row.
        sizing.observe(100, 100 * 1000);
        assert_eq!(sizing.next_rows(), 12);
    }

    #[test]
    fn a_range_of_wide_rows_is_sized_by_its_own_width_among_narrow_ranges() {
        let table = PageSizing::new(2000, 256 * 1024);
        let mut wide = RangePaging::new(&table);
        let mut narrow = RangePaging::new(&table);
        wide.observe(4, 4 * 65_536);
        assert_eq!(wide.next_rows(), 4);
        // Many narrow pages bring the table's width down...
        for _ in 0..40 {
            narrow.observe(1000, 1000 * 200);
        }
        assert!(narrow.next_rows() > 1000, "{}", narrow.next_rows());
        // ... but not the wide range's.
        assert_eq!(wide.next_rows(), 4);
        // A range that has read nothing yet goes by the table.
        assert_eq!(
            RangePaging::new(&table).next_rows(),
            table.rows_for(table.bytes_per_row.load(Ordering::Relaxed))
        );
    }

    #[test]
    fn no_goal_reads_pages_of_page_size_rows() {
        let sizing = PageSizing::new(500, 0);
        assert_eq!(sizing.next_rows(), 500);
        sizing.observe(500, 500 * 65_536);
        assert_eq!(sizing.next_rows(), 500);
    }
}
