//! The data-area allocator: one bit per 4 KiB block, next-fit from a rotating cursor.
//!
//! Block-granular, so a chunk of up to 4 KiB takes exactly one block and no chunk wastes
//! more than 4095 bytes. Next-fit spreads writes over the area and keeps freshly freed blocks
//! (whose release may be the last record a crash keeps) out of reuse for as long as possible.
//! The bitmap is allocated once, at open; nothing allocates afterwards.

use crate::format::{Extent, bitmap_words};

#[derive(Debug, Clone)]
pub struct Allocator {
    words: Vec<u64>,
    blocks: u64,
    free_blocks: u64,
    cursor: u64,
}

impl Allocator {
    /// An allocator over `blocks` blocks, all free.
    pub fn new(blocks: u64) -> Allocator {
        Allocator {
            words: vec![0; bitmap_words(blocks) as usize],
            blocks,
            free_blocks: blocks,
            cursor: 0,
        }
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn free_blocks(&self) -> u64 {
        self.free_blocks
    }

    pub fn used_blocks(&self) -> u64 {
        self.blocks - self.free_blocks
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Finds and takes `count` contiguous free blocks, searching from the cursor and wrapping
    /// once. `None` when no run is long enough.
    pub fn allocate(&mut self, count: u32) -> Option<Extent> {
        assert!(count > 0, "allocating zero blocks");
        let count = u64::from(count);
        if count > self.free_blocks {
            return None;
        }
        let start = self
            .find_run(self.cursor, self.blocks, count)
            .or_else(|| self.find_run(0, self.cursor.min(self.blocks), count))?;
        let extent = Extent { block: start, blocks: count as u32 };
        let marked = self.mark(extent);
        assert!(marked, "a free run was not free");
        self.cursor = (start + count) % self.blocks;
        Some(extent)
    }

    /// Marks `extent` used; false (and nothing changed) when it leaves the area or any of its
    /// blocks is already used. Recovery uses it to rebuild and check the map.
    pub fn mark(&mut self, extent: Extent) -> bool {
        let end = extent.block.checked_add(u64::from(extent.blocks));
        if extent.blocks == 0 || end.is_none_or(|end| end > self.blocks) {
            return false;
        }
        if !self.is_free(extent.block, u64::from(extent.blocks)) {
            return false;
        }
        for block in extent.block..extent.block + u64::from(extent.blocks) {
            self.words[(block / 64) as usize] |= 1 << (block % 64);
        }
        self.free_blocks -= u64::from(extent.blocks);
        true
    }

    /// Returns `extent` to the free map. Every block must be in use (a double free is a bug).
    pub fn free(&mut self, extent: Extent) {
        for block in extent.block..extent.block + u64::from(extent.blocks) {
            let (word, bit) = ((block / 64) as usize, 1u64 << (block % 64));
            assert!(self.words[word] & bit != 0, "freeing free block {block}");
            self.words[word] &= !bit;
        }
        self.free_blocks += u64::from(extent.blocks);
    }

    pub fn is_used(&self, block: u64) -> bool {
        self.words[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    fn is_free(&self, start: u64, count: u64) -> bool {
        (start..start + count).all(|block| !self.is_used(block))
    }

    /// First run of `count` free blocks starting in `from..to` (the run may not pass `blocks`).
    fn find_run(&self, from: u64, to: u64, count: u64) -> Option<u64> {
        let mut block = from;
        let mut run_start = from;
        let mut run = 0;
        while block < self.blocks && (run > 0 || block < to) {
            let word = self.words[(block / 64) as usize];
            if run == 0 && block.is_multiple_of(64) && word == u64::MAX {
                block += 64;
                run_start = block;
                continue;
            }
            if word & (1 << (block % 64)) == 0 {
                if run == 0 {
                    run_start = block;
                }
                run += 1;
                if run == count {
                    return Some(run_start);
                }
            } else {
                run = 0;
            }
            block += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiseki_devices::rng::SplitMix64;

    #[test]
    fn allocates_distinct_extents_until_full_then_refuses() {
        let mut a = Allocator::new(130);
        let x = a.allocate(64).unwrap();
        let y = a.allocate(64).unwrap();
        let z = a.allocate(2).unwrap();
        assert_eq!((x.block, y.block, z.block), (0, 64, 128));
        assert_eq!(a.free_blocks(), 0);
        assert!(a.allocate(1).is_none());
        a.free(y);
        assert_eq!(a.free_blocks(), 64);
        assert_eq!(a.allocate(64), Some(y));
    }

    #[test]
    fn fragmentation_refuses_a_long_run_but_serves_short_ones() {
        let mut a = Allocator::new(64);
        let singles: Vec<Extent> = (0..64).map(|_| a.allocate(1).unwrap()).collect();
        for extent in singles.iter().step_by(2) {
            a.free(*extent);
        }
        assert_eq!(a.free_blocks(), 32);
        assert!(a.allocate(2).is_none(), "no two adjacent free blocks");
        for _ in 0..32 {
            let e = a.allocate(1).unwrap();
            assert_eq!(e.block % 2, 0);
        }
        assert!(a.allocate(1).is_none());
    }

    #[test]
    fn run_found_across_the_wrap_point_and_mark_refuses_overlap() {
        let mut a = Allocator::new(10);
        let first = a.allocate(8).unwrap();
        a.free(Extent { block: 0, blocks: 4 });
        // The cursor sits at 8: blocks 8, 9 free but only two; the run 0..4 is found by wrapping.
        assert_eq!(a.allocate(3), Some(Extent { block: 0, blocks: 3 }));
        assert!(!a.mark(Extent { block: 2, blocks: 2 }), "block 2 is used");
        assert!(!a.mark(Extent { block: 9, blocks: 2 }), "past the end");
        assert!(a.mark(Extent { block: 3, blocks: 1 }));
        assert_eq!(first.blocks, 8);
    }

    #[test]
    fn random_alloc_free_never_hands_out_a_used_block() {
        for seed in 0..50 {
            let mut rng = SplitMix64::new(seed);
            let mut a = Allocator::new(500);
            let mut owned = vec![false; 500];
            let mut live: Vec<Extent> = Vec::new();
            for _ in 0..2000 {
                if rng.chance(1, 2) && !live.is_empty() {
                    let e = live.swap_remove(rng.below(live.len() as u64) as usize);
                    a.free(e);
                    for b in e.block..e.block + u64::from(e.blocks) {
                        owned[b as usize] = false;
                    }
                } else if let Some(e) = a.allocate(1 + rng.below(20) as u32) {
                    for b in e.block..e.block + u64::from(e.blocks) {
                        assert!(!owned[b as usize], "seed {seed}: block {b} handed out twice");
                        owned[b as usize] = true;
                    }
                    live.push(e);
                }
                let used = owned.iter().filter(|&&o| o).count() as u64;
                assert_eq!(a.used_blocks(), used, "seed {seed}");
            }
        }
    }
}
